"""Figure helpers produce the expected panels (Agg backend, no display)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from deepblur import ProductConvolutionBasis  # noqa: E402
from deepblur.plotting import (  # noqa: E402
    dirac_comb,
    plot_blind_deblurring,
    plot_components,
    plot_operator,
)


@pytest.fixture
def basis():
    r = np.random.default_rng(0)
    return ProductConvolutionBasis.from_components(r.random((3, 5, 5)),
                                                   r.random((3, 32, 32)))


def test_dirac_comb():
    comb = dirac_comb((32, 32), spacing=8)
    assert comb.sum() == 16 and comb[4, 4] == 1 and comb[0, 0] == 0
    with pytest.raises(ValueError, match="spacing"):
        dirac_comb((8, 8), spacing=0)


def test_plot_operator_one_panel_per_gamma(basis, tmp_path):
    fig = plot_operator(basis, np.ones((2, 3)), titles=["true", "estimated"])
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(images) == 2
    # the panels show H[gamma] applied to the comb
    comb = dirac_comb((32, 32), max(4, int(1.5 * 5)))
    expected = np.clip(basis.apply(comb, np.ones(3)), 0, None) ** 0.5
    np.testing.assert_allclose(images[0], expected, atol=1e-6)
    assert fig.axes[1].get_title() == "estimated"
    fig.savefig(tmp_path / "op.png")
    assert (tmp_path / "op.png").stat().st_size > 0


def test_plot_components(basis):
    fig = plot_components(basis, n_max=2)
    assert len([ax for ax in fig.axes if ax.images]) == 4


def test_plot_blind_deblurring_panels_and_titles(basis):
    from deepblur.metrics import snr
    from deepblur.plotting import plot_blind_deblurring

    r = np.random.default_rng(1)
    original = r.random((32, 32)) + 0.5
    blurry = basis.apply(original, np.ones(3))
    deblurred = original + 0.1 * r.standard_normal((32, 32))
    gamma_hat = np.array([1.0, 1.0, 0.5])
    fig = plot_blind_deblurring(basis, np.ones(3), gamma_hat, blurry, original,
                                deblurred, deblurred_true=original + 0.01)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 6
    titles = [ax.get_title() for ax in panels]
    error = basis.operator_distance(np.ones(3), gamma_hat)
    assert f"relative error {100 * error:.1f} %" in titles[1]
    # the blurry image's SNR at the original's brightness (the operator's
    # gain on a flat image divided out), as the demo prints it
    gain = basis.apply(np.ones((32, 32)), np.ones(3)).mean()
    assert f"(gain {gain:.2f})" in titles[2]
    assert f"SNR {snr(original, blurry / gain):.2f} dB" in titles[2]
    assert titles[3] == "original"
    assert f"SNR {snr(original, deblurred):.2f} dB" in titles[4]
    assert "true operator" in titles[5]
    # the operator panels show H[gamma] on a Dirac comb
    comb = dirac_comb((32, 32), max(4, int(1.5 * 5)))
    np.testing.assert_allclose(panels[1].images[0].get_array(),
                               np.clip(basis.apply(comb, gamma_hat), 0, None) ** 0.5,
                               atol=1e-6)
    fig = plot_blind_deblurring(basis, np.ones(3), gamma_hat, blurry, original,
                                deblurred)
    assert len([ax for ax in fig.axes if ax.images]) == 5


def test_demo_figure_and_text_give_the_same_blurry_snr():
    """The figure said -9.46 dB where the demo printed 12.68 dB for the same
    blurry image (the raw image, brighter by the operator's gain)."""
    from deepblur.plotting import plot_blind_deblurring
    from deepblur.pretrained import (
        bundled_image,
        load_default,
        simulate_blind_deblurring,
    )

    model = load_default()
    res = simulate_blind_deblurring(model, bundled_image("camera"), max_iter=5)
    fig = plot_blind_deblurring(model.basis, res["gamma"], res["gamma_hat"],
                                res["blurry"], res["original"], res["deblurred"])
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert f"SNR {res['snr_blurry']:.2f} dB" in titles[2]


def test_blurry_snr_of_an_operator_without_gain(basis):
    """A gain of 0 has no brightness to divide out: the raw SNR, said so
    (it stopped the figure with a division by zero)."""
    from deepblur.metrics import snr
    from deepblur.plotting import plot_blind_deblurring

    original = np.random.default_rng(2).random((32, 32)) + 0.5
    blurry = original + 0.1
    fig = plot_blind_deblurring(basis, np.zeros(3), np.ones(3), blurry, original,
                                original)
    title = [ax.get_title() for ax in fig.axes if ax.images][2]
    assert title.endswith(f"SNR {snr(original, blurry):.2f} dB, raw")
    assert "(gain 0.00)" in title


def test_bad_input_is_refused_without_leaving_a_figure_open(basis):
    """A caller that catches the error is not left with an open figure."""
    import matplotlib.pyplot as plt

    from deepblur.plotting import plot_blind_deblurring

    plt.close("all")
    r = np.random.default_rng(2)
    original = r.random((32, 32)) + 0.5
    blurry = basis.apply(original, np.ones(3))
    calls = [
        (lambda: plot_operator(basis, np.ones((3, 3)), titles=["a"]), "titles"),
        (lambda: plot_components(basis, n_max=0), "n_max"),
        (lambda: plot_blind_deblurring(basis, np.ones(3), np.ones(3), blurry,
                                       original, np.full_like(original, np.nan)),
         "finite|NaN"),
        (lambda: plot_blind_deblurring(basis, np.ones(3), np.ones(3), blurry[:16],
                                       original, original), "shape"),
        (lambda: plot_blind_deblurring(basis, np.ones(3), np.ones(3), blurry,
                                       original, original, blurry_gain=np.nan),
         "blurry_gain must be finite"),
    ]
    for call, match in calls:
        with pytest.raises(ValueError, match=match):
            call()
        assert plt.get_fignums() == []
    # an error while drawing closes the figure too
    with pytest.raises(ValueError):
        plot_operator(basis, np.ones((1, 3)), cmap="no-such-colour-map")
    assert plt.get_fignums() == []


def test_dirac_comb_offsets_start_at_zero():
    comb = dirac_comb((8, 8), 4, offset=0)
    assert comb[0, 0] == 1 and comb.sum() == 4
    comb = dirac_comb((8, 8), 4, offset=(0, 1))
    assert comb[0, 1] == 1 and comb[4, 5] == 1 and comb.sum() == 4
    for bad in (-1, (0, -2), (1, 2, 3), 1.5, "a"):
        with pytest.raises(ValueError, match="offset must be a non-negative"):
            dirac_comb((8, 8), 4, offset=bad)


def test_comb_offset_and_gamma_shapes_are_checked(basis):
    with pytest.raises(ValueError, match="offset .* must lie inside"):
        dirac_comb((8, 8), spacing=4, offset=20)
    K = basis.gram_.shape[0]
    g = np.ones(K)
    y = np.zeros(basis.image_shape_)
    for bad in (np.ones((2, K)), np.ones(K + 1)):
        with pytest.raises(ValueError, match=r"gamma must have shape \(K,\)"):
            plot_blind_deblurring(basis, bad, g, y, y, y)


def test_unfitted_basis_empty_gamma_and_stacks_of_images_are_refused(basis):
    """An unfitted basis failed with an AttributeError on image_shape_,
    kernels_ or gram_; gamma of shape (0, K) with a ZeroDivisionError in
    matplotlib; images given as (1, H, W) stacks with numpy's 'unsupported
    format string passed to numpy.ndarray.__format__' (their SNR was an
    array)."""
    import matplotlib.pyplot as plt
    from sklearn.exceptions import NotFittedError

    plt.close("all")
    unfitted = ProductConvolutionBasis()
    g = np.ones(3)
    y = np.random.default_rng(3).random((32, 32)) + 0.5
    for call in (lambda: plot_operator(unfitted, g),
                 lambda: plot_components(unfitted),
                 lambda: plot_blind_deblurring(unfitted, g, g, y, y, y)):
        with pytest.raises(NotFittedError, match="basis must be a fitted"):
            call()
    with pytest.raises(ValueError, match="at least one operator"):
        plot_operator(basis, np.ones((0, 3)))
    stack = y[None]
    cases = [((stack, y, y), r"blurry must be one image .* \(1, 32, 32\)"),
             ((y, stack, stack), r"original must be one image of \(H, W\)"),
             ((y, y, stack), r"deblurred must be one image .* \(1, 32, 32\)")]
    for images, match in cases:
        with pytest.raises(ValueError, match=match):
            plot_blind_deblurring(basis, g, g, *images)
    with pytest.raises(ValueError, match="deblurred_true must be one image"):
        plot_blind_deblurring(basis, g, g, y, y, y, deblurred_true=y[:16])
    assert plt.get_fignums() == []


def test_tensors_are_taken_as_arrays(basis):
    """Tensors recording a graph or in bfloat16 (and, on an accelerator, any
    tensor there) failed in numpy's conversion ("Can't call numpy() on
    Tensor that requires grad", "Got unsupported ScalarType BFloat16"),
    though deepblur.metrics.snr, which titles the panels, takes them."""
    import matplotlib.pyplot as plt
    import torch

    plt.close("all")
    g = np.ones(3)
    y = np.random.default_rng(3).random((32, 32)) + 0.5
    expected = [ax.get_title() for ax in
                plot_blind_deblurring(basis, g, 0.9 * g, y, y, 0.8 * y).axes]
    for convert in (lambda a: torch.tensor(a, requires_grad=True),
                    lambda a: torch.tensor(a).bfloat16()):
        fig = plot_blind_deblurring(basis, convert(g), convert(0.9 * g),
                                    convert(y), y, convert(0.8 * y))
        assert len(fig.axes) == len(expected)
        assert fig.axes[-1].get_title().startswith("deblurred (estimate)\nSNR")
        assert len(plot_operator(basis, convert(np.stack([g, 0.9 * g]))).axes) == 2
    plt.close("all")
