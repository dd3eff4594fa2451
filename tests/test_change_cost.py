"""predict_kl: the predicted KL ½δᵀFδ of a change against the exact KL, per layer, and the quadratic regime.

Independent oracles: the exact mean KL (``nn.kl``, the heads' closed-form KL) as δ → 0; the dense Fisher
sliced by hand for the per-layer terms; finite differences of the exact KL for the cubic term
(k(t) − k(−t) = 2c₃t³ + O(t⁵)); a Gaussian head on a linear network, where KL = ½|Xδ|² exactly (c₃ = 0).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fisherkl.nn as fnn
from fisherkl.errors import ParameterError
from fisherkl.nn.path import path_terms
from seq_models import make

F64 = torch.float64


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 4)).to(F64)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.c2(torch.tanh(self.c1(x)))).flatten(1))


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN().to(F64)


def data_for(name: str, n: int = 40) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    if name == "mlp":
        return (torch.randn(n, 5, generator=g, dtype=F64),)
    if name == "cnn":
        return (torch.randn(n, 1, 6, 6, generator=g, dtype=F64),)
    return (torch.randint(0, 11, (n, 6), generator=g),)


def model(name: str) -> nn.Module:
    return {"mlp": mlp, "cnn": cnn, "gpt": lambda: make("gpt")}[name]()


def random_delta(net: nn.Module, scale: float, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = fnn.parameters_vector(net)
    return torch.randn(w.shape, generator=g, dtype=w.dtype) * scale


@pytest.mark.parametrize("name", ["mlp", "cnn", "gpt"])
def test_dense_prediction_tends_to_the_exact_kl(name):
    net = model(name)
    data = data_for(name)[0]
    dense = fnn.fisher(net, data, representation="dense")
    ratios = []
    for scale in (1e-2, 1e-3, 1e-4):
        cost = fnn.predict_kl(net, random_delta(net, scale), dense, data, radius=None)
        ratios.append(cost.ratio["dense"])
        # the exact Fisher's quadratic term by autodiff of the exact KL (another route) is ½δᵀFδ
        assert cost.terms is not None
        assert cost.terms.c2 == pytest.approx(cost.predicted["dense"], rel=1e-8)
    assert abs(ratios[-1] - 1) < 0.01
    assert abs(ratios[-1] - 1) <= abs(ratios[0] - 1) + 1e-6  # closer as |δ| → 0
    assert cost.quadratic_regime is True


def test_cubic_term_matches_finite_differences_of_the_exact_kl():
    net = mlp()
    (x,) = data_for("mlp")
    d = random_delta(net, 0.05)
    terms = path_terms(net, d, x)

    def odd_even(t: float) -> tuple[float, float]:
        kp = float(fnn.kl(net, fnn.perturbed(net, t * d), x))
        km = float(fnn.kl(net, fnn.perturbed(net, -t * d), x))
        return (kp - km) / (2 * t**3), (kp + km) / (2 * t**2)  # c3 + O(t²), c2 + O(t²)

    (o1, e1), (o2, e2) = odd_even(0.2), odd_even(0.1)
    assert (4 * o2 - o1) / 3 == pytest.approx(terms.c3, rel=1e-4)  # Richardson: the O(t²) error removed
    assert (4 * e2 - e1) / 3 == pytest.approx(terms.c2, rel=1e-6)


def test_gaussian_head_on_a_linear_network_is_exactly_quadratic():
    torch.manual_seed(0)
    net = nn.Linear(4, 3).to(F64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g, dtype=F64)
    d = random_delta(net, 0.7)
    cost = fnn.predict_kl(net, d, ["dense", "kfac"], x, "gaussian")
    dw = d[:12].reshape(3, 4)
    db = d[12:]
    hand = 0.5 * float(((x @ dw.T + db) ** 2).sum(1).mean())  # KL of N(μ, I) and N(μ + Δμ, I)
    assert cost.exact == pytest.approx(hand, rel=1e-12)
    assert cost.predicted["dense"] == pytest.approx(hand, rel=1e-12)
    assert cost.predicted["kfac"] == pytest.approx(hand, rel=1e-12)  # KFAC is exact for one Linear layer
    assert cost.terms is not None and abs(cost.terms.c3) < 1e-12 * hand
    assert cost.radius == float("inf") and cost.quadratic_regime is True


def test_per_layer_terms_are_diagonal_blocks_of_the_dense_fisher():
    net = mlp()
    (x,) = data_for("mlp")
    d = random_delta(net, 0.01)
    dense = fnn.fisher(net, x, representation="dense")
    cost = fnn.predict_kl(net, d, {"dense": dense, "block": fnn.fisher(net, x, representation="block")}, x,
                          per_layer_exact=True, cubic=False, radius=None)  # fmt: skip
    m = dense.to_dense()
    layout = fnn.layout_of(net)
    assert list(cost.groups) == ["0", "2", "4"]
    for g, names in cost.groups.items():
        idx = layout.indices(names)
        hand = 0.5 * float(d[idx] @ m[idx][:, idx] @ d[idx])
        assert cost.per_layer["dense"][g] == pytest.approx(hand, rel=1e-10)
        assert cost.per_layer["block"][g] == pytest.approx(hand, rel=1e-8)  # the block Fisher holds these blocks
        part = torch.zeros_like(d)
        part[idx] = d[idx]
        assert cost.exact_per_layer is not None
        assert cost.exact_per_layer[g] == pytest.approx(float(fnn.kl(net, fnn.perturbed(net, part), x)), rel=1e-12)
    assert sum(cost.per_layer["block"].values()) == pytest.approx(cost.predicted["block"], rel=1e-10)


def test_change_forms_agree():
    net = mlp()
    (x,) = data_for("mlp")
    d = random_delta(net, 0.01)
    f = fnn.fisher(net, x, representation="kfac")
    other = fnn.perturbed(net, d)

    def edit(m: nn.Module) -> None:
        with torch.no_grad():
            for p, q in zip(m.parameters(), other.parameters()):
                p.copy_(q)

    layout = fnn.layout_of(net)
    forms = [d, layout.unflatten(d, "dict"), layout.unflatten(d, "list"), other, edit]
    costs = [fnn.predict_kl(net, c, f, x, cubic=False, radius=None) for c in forms]
    for c in costs[1:]:
        assert c.predicted["kfac"] == pytest.approx(costs[0].predicted["kfac"], rel=1e-12)
        assert c.exact == pytest.approx(costs[0].exact, rel=1e-12)
    assert "predicted / exact" in str(costs[0])
    assert costs[0].records()["ratio"]["kfac"] == pytest.approx(costs[0].ratio["kfac"])


def test_large_step_is_flagged_and_the_exact_radius_holds():
    net = mlp()
    (x,) = data_for("mlp")
    d = random_delta(net, 1.0)
    cost = fnn.predict_kl(net, d, "diag", x, radius="exact", rtol=0.1)
    assert cost.quadratic_regime is False
    assert cost.terms is not None and cost.radius is not None and 0 < cost.radius < 1
    c2 = cost.terms.c2
    for t, inside in ((0.9 * cost.radius, True), (1.5 * cost.radius, False)):
        k = float(fnn.kl(net, fnn.perturbed(net, t * d), x))
        assert (abs(k - c2 * t * t) <= 0.1 * k) is inside
    # the cubic estimate of the radius is of the same order
    cubic = fnn.predict_kl(net, d, None, x, exact=False)
    assert cubic.radius is not None and 0.2 < cubic.radius / cost.radius < 5
    assert cubic.predicted == {} and cubic.exact is None


def test_float32_network_works_on_a_float64_copy():
    net = mlp().float()
    (x,) = data_for("mlp")
    d = random_delta(net, 1e-4)
    cost = fnn.predict_kl(net, d, "dense", x.float(), radius=None)
    assert abs(cost.ratio["dense"] - 1) < 0.01
    assert next(net.parameters()).dtype == torch.float32  # untouched


def test_predict_kl_errors():
    net = mlp()
    (x,) = data_for("mlp")
    d = random_delta(net, 0.01)
    with pytest.raises(ParameterError, match="data is needed"):
        fnn.predict_kl(net, d, "kfac")
    with pytest.raises(ParameterError, match="unknown representation"):
        fnn.predict_kl(net, d, "kfc", x)
    with pytest.raises(ParameterError, match="radius"):
        fnn.predict_kl(net, d, "kfac", x, radius="bisect")
    with pytest.raises(ParameterError, match="shape"):
        fnn.predict_kl(net, d[:-1], "kfac", x)
    with pytest.raises(ParameterError, match="differ"):
        fnn.predict_kl(net, nn.Linear(5, 4).to(F64), "kfac", x)
    with pytest.raises(ParameterError, match="rtol"):
        fnn.predict_kl(net, d, "kfac", x, rtol=2.0)
    with pytest.raises(ParameterError, match="groups"):
        fnn.predict_kl(net, d, "kfac", x, groups={"a": ["0.weight"]}, cubic=False, radius=None)
    only = fnn.predict_kl(net, d, fnn.fisher(net, x, representation="diag"), exact=False, cubic=False, radius=None)
    assert only.exact is None and only.quadratic_regime is None
    copy.deepcopy(only)
