"""Figure helpers produce the expected panels (Agg backend, no display)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from deepblur import ProductConvolutionBasis  # noqa: E402
from deepblur.plotting import dirac_comb, plot_components, plot_operator  # noqa: E402


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
