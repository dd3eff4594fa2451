"""Bad input gets a specific ParameterError naming the parameter — from the API and the CLI."""

from __future__ import annotations

import math

import pytest
import torch

import fisherkl as fk
from fisherkl.cli import main

F64 = torch.float64

# (family, fixed, bad θ, words the message must contain)
BAD = [
    ("normal", {}, [0.0, -1.0], ["scale", "> 0", "-1"]),
    ("normal", {}, [math.nan, 1.0], ["loc", "nan"]),
    ("normal", {}, [0.0, math.inf], ["scale", "inf"]),
    ("lognormal", {}, [0.0, 0.0], ["scale", "> 0"]),
    ("halfnormal", {}, [-2.0], ["scale", "> 0"]),
    ("laplace", {}, [1.0, -0.5], ["scale"]),
    ("cauchy", {}, [1.0, 0.0], ["scale"]),
    ("exponential", {}, [0.0], ["rate"]),
    ("gamma", {}, [-2.5, 1.7], ["concentration", "> 0", "-2.5"]),
    ("gamma", {}, [2.5, math.nan], ["rate", "nan"]),
    ("beta", {}, [2.0, -3.0], ["concentration0"]),
    ("poisson", {}, [-1.0], ["rate"]),
    ("bernoulli", {}, [1.0], ["probs", "(0, 1)"]),
    ("bernoulli", {}, [1.5], ["probs"]),
    ("binomial", {"total_count": 5}, [0.0], ["probs"]),
    ("geometric", {}, [-0.1], ["probs"]),
    ("categorical", {"k": 3}, [0.6, 0.5], ["sum", "less than 1", "1.1"]),
    ("categorical", {"k": 4}, [0.2, -0.1, 0.3], ["probs[1]"]),
    ("dirichlet", {"k": 3}, [1.0, 0.0, 2.0], ["concentration[1]"]),
    ("uniform", {}, [1.0, 0.5], ["high", "low"]),
]


@pytest.mark.parametrize(("name", "fixed", "theta", "words"), BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_theta_names_the_parameter(name, fixed, theta, words):
    f = fk.family(name, **fixed)
    with pytest.raises(fk.ParameterError) as info:
        f.validate(torch.tensor(theta, dtype=F64))
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert isinstance(info.value, ValueError)
    # every public entry point validates the same way
    for call in (
        lambda: fk.fisher(f, torch.tensor(theta, dtype=F64)),
        lambda: fk.kl(f, torch.tensor(theta, dtype=F64), f.typical()),
        lambda: fk.kl(f, f.typical(), torch.tensor(theta, dtype=F64)),
        lambda: fk.jeffreys(f, torch.tensor(theta, dtype=F64), f.typical()),
        lambda: fk.chi2(f, f.typical(), torch.tensor(theta, dtype=F64)),
        lambda: fk.kl_quadratic(f, torch.tensor(theta, dtype=F64), torch.zeros(f.dim, dtype=F64)),
    ):
        with pytest.raises(fk.ParameterError):
            call()


def test_bad_value_in_a_batch_reports_its_index():
    f = fk.family("normal")
    theta = torch.tensor([[0.0, 1.0], [0.0, 2.0], [1.0, -3.0]], dtype=F64)
    with pytest.raises(fk.ParameterError, match=r"scale.*-3.*index \(2,\)"):
        fk.fisher(f, theta)


@pytest.mark.parametrize(
    ("name", "theta"), [("gamma", [2.0]), ("gamma", [1.0, 2.0, 3.0]), ("categorical", [0.2, 0.3, 0.1]), ("normal", 1.0)]
)
def test_wrong_last_dimension(name, theta):
    f = fk.family(name)
    with pytest.raises(fk.ParameterError, match=f"last dimension {f.dim}"):
        fk.fisher(f, torch.tensor(theta, dtype=F64))


def test_bad_delta():
    f = fk.family("gamma")
    with pytest.raises(fk.ParameterError, match="delta"):
        fk.kl_quadratic(f, f.typical(), torch.tensor([0.1], dtype=F64))
    with pytest.raises(fk.ParameterError, match="delta must be finite"):
        fk.kl_quadratic(f, f.typical(), torch.tensor([0.1, math.nan], dtype=F64))


def test_non_numeric_theta():
    with pytest.raises(fk.ParameterError, match="numeric"):
        fk.fisher(fk.family("normal"), ["a", "b"])


def test_bad_fixed_arguments():
    with pytest.raises(fk.ParameterError, match="total_count"):
        fk.family("binomial", total_count=0)
    with pytest.raises(fk.ParameterError, match="total_count"):
        fk.family("binomial", total_count=2.5)
    with pytest.raises(fk.ParameterError, match=r"k.*integer in \[2, 1048576\]"):
        fk.family("categorical", k=1)
    with pytest.raises(fk.ParameterError, match="unknown fixed argument"):
        fk.family("gamma", k=3)
    with pytest.raises(fk.ParameterError, match=r"unknown family .gauss.*normal"):
        fk.family("gauss")


def test_unknown_methods():
    f = fk.family("normal")
    with pytest.raises(fk.RouteError, match="unknown method"):
        fk.fisher(f, f.typical(), "magic")  # type: ignore[arg-type]
    with pytest.raises(fk.RouteError, match="unknown expectation"):
        fk.fisher(f, f.typical(), "score", expectation="sometimes")  # type: ignore[arg-type]
    with pytest.raises(fk.RouteError, match="unknown method"):
        fk.kl(f, f.typical(), f.typical(), method="magic")  # type: ignore[arg-type]


def test_user_model_without_constraints_reports_torch_rejection():
    m = fk.Model(lambda t: torch.distributions.Normal(t[..., 0], t[..., 1]), 2, name="mine")
    with pytest.raises(fk.ParameterError, match="mine: the model rejected theta"):
        fk.fisher(m, torch.tensor([0.0, -1.0], dtype=F64), "score")


def test_user_model_constructor_checks():
    with pytest.raises(fk.ParameterError, match="dim"):
        fk.Model(lambda t: None, 0)  # type: ignore[arg-type,return-value]
    with pytest.raises(fk.ParameterError, match="names has 1 entries but dim is 2"):
        fk.Model(lambda t: None, 2, names=["a"])  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="callable"):
        fk.Model(3, 1)  # type: ignore[arg-type]


def test_route_errors_explain():
    with pytest.raises(fk.RouteError, match="kink"):
        fk.fisher(fk.family("laplace"), torch.tensor([0.0, 1.0], dtype=F64), "neg_hessian")
    with pytest.raises(fk.RouteError, match="expectation='mc'"):
        fk.fisher(fk.family("dirichlet"), torch.tensor([1.0, 2.0, 3.0], dtype=F64), "score", expectation="exact")
    m = fk.Model(lambda t: torch.distributions.Independent(torch.distributions.StudentT(3.0, t, 1.0), 1), 2)
    with pytest.raises(fk.RouteError, match="jeffreys_hessian' needs a closed-form KL or an exact expectation"):
        fk.fisher(m, torch.tensor([0.0, 1.0], dtype=F64), "jeffreys_hessian")
    with pytest.raises(fk.RouteError, match="no closed-form Fisher"):
        fk.fisher(m, torch.tensor([0.0, 1.0], dtype=F64), "closed")
    with pytest.raises(fk.NonRegularModelError, match="support"):
        fk.fisher(fk.family("uniform"), torch.tensor([0.0, 1.0], dtype=F64))


CLI_BAD = [
    (["fisher", "gamma", "--theta", "-2.5,1.7"], "concentration"),
    (["fisher", "gamma", "--theta", "2.5"], "needs 2 values"),
    (["fisher", "gamma", "--theta", "a,b"], "comma-separated numbers"),
    (["fisher", "gauss", "--theta", "0,1"], "unknown family"),
    (["fisher", "normal", "--theta", "0,1", "--method", "magic"], "invalid choice"),
    (["fisher", "bernoulli", "--theta", "1.2"], "probs"),
    (["fisher", "binomial", "--theta", "0.3", "--fixed", "total_count=0"], "total_count"),
    (["fisher", "binomial", "--theta", "0.3", "--fixed", "total_count"], "NAME=VALUE"),
    (["fisher", "uniform", "--theta", "0,1"], "does not exist"),
    (["kl", "gamma", "--theta", "2.5,1.7", "--delta", "0.1"], "needs 2 values"),
    (["kl", "gamma", "--theta", "2.5,1.7", "--delta", "-3,0"], "theta+delta"),
    (["kl", "gamma", "--theta", "2.5,1.7"], "--delta"),
    (["nonsense"], "invalid choice"),
]


@pytest.mark.parametrize(("argv", "words"), CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_cli_bad_arguments_exit_2_with_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        code = main(argv)
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3  # argparse adds a usage line; ours is one line


def test_wrong_kinds_of_argument_are_named():
    with pytest.raises(TypeError, match=r"model must be a fisherkl.Model.*fisherkl.family\('gamma'\)"):
        fk.fisher("gamma", torch.ones(2, dtype=F64))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"model must be a fisherkl\.Model"):
        fk.kl(None, torch.ones(2), torch.ones(2))  # type: ignore[arg-type]
    with pytest.raises(fk.ParameterError, match="family name must be a string"):
        fk.family(None)  # type: ignore[arg-type]
    with pytest.raises(fk.ParameterError, match="boolean"):
        fk.fisher(fk.family("gamma"), torch.tensor([True, True]))
    with pytest.raises(TypeError, match=r"must return a torch\.distributions\.Distribution, got Tensor"):
        fk.fisher(fk.Model(lambda t: t, 2), torch.ones(2, dtype=F64))  # type: ignore[arg-type,return-value]


def test_extreme_parameters_refuse_rather_than_return_zero():
    # Kumaraswamy(1e-3, 1e4): all mass within 1e-4000 of 0, beyond float64 nodes
    with pytest.raises(fk.ConvergenceError, match="probability mass"):
        fk.fisher(fk.family("kumaraswamy"), torch.tensor([1e-3, 1e4], dtype=F64), "score")


def test_geometric_kl_is_stable_for_small_p():
    g = fk.family("geometric")
    p = torch.tensor([1e-12], dtype=F64)
    assert float(fk.kl(g, p, p)) == 0.0
    # KL(p‖q) = log(p/q) + ((1−p)/p) log((1−p)/(1−q)) ≈ (r − 1 − log r) for tiny p, r = q/p
    r = 1.01
    assert float(fk.kl(g, p, p * r)) == pytest.approx(r - 1 - math.log(r), rel=1e-6)


def test_distance_between_equal_points_has_zero_gradient():
    t = torch.tensor([0.0, 1.0], dtype=F64, requires_grad=True)
    fk.fisher_rao_distance(fk.family("normal"), t, torch.tensor([0.0, 1.0], dtype=F64)).backward()
    assert torch.equal(t.grad, torch.zeros(2, dtype=F64))


def test_cli_kl_for_a_non_regular_family_prints_the_exact_divergences(capsys):
    assert main(["kl", "uniform", "--theta", "0,1", "--delta", "0.1,0.1"]) == 0
    out = capsys.readouterr().out
    assert "inf" in out and "no Fisher information" in out


def test_cli_duplicate_block_and_none_fixed(capsys):
    assert main(["fisher", "mvn", "--fixed", "k=2", "--theta", "loc=0,1; loc=5,5; scale_tril=1,0.3,2"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["fisher", "pareto", "--fixed", "scale=None", "--theta", "1,2.5"]) == 2
    assert "support" in capsys.readouterr().err


def test_von_mises_stays_accurate_at_large_concentration():
    from scipy import special

    v = fk.family("vonmises")
    for kappa in (1e4, 1e8, 1e13):
        # A′(κ) = 1 − A/κ − A² ~ 1/(2κ²) + 1/(4κ³): the direct form cancels to garbage here
        expected = 1 / (2 * kappa**2) + 1 / (4 * kappa**3) + 3 / (8 * kappa**4)
        info = fk.fisher(v, torch.tensor([0.0, kappa], dtype=F64))
        assert float(info[1, 1]) == pytest.approx(expected, rel=1e-9)
        a = special.i1e(kappa) / special.i0e(kappa)
        assert float(info[0, 0]) == pytest.approx(kappa * a, rel=1e-12)
    t = torch.tensor([0.0, 1e13], dtype=F64)
    assert float(fk.kl(v, t, t)) == 0.0
    assert float(fk.kl(v, t, t * 1.01)) > 0
