"""Scale-out on dask and accelerate (issue 7): same results as in-process runs.

One ``LocalCluster`` of two worker *processes* serves the module, and each
test that kills a worker process (``os._exit``) gets a cluster of its own:
processes, not threads, because those tests kill one and because a process
is what a remote worker is (everything is pickled).
Helpers that run on workers are defined inside the tests: pytest imports
this file under a module name the workers cannot import, and a local
function is pickled by value (cloudpickle) rather than by reference.
"""

import os
import pickle
import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch
from _blind_setup import make_blind_data, tiny
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold

from deepblur import (
    ProductConvolutionBasis,
    ResNetBlurRegressor,
    TVDeblurrer,
)

GRID = {"basis__n_components": [2, 3], "deblurrer__lam": [20.0, 400.0]}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data():
    return make_blind_data()


@pytest.fixture(scope="module")
def local_search(data):
    """The grid search in this process (the reference)."""
    fields, blurry, clean = data
    return GridSearchCV(tiny(), GRID, cv=KFold(2)).fit(blurry, clean,
                                                       psf_fields=fields)


@pytest.fixture(scope="module")
def fitted(data):
    fields, blurry, clean = data
    return tiny(K=3).fit(blurry, clean, psf_fields=fields)


def _cluster_client():
    """A client of a new 2-process LocalCluster, one torch thread per worker."""
    distributed = pytest.importorskip("distributed")
    # dask's nanny already starts workers with OMP_NUM_THREADS=1; say it
    # explicitly (restarted workers get the same environment)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        # no dashboard, and the scheduler's HTTP server on a free port: two
        # clusters at once would otherwise both ask for 8787
        scheduler_kwargs={"dashboard_address": ":0"},
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    client = distributed.Client(cluster)
    client.run(torch.set_num_threads, 1)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def client():
    """The module's cluster; no test kills its workers."""
    yield from _cluster_client()


@pytest.fixture
def doomed_client():
    """A cluster of its own for a test that kills workers.

    The newest client is dask's default, so the test's work runs here. No
    test waits for a killed worker to come back: on a loaded CI machine a
    nanny once failed to bring one back within 60 s, and the next wait
    failed a test whose assertions had all passed.
    """
    yield from _cluster_client()


# ------------------------------------------------------------ optional deps
def test_imports_without_dask_and_accelerate():
    """``import deepblur`` never imports dask; deepblur.distributed imports
    without dask and accelerate and says what to install when needed."""
    code = """
import sys
import deepblur
assert "dask" not in sys.modules and "distributed" not in sys.modules
for name in ("dask", "dask.array", "distributed", "accelerate"):
    sys.modules[name] = None          # as if not installed
import numpy as np
import deepblur.distributed as d
for call in (lambda: d.deblur_images(np.zeros((1, 8, 8)), None),
             d.register_joblib_dask_backend):
    try:
        call()
    except ImportError as exc:
        assert "deepblur[distributed]" in str(exc), exc
    else:
        raise AssertionError("no ImportError")
try:
    d.AcceleratedResNetBlurRegressor().initialize()
except TypeError as exc:
    assert "accelerate.Accelerator" in str(exc), exc
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ------------------------------------------------------ distributed grid search
def test_workers_use_one_torch_thread(client):
    threads = client.run(torch.get_num_threads)
    assert len(threads) == 2
    assert set(threads.values()) == {1}


def test_grid_search_on_dask_equals_the_local_search(data, local_search, client):
    """GridSearchCV over K and lambda through joblib's dask backend."""
    fields, blurry, clean = data
    from distributed import get_task_stream

    search = GridSearchCV(tiny(), GRID, cv=KFold(2))
    with get_task_stream(client) as stream, joblib.parallel_backend("dask"):
        search.fit(blurry, clean, psf_fields=fields)
    # the 4 candidates x 2 folds ran as joblib batches on the workers
    batches = [t for t in stream.data if "_fit_and_score" in str(t["key"])]
    assert len(batches) >= 2
    assert {t["worker"] for t in batches} <= set(client.scheduler_info()["workers"])
    local = local_search.cv_results_
    for key in ("mean_test_score", "split0_test_score", "split1_test_score"):
        np.testing.assert_allclose(search.cv_results_[key], local[key],
                                   rtol=1e-6, atol=0)
    assert search.best_params_ == local_search.best_params_
    assert search.cv_results_["params"] == local["params"]
    # the refitted best model is the same network
    np.testing.assert_allclose(search.best_estimator_.estimate(blurry),
                               local_search.best_estimator_.estimate(blurry),
                               rtol=1e-6, atol=1e-7)


# ------------------------------------------------------- batch deblurring
def test_deblur_images_on_the_cluster_equals_transform_image_by_image(
        data, fitted, client):
    from distributed import get_task_stream

    from deepblur.distributed import deblur_images

    fields, blurry, clean = data
    deblurrer = fitted.deblurrer_          # blind: gamma from the regressor
    with get_task_stream(client) as stream:
        U = deblur_images(blurry, deblurrer)
    expected = np.stack([deblurrer.transform(blurry[i:i + 1])[0]
                         for i in range(len(blurry))])
    assert U.shape == blurry.shape and U.dtype == np.float32
    np.testing.assert_allclose(U, expected, rtol=0, atol=1e-6)
    # one task per image, run by the cluster's workers
    tasks = [t for t in stream.data if "deblur-images" in str(t["key"])]
    assert len(tasks) == len(blurry)
    assert {t["worker"] for t in tasks} <= set(client.scheduler_info()["workers"])
    # the images differ from each other: the test compares something
    assert not np.allclose(U[0], U[1])


class _Broken:
    """An estimator whose transform fails with an error that is not a
    ValueError (its type must reach the caller, naming the images)."""

    def transform(self, X):
        raise RuntimeError("broken transform")


def test_task_errors_keep_their_type_and_name_their_images(client):
    """A non-ValueError was chained to itself: dask.distributed followed the
    loop of causes forever (the call hung, the worker's memory grew), and
    the "processes" scheduler could not pickle it."""
    from deepblur.distributed import deblur_images

    images = np.ones((3, 8, 8))
    with pytest.raises(RuntimeError, match="broken transform") as info:
        deblur_images(images, _Broken(), scheduler="sync", images_per_task=2)
    assert info.value.__cause__ is not info.value
    assert getattr(info.value, "__notes__", []) in (
        ["(while deblurring images[0:2])"], ["(while deblurring images[2])"])
    lazy = deblur_images(images, _Broken(), compute=False)
    with pytest.raises(RuntimeError, match="broken transform"):
        client.compute(lazy).result(timeout=60)


def test_deblur_images_batches_and_lazy_results(data, fitted, client):
    import dask.array as da

    from deepblur.distributed import deblur_images

    fields, blurry, clean = data
    deblurrer = fitted.deblurrer_
    # a whole batch per task is the in-process batched transform
    np.testing.assert_allclose(deblur_images(blurry, deblurrer,
                                             images_per_task=len(blurry)),
                               deblurrer.transform(blurry), rtol=0, atol=1e-6)
    lazy = deblur_images(blurry, deblurrer, images_per_task=3, compute=False)
    assert isinstance(lazy, da.Array)
    assert lazy.chunks == ((3, 3, 2), (32,), (32,))
    expected = np.concatenate([deblurrer.transform(blurry[i:i + 3])
                               for i in range(0, 8, 3)])
    np.testing.assert_allclose(lazy.compute(), expected, rtol=0, atol=1e-6)
    # a dask array (e.g. read from zarr) in chunks of several images; a list
    stack = da.from_array(blurry, chunks=(5, 32, 32))
    by_image = deblur_images(blurry, deblurrer)
    np.testing.assert_allclose(deblur_images(stack, deblurrer), by_image,
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(deblur_images(list(blurry), deblurrer,
                                             scheduler="sync"),
                               by_image, rtol=0, atol=1e-6)


def test_deblur_images_non_blind_slices_gamma_per_task(data, fitted, client):
    from deepblur.distributed import deblur_images

    fields, blurry, clean = data
    tv = TVDeblurrer(fitted.basis_, lam=100.0, tol=1e-3, device="cpu").fit(blurry)
    gamma = fitted.estimate(blurry) * np.linspace(0.8, 1.2, len(blurry))[:, None]
    U = deblur_images(blurry, tv, gamma=gamma)
    for i in (0, 5):
        np.testing.assert_allclose(
            U[i], tv.transform(blurry[i:i + 1], gamma=gamma[i:i + 1])[0],
            rtol=0, atol=1e-6)
    one = deblur_images(blurry[:2], tv, gamma=gamma[3], dtype="float64")
    assert one.dtype == np.float64
    np.testing.assert_allclose(one[1], tv.transform(blurry[1:2], gamma=gamma[3])[0],
                               rtol=0, atol=1e-6)


def test_deblur_images_errors(data, fitted):
    pytest.importorskip("dask.array")
    from sklearn.exceptions import NotFittedError

    from deepblur.distributed import deblur_images

    fields, blurry, clean = data
    deblurrer = fitted.deblurrer_
    with pytest.raises(ValueError, match=r"shape \(n, H, W\)"):
        deblur_images(blurry[0], deblurrer)
    with pytest.raises(ValueError, match="one shape"):
        deblur_images([blurry[0], blurry[1, :16]], deblurrer)
    with pytest.raises(ValueError, match="gamma must have shape"):
        deblur_images(blurry, deblurrer, gamma=np.ones((3, 3)))
    with pytest.raises(ValueError, match="images_per_task"):
        deblur_images(blurry, deblurrer, images_per_task=0)
    with pytest.raises(TypeError, match="transform"):
        deblur_images(blurry, object())
    with pytest.raises(NotFittedError):
        deblur_images(blurry, TVDeblurrer(fitted.basis_))
    # the estimator's own errors surface from the task, naming its images
    with pytest.raises(ValueError, match=r"images\[0:2\]: .*image_shape"):
        deblur_images(np.zeros((2, 16, 16)), deblurrer, scheduler="sync",
                      images_per_task=2)
    # every error of a task names its images, a transform of the wrong shape too
    class Squeezes:         # drops the batch axis of images[2:4]
        def transform(self, X):
            return X[0] if X[0, 0, 0] > 1 else X

    with pytest.raises(ValueError, match=r"^images\[2:4\]: estimator.transform "
                                         r"must return images of the input's"):
        deblur_images(np.concatenate([np.ones((2, 8, 8)), np.full((2, 8, 8), 2.0)]),
                      Squeezes(), images_per_task=2, scheduler="sync")
    # NaN refused before any task runs (it failed in its task, after others
    # had been deblurred and were then dropped)
    bad = blurry.copy()
    bad[5, 3, 3] = bad[7, 0, 0] = np.nan
    calls = []

    class Counting:
        def transform(self, X):
            calls.append(len(X))
            return deblurrer.transform(X)

    with pytest.raises(ValueError,
                       match=r"^images\[5\] \(and 1 more\): images must contain"):
        deblur_images(bad, Counting(), scheduler="sync")
    # so is a NaN gamma (it failed in the task of its image, and the others'
    # results were dropped)
    class CountingGamma:        # takes gamma, as a non-blind deblurrer does
        def transform(self, X, gamma=None):
            calls.append(len(X))
            if not np.isfinite(gamma).all():
                raise ValueError("gamma must be finite")
            return X

    gamma = np.ones((len(blurry), 3))
    gamma[6, 1] = np.inf
    with pytest.raises(ValueError, match=r"^gamma\[6\] \(for images\[6\]\) must "
                                         "contain only finite values"):
        deblur_images(blurry, CountingGamma(), gamma=gamma, scheduler="sync")
    with pytest.raises(ValueError, match=r"^gamma must contain only finite"):
        deblur_images(blurry, CountingGamma(), gamma=gamma[6], scheduler="sync")
    assert calls == []


def test_deblur_images_returns_floats_not_wrapped_integers():
    """dtype='uint16' wrapped the ringing below 0 around to 65535 (and
    uint8 counts modulo 256) without a word; integer dtypes are refused,
    and a float16 that overflows fails naming its images."""
    pytest.importorskip("dask.array")
    from deepblur.distributed import deblur_images

    class Ringing:          # a deblurred image rings below 0
        def transform(self, X):
            return X - 1.0

    X = np.full((2, 8, 8), 1000.0)
    X[:, 2:4, 2:4] = 0.0
    U = deblur_images(X, Ringing(), scheduler="sync")
    assert U.dtype == np.float32 and U.min() == -1.0
    for dtype in ("uint16", np.uint8, "int32", "complex64", "no such type"):
        with pytest.raises(ValueError, match="dtype must be a floating dtype"):
            deblur_images(X, Ringing(), dtype=dtype, scheduler="sync")
    X[1] *= 100.0
    with pytest.raises(ValueError, match=r"^images\[1\]: the deblurred images "
                                         r"exceed the range of dtype float16"):
        deblur_images(X, Ringing(), dtype="float16", scheduler="sync")


def test_deblur_large_images_equals_deblur_large(fitted, client):
    from deepblur.distributed import deblur_large_images
    from deepblur.tiling import deblur_large

    rng = np.random.default_rng(1)
    images = [rng.random((40, 48)) + 0.5, rng.random((48, 36)) + 0.5]
    model = (fitted.basis_, fitted.regressor_)
    kwargs = dict(lam=100.0, max_iter=15, tol=0, unit_gain=False)
    out = deblur_large_images(images, model, **kwargs)
    assert [u.shape for u in out] == [(40, 48), (48, 36)]
    for image, u in zip(images, out, strict=True):
        np.testing.assert_allclose(
            u, deblur_large(image, model, progress=False, **kwargs).restored,
            rtol=0, atol=1e-6)
    lazy = deblur_large_images(np.stack([images[0]] * 2), model, compute=False,
                               **kwargs)
    assert len(lazy) == 2
    with pytest.raises(ValueError, match=r"images\[1\]: image must be 2-D"):
        deblur_large_images([images[0], np.zeros(5)], model)
    # what fails without the model fails before any task runs (a task's
    # error would drop the images already done), naming the image
    import deepblur.distributed as distributed

    ran = []
    real = distributed._deblur_large_one
    try:
        distributed._deblur_large_one = lambda *a: ran.append(a) or real(*a)
        nan = images[1].copy()
        nan[3, 3] = np.nan
        for bad, match in ((nan, r"images\[1\]: image must contain only finite"),
                           (np.ones((20, 60)), r"images\[1\]: .*smaller"),
                           (images[1] - 5, r"images\[1\]: .*mean intensity")):
            with pytest.raises(ValueError, match=match):
                deblur_large_images([images[0], bad], model, scheduler="sync",
                                    **kwargs)
        # the tiles' scaling and the solve's blocks, which failed in the
        # tasks and dropped the images already deblurred
        for extra, match in (
                (dict(image_mean=None, target_mean=1.0),
                 r"images\[1\]: image must have a positive mean intensity for "
                 r"its tiles.*target_mean=None"),
                (dict(max_pixels=100), r"images\[0\]: max_pixels=100 is too"),
                (dict(boundary="reflect"), r"images\[0\]: boundary must be"),
                (dict(margin=1), r"images\[0\]: margin must be an int"),
                (dict(lam=-1.0), r"images\[0\]: lam must be positive"),
                (dict(regularization="L1"), r"images\[0\]: regularization must"),
                (dict(dtype="float16"), r"images\[0\]: dtype must be"),
                (dict(inner_iter=0), r"images\[0\]: inner_iter must be a "
                                     r"positive int"),
                (dict(tol=-1.0), r"images\[0\]: tol must be a non-negative")):
            with pytest.raises(ValueError, match=match):
                deblur_large_images([images[0], images[1] - 5], model,
                                    scheduler="sync", **dict(kwargs, **extra))
        # a keyword deblur_large does not take (a TypeError from every task,
        # with a note naming an image it was not about)
        with pytest.raises(TypeError, match=r"keyword argument\(s\) \['max_iters'\]"
                                            r" that deblur_large does not take"):
            deblur_large_images([images[0]], model, max_iters=3, scheduler="sync")
        with pytest.raises(TypeError, match="'image'"):
            deblur_large_images([images[0]], model, image=images[0])
        with pytest.raises(ValueError, match=r"^target_mean must be a float"):
            deblur_large_images([images[0]], model, target_mean="mean")
        with pytest.raises(ValueError, match=r"^target_mean must be positive"):
            deblur_large_images([images[0]], model, target_mean=-1.0)
        # the model's and image_mean's errors are about no image
        with pytest.raises(ValueError, match=r"^basis must be a fitted"):
            deblur_large_images([images[0]], (ProductConvolutionBasis(3),
                                              fitted.regressor_), **kwargs)
        with pytest.raises(ValueError, match=r"^image_mean must be a positive"):
            deblur_large_images([images[0]], model, image_mean=-1.0)
        assert ran == []
    finally:
        distributed._deblur_large_one = real


# -------------------------------------------------------------- accelerate
@pytest.fixture(scope="module")
def accelerator():
    accelerate = pytest.importorskip("accelerate")
    return accelerate.Accelerator(cpu=True)


@pytest.fixture(scope="module")
def training(fitted):
    from deepblur.datasets.simulate import BlurDataset, make_blurred_images

    rng = np.random.default_rng(0)
    images = rng.random((12, 32, 32)) + 0.1
    X, y = make_blurred_images(images, fitted.basis_, fitted.sampler_, 24,
                               random_state=0)
    dataset = BlurDataset(images, fitted.basis_, fitted.sampler_, batch_size=8,
                          n_batches=3, random_state=0)
    return X, y, dataset


def _nets(accelerator, basis, **kwargs):
    from deepblur.distributed import AcceleratedResNetBlurRegressor

    kw = dict(dict(basis=basis, module__width=4, max_epochs=2, batch_size=8,
                   verbose=0), **kwargs)
    return (AcceleratedResNetBlurRegressor(accelerator=accelerator, **kw),
            ResNetBlurRegressor(device="cpu", **kw))


def test_accelerated_regressor_trains_like_the_plain_one(fitted, training,
                                                         accelerator, capsys):
    X, y, dataset = training
    for data in ((X, y), (dataset, None)):
        accel, plain = _nets(accelerator, fitted.basis_)
        torch.manual_seed(0)
        accel.fit(*data)
        torch.manual_seed(0)
        plain.fit(*data)
        # single process: the same batches, the same steps, the same network
        for key in ("train_loss", "valid_loss"):
            np.testing.assert_allclose(accel.history[:, key], plain.history[:, key],
                                       rtol=1e-6)
        np.testing.assert_allclose(accel.predict(X), plain.predict(X), rtol=1e-5,
                                   atol=1e-6)
    # two epochs of a BlurDataset are different samples (no replay)
    assert accel.history[0, "train_loss"] != accel.history[1, "train_loss"]
    assert capsys.readouterr().out == ""         # verbose=0 is honoured
    # predict is the unwrapped module applied by hand
    assert type(accel.module_).__name__ == "ResNet"
    with torch.no_grad():
        by_hand = accel.module_(torch.as_tensor(X[:, None], dtype=torch.float32))
    np.testing.assert_allclose(accel.predict(X), by_hand.numpy(), rtol=1e-5,
                               atol=1e-6)
    assert accel.predict(X).shape == (len(X), fitted.basis_.kernels_.shape[0])


def test_accelerated_regressor_round_trips_and_clones(fitted, training,
                                                      accelerator, tmp_path):
    from deepblur.distributed import AcceleratedResNetBlurRegressor

    X, y, dataset = training
    net, _ = _nets(accelerator, fitted.basis_, max_epochs=1)
    net.fit(X, y)
    again = pickle.loads(pickle.dumps(net))
    np.testing.assert_array_equal(again.predict(X), net.predict(X))
    assert again.device is None                  # the accelerator still places
    again.partial_fit(X, y)                      # and trains further
    assert len(again.history) == 2
    joblib.dump(net, tmp_path / "net.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "net.joblib").predict(X),
                                  net.predict(X))
    copy = clone(net)
    assert copy.accelerator is accelerator       # shared, not deep-copied
    assert copy.basis is fitted.basis_
    assert not hasattr(copy, "module_")
    assert copy.get_params()["module__width"] == 4
    torch.manual_seed(0)
    assert copy.fit(X, y).predict(X).shape == (len(X), 3)
    # it works inside the end-to-end estimator (cloned by BlindDeblurrer)
    inner = clone(tiny().set_params(regressor=copy)).regressor
    assert isinstance(inner, AcceleratedResNetBlurRegressor)
    assert inner.accelerator is accelerator
    # the fitted sampler is shared too (a deep copy was unfitted: fit then
    # failed with support_tolerance or project)
    checked = net.set_params(sampler=fitted.sampler_, support_tolerance=0.5)
    copy = clone(checked)
    assert copy.sampler is fitted.sampler_
    assert copy.fit(X, y).predict(X).shape == (len(X), 3)
    assert not [k for k in copy.get_params() if k.startswith("sampler__")]


def test_unpickling_an_accelerated_regressor_leaves_other_threads_filters(
        fitted, accelerator, monkeypatch):
    """Unpickling silenced skorch's warning about device=None with
    warnings.catch_warnings, whose filters are the process's: a filter that
    another thread set while a net was being unpickled (dask's threads, a
    threaded search) was undone when it was done. Here the unpickling is
    held inside skorch's part while this thread sets a filter."""
    import threading
    import warnings

    net, _ = _nets(accelerator, fitted.basis_)
    data = pickle.dumps(net.initialize())
    inside, resume, loaded = threading.Event(), threading.Event(), []
    setstate = ResNetBlurRegressor.__setstate__

    def paused(self, state):
        inside.set()
        resume.wait(10)
        return setstate(self, state)

    monkeypatch.setattr(ResNetBlurRegressor, "__setstate__", paused)
    thread = threading.Thread(target=lambda: loaded.append(pickle.loads(data)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thread.start()
        try:
            assert inside.wait(10)
            warnings.filterwarnings("error", "another thread's filter")
            filters = list(warnings.filters)
        finally:
            resume.set()
            thread.join()
        assert warnings.filters == filters
    assert caught == []                 # skorch's warning is not issued
    assert loaded[0].device is None
    for name, value in net.module_.state_dict().items():
        torch.testing.assert_close(loaded[0].module_.state_dict()[name], value)


def test_accelerated_regressor_errors(fitted, training, accelerator):
    from deepblur.distributed import AcceleratedResNetBlurRegressor

    X, y, dataset = training
    with pytest.raises(TypeError, match="accelerator must be an "
                                        "accelerate.Accelerator"):
        AcceleratedResNetBlurRegressor(basis=fitted.basis_).fit(X, y)
    with pytest.raises(ValueError, match="device=None"):
        AcceleratedResNetBlurRegressor(accelerator=accelerator, basis=fitted.basis_,
                                       device="cpu", max_epochs=1,
                                       verbose=0).fit(X, y)
    with pytest.raises(ValueError, match=r"use Accelerator\(mixed_precision='bf16'\)"):
        AcceleratedResNetBlurRegressor(accelerator=accelerator, basis=fitted.basis_,
                                       mixed_precision="bf16", max_epochs=1,
                                       verbose=0).fit(X, y)
    net = AcceleratedResNetBlurRegressor(accelerator=accelerator,
                                         basis=fitted.basis_, max_epochs=1,
                                         verbose=0).fit(X, y)
    net.set_params(mixed_precision="bf16")       # after initialisation too
    with pytest.raises(ValueError, match="mixed_precision is the accelerator's"):
        net.partial_fit(X, y)
    # a device set after initialisation was taken without a word (skorch
    # checks it at initialisation): the trained network would leave the
    # accelerator's device
    for regressor in (net, clone(net)):
        with pytest.raises(ValueError, match="leave device=None"):
            regressor.set_params(device="cpu")
        assert regressor.device is None
    assert net.set_params(device=None, mixed_precision=None).device is None


@pytest.mark.cuda
def test_accelerated_regressor_on_cuda(fitted, training, monkeypatch):
    accelerate = pytest.importorskip("accelerate")
    # TF32 convolutions (cuDNN's default) round to 1e-3, differently for
    # predict's batches and the whole batch below: compare in full float32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    from accelerate.state import AcceleratorState

    from deepblur.distributed import AcceleratedResNetBlurRegressor

    X, y, dataset = training
    AcceleratorState._reset_state(True)     # the module's CPU accelerator
    try:
        acc = accelerate.Accelerator()
        assert acc.device.type == "cuda"
        net = AcceleratedResNetBlurRegressor(
            accelerator=acc, basis=fitted.basis_, module__width=4, max_epochs=2,
            batch_size=8, verbose=0)
        net.fit(dataset, None)
        assert next(net.module_.parameters()).device.type == "cuda"
        with torch.no_grad():
            by_hand = net.module_(torch.as_tensor(X[:, None], dtype=torch.float32,
                                                  device="cuda")).cpu().numpy()
        np.testing.assert_allclose(net.predict(X), by_hand, rtol=1e-4, atol=1e-5)
    finally:
        AcceleratorState._reset_state(True)


# ------------------------------------------------------------------- faults
def _killing_scorer(marker, always=False):
    """A scorer that kills its worker process (the first call only, unless
    ``always``): the file ``marker`` is created atomically by the call that
    exits, so that one worker dies even when both score at once."""

    def scorer(estimator, X, y):
        if always:
            os._exit(1)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return estimator.score(X, y)
        os.close(fd)
        os._exit(1)  # a dead worker: no exception, no result, no goodbye

    return scorer


def _scheduler_allowed_failures(client, value=None):
    def access(dask_scheduler, value=value):
        old = dask_scheduler.allowed_failures
        if value is not None:
            dask_scheduler.allowed_failures = value
        return old

    return client.run_on_scheduler(access)


def test_a_worker_dying_mid_search_gives_the_same_results(data, local_search,
                                                          doomed_client,
                                                          tmp_path):
    """dask reschedules the tasks of the lost worker (allowed_failures=3)."""
    fields, blurry, clean = data
    marker = tmp_path / "killed-once"
    search = GridSearchCV(tiny(), GRID, cv=KFold(2),
                          scoring=_killing_scorer(str(marker)))
    with joblib.parallel_backend("dask"):
        search.fit(blurry, clean, psf_fields=fields)
    assert marker.exists()                      # a worker did die
    assert _scheduler_allowed_failures(doomed_client) >= 1
    np.testing.assert_allclose(search.cv_results_["mean_test_score"],
                               local_search.cv_results_["mean_test_score"],
                               rtol=1e-6, atol=0)
    assert search.best_params_ == local_search.best_params_


def test_a_search_that_keeps_killing_workers_fails_clearly(data, doomed_client,
                                                           tmp_path):
    """No partial result: the search raises KilledWorker.

    With joblib's own "dask" backend (joblib 1.6.0) the same search never
    returns (see register_joblib_dask_backend); the registered backend raises.
    """
    from distributed import KilledWorker

    from deepblur.distributed import register_joblib_dask_backend

    backend = register_joblib_dask_backend()
    fields, blurry, clean = data
    _scheduler_allowed_failures(doomed_client, 0)   # give up at the first death
    search = GridSearchCV(tiny(), {"deblurrer__lam": [20.0]}, cv=KFold(2),
                          scoring=_killing_scorer(str(tmp_path / "m"),
                                                  always=True))
    with pytest.raises(KilledWorker, match="workers died"), \
            joblib.parallel_backend(backend):
        search.fit(blurry, clean, psf_fields=fields)
    assert not hasattr(search, "cv_results_")
    assert not hasattr(search, "best_params_")


def test_deblur_images_that_keep_killing_workers_fail_clearly(data,
                                                              doomed_client):
    from distributed import KilledWorker

    from deepblur.distributed import deblur_images

    class KillsItsWorker:        # any object with transform will do
        def transform(self, X):
            os._exit(1)

    _scheduler_allowed_failures(doomed_client, 0)
    with pytest.raises(KilledWorker, match="workers died"):
        deblur_images(data[1][:2], KillsItsWorker(), images_per_task=2)
