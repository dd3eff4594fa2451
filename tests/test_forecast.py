"""Fisher forecasts: the Gaussian data model's Fisher, the Forecast algebra, ellipses and triangle plots.

Oracles: the linear-model Fisher XᵀC⁻¹X and the trace term written out; torch's MultivariateNormal
KL differentiated twice (another route); numpy inverses for marginalising and fixing; Coe (2009)'s
ellipse formulas; getdist's contours on the same Fisher matrix.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

import fisherkl as fk
from fisherkl.forecast import Forecast, delta_chi2, triangle

F64 = torch.float64
X = torch.linspace(0, 1, 40, dtype=F64)


def line_model(sigma: float = 0.1):
    return fk.gaussian_model(
        lambda t: t[..., :1] + t[..., 1:2] * X, sigma**2 * torch.eye(40, dtype=F64), 2, names=["a", "b"]
    )


def test_gaussian_model_fisher_is_xtcx():
    m = line_model()
    theta = torch.tensor([1.0, 2.0], dtype=F64)
    design = torch.stack([torch.ones(40, dtype=F64), X], 1)
    torch.testing.assert_close(fk.fisher(m, theta), design.T @ design / 0.01, rtol=1e-13, atol=1e-10)
    torch.testing.assert_close(fk.fisher(m, theta, "kl_hessian"), design.T @ design / 0.01, rtol=1e-12, atol=1e-8)
    batch = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]], dtype=F64)
    assert fk.fisher(m, batch).shape == (3, 2, 2)


def test_parameter_dependent_covariance_against_torch_mvn_kl():
    """C(θ) = s² (I + ρ K) with θ = (a, log s, ρ): the trace term ½tr(C⁻¹∂C C⁻¹∂C) is checked by the
    Hessian of torch's own MultivariateNormal KL (a different formula and code path)."""
    k = torch.exp(-((X[:, None] - X[None, :]) ** 2) / 0.1)
    eye = torch.eye(40, dtype=F64)

    def mean(t):
        return t[..., :1] * torch.sin(3 * X)

    def cov(t):
        s2 = torch.exp(2 * t[..., 1])[..., None, None]
        return s2 * (eye + t[..., 2][..., None, None] * k)

    m = fk.gaussian_model(mean, cov, 3, names=["a", "log_s", "rho"])
    theta = torch.tensor([0.7, -0.3, 0.4], dtype=F64)
    ours = fk.fisher(m, theta)
    user = fk.Model(lambda t: MultivariateNormal(mean(t), covariance_matrix=cov(t)), 3)
    other = fk.fisher(user, theta, "kl_hessian")
    torch.testing.assert_close(ours, other, rtol=1e-9, atol=1e-9)
    # the KL itself against torch's
    q = theta + torch.tensor([0.05, 0.02, -0.03], dtype=F64)
    want = torch.distributions.kl_divergence(
        MultivariateNormal(mean(theta), cov(theta)), MultivariateNormal(mean(q), cov(q))
    )
    torch.testing.assert_close(fk.kl(m, theta, q), want, rtol=1e-10, atol=1e-12)


def fisher_3() -> np.ndarray:
    a = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, -0.7], [0.5, -0.7, 2.0]])
    scale = np.diag([1.0, 1e3, 1e-2])  # parameters of very different sizes
    return scale @ a @ scale


def test_forecast_errors_fixing_marginalising_priors():
    f = fisher_3()
    fc = Forecast(torch.tensor(f), ["a", "b", "c"], [1.0, 0.002, 30.0])
    cov = np.linalg.inv(f)
    np.testing.assert_allclose(fc.marginal_errors().numpy(), np.sqrt(np.diag(cov)), rtol=1e-12)
    np.testing.assert_allclose(fc.conditional_errors().numpy(), 1 / np.sqrt(np.diag(f)), rtol=1e-12)
    np.testing.assert_allclose(fc.correlation().numpy(), cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov))))
    fixed = fc.fix("b")
    assert fixed.names == ("a", "c")
    np.testing.assert_allclose(fixed.fisher.numpy(), f[np.ix_([0, 2], [0, 2])])
    marg = fc.marginalise("b")
    np.testing.assert_allclose(np.linalg.inv(marg.fisher.numpy()), cov[np.ix_([0, 2], [0, 2])], rtol=1e-10)
    sel = fc.select("c", "a")
    assert sel.names == ("c", "a")
    np.testing.assert_allclose(sel.covariance().numpy(), cov[np.ix_([2, 0], [2, 0])], rtol=1e-10)
    prior = fc.with_prior(b=1e-4, a=0.5)
    np.testing.assert_allclose(prior.fisher.numpy(), f + np.diag([4.0, 1e8, 0.0]), rtol=1e-14)
    assert fc.errors()["a"] == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-12)
    assert "σ marginal" in str(fc) and "b" in fc.table()


def test_combining_experiments():
    f = fisher_3()
    one = Forecast(torch.tensor(f), ["a", "b", "c"], [1.0, 0.002, 30.0])
    two = Forecast(torch.tensor([[2.0, 0.3], [0.3, 5.0]]), ["c", "d"], [30.0, -1.0])
    both = one + two
    assert both.names == ("a", "b", "c", "d")
    want = np.zeros((4, 4))
    want[:3, :3] += f
    want[2:, 2:] += [[2.0, 0.3], [0.3, 5.0]]
    np.testing.assert_allclose(both.fisher.numpy(), want)
    np.testing.assert_allclose(both.fiducial.numpy(), [1.0, 0.002, 30.0, -1.0])
    assert sum([one, one]).fisher.numpy() == pytest.approx(2 * f)
    with pytest.raises(fk.ParameterError, match="fiducial"):
        one + Forecast(torch.eye(1, dtype=F64), ["c"], [31.0])


def test_singular_and_invalid_forecasts_are_refused_by_name():
    f = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=F64)
    fc = Forecast(f, ["x", "y"])
    with pytest.raises(fk.FisherKLError, match=r"singular.*x.*y.*with_prior"):
        fc.marginal_errors()
    fc.with_prior(x=1.0).marginal_errors()
    with pytest.raises(fk.ParameterError, match="symmetric"):
        Forecast(torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64))
    with pytest.raises(fk.ParameterError, match="semi-definite"):
        Forecast(torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=F64))
    with pytest.raises(fk.ParameterError, match="NaN"):
        Forecast(torch.tensor([[math.nan]], dtype=F64))
    with pytest.raises(fk.ParameterError, match="unknown parameter 'z'"):
        fc.fix("z")
    with pytest.raises(fk.ParameterError, match="width"):
        fc.with_prior(x=0.0)
    with pytest.raises(fk.ParameterError, match="probability"):
        delta_chi2(1.0)


def test_ellipse_axes_match_coe_2009():
    """a² = Δχ²[(σx² + σy²)/2 + √((σx² − σy²)²/4 + σxy²)], b² likewise with −, tan 2θ = 2σxy/(σx² − σy²)."""
    f = fisher_3()
    fc = Forecast(torch.tensor(f), ["a", "b", "c"])
    cov = np.linalg.inv(f)
    for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
        i, j = "abc".index(x), "abc".index(y)
        sx2, sy2, sxy = cov[i, i], cov[j, j], cov[i, j]
        root = math.sqrt((sx2 - sy2) ** 2 / 4 + sxy**2)
        for level, k in ((0.6827, 2.30), (0.9545, 6.18)):
            a, b, angle = fc.ellipse_axes(x, y, level)
            assert a == pytest.approx(math.sqrt(delta_chi2(level) * ((sx2 + sy2) / 2 + root)), rel=1e-9)
            assert b == pytest.approx(math.sqrt(delta_chi2(level) * ((sx2 + sy2) / 2 - root)), rel=1e-6)
            assert delta_chi2(level) == pytest.approx(k, abs=0.01)
            assert math.tan(2 * angle) == pytest.approx(2 * sxy / (sx2 - sy2), rel=1e-6)
        pts = fc.ellipse(x, y, 0.6827).numpy()
        d = pts - fc.fiducial.numpy()[[i, j]]
        maha = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov[np.ix_([i, j], [i, j])]), d)
        np.testing.assert_allclose(maha, delta_chi2(0.6827), rtol=1e-9)


def test_ellipses_agree_with_getdist():
    """getdist's triangle plot of the same Fisher (GaussianND, is_inv_cov=True) draws its 68% and 95%
    contours from a gridded density; their Mahalanobis radius matches our ellipses' Δχ² to 1.5%."""
    pytest.importorskip("getdist", reason="getdist is a test extra installed by `make install`")
    from getdist import gaussian_mixtures, plots

    f = fisher_3()
    names = ["a", "b", "c"]
    fiducial = [1.0, 0.002, 30.0]
    fc = Forecast(torch.tensor(f), names, fiducial)
    gauss = gaussian_mixtures.GaussianND(fiducial, f, is_inv_cov=True, names=names, labels=names)
    plotter = plots.get_subplot_plotter()
    plotter.triangle_plot(gauss, filled=False)
    try:
        cov = fc.covariance().numpy()
        checked = 0
        for row in range(1, 3):
            for col in range(row):
                ax = plotter.subplots[row, col]
                contour = next(c for c in ax.collections if hasattr(c, "levels"))
                paths = contour.get_paths()
                block = np.linalg.inv(cov[np.ix_([col, row], [col, row])])
                # contour levels are densities, ascending: the outer (95%) contour comes first
                for level, path in zip((0.95, 0.68), paths):
                    d = path.vertices - np.array([fiducial[col], fiducial[row]])
                    maha = np.einsum("ni,ij,nj->n", d, block, d)
                    assert np.abs(maha / delta_chi2(level) - 1).max() < 0.015, (names[col], names[row], level)
                    ours = fc.ellipse(names[col], names[row], level).numpy() - [fiducial[col], fiducial[row]]
                    area_ours = 0.5 * abs(np.sum(ours[:-1, 0] * ours[1:, 1] - ours[1:, 0] * ours[:-1, 1]))
                    v = d
                    area_gd = 0.5 * abs(np.sum(v[:-1, 0] * v[1:, 1] - v[1:, 0] * v[:-1, 1]))
                    assert area_gd == pytest.approx(area_ours, rel=0.02)
                    checked += 1
        assert checked == 6
    finally:
        plt.close("all")


def test_triangle_plot_uses_each_parameters_own_scale():
    f = fisher_3()
    fc = Forecast(torch.tensor(f), ["a", "b", "c"], [1.0, 0.002, 30.0])
    fig = triangle([fc, fc.with_prior(b=1e-4)], labels=["data", "data + prior"])
    try:
        axes = np.array(fig.axes).reshape(3, 3)
        sigma = fc.marginal_errors().numpy()
        for i in range(3):
            lo, hi = axes[2, i].get_xlim()
            assert (hi - lo) == pytest.approx(7 * sigma[i], rel=1e-9)  # ± 3.5 σ of its own parameter
            assert axes[2, i].get_xlabel() == "abc"[i]
        line = axes[1, 0].get_lines()[0]
        np.testing.assert_allclose(
            np.column_stack([line.get_xdata(), line.get_ydata()]), fc.ellipse("a", "b", 1 - math.exp(-0.5)).numpy()
        )
        assert not axes[0, 2].axison
    finally:
        plt.close(fig)


def test_forecast_from_a_family_model():
    fc = Forecast.from_model(fk.family("normal"), torch.tensor([0.0, 2.0], dtype=F64), n=100)
    np.testing.assert_allclose(fc.marginal_errors().numpy(), [2.0 / 10, 2.0 / math.sqrt(200)], rtol=1e-12)
    with pytest.raises(fk.ParameterError, match="n must"):
        Forecast.from_model(fk.family("normal"), [0.0, 2.0], n=0)
