"""Issue 15's contract, fuzzed: every public non-network entry point answers with a finite correct value
(against an mpmath oracle, tests/tools/oracles.py, or a mathematical property) or refuses by name —
never a silent NaN/inf/negative/wrong value, never an internal exception, never a hang.

The same cases feed ``tests/tools/outcomes.py``, which counts outcomes by class over a fixed sample.
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fisherkl as fk
from tools.cases import (
    DTYPES,
    FAMILIES,
    ROUTES,
    argument_cases,
    file_cases,
    fisher_case,
    geometry_cases,
    matrix_cases,
)
from tools.contract import classify
from tools.oracles import as_floats, fisher_oracle, normal_distance

F32, F64 = torch.float32, torch.float64
ACCEPTED = ("correct", "named error")


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(FAMILIES),
    route=st.sampled_from(ROUTES),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_fisher_routes_at_extreme_theta_are_correct_or_refuse_by_name(family, route, dtype, seed):
    name, fixed = family
    label, call, check = fisher_case(random.Random(seed), name, fixed, route, dtype)
    outcome, detail = classify(call, check, timeout=60)
    assert outcome in ACCEPTED, f"{label}: {outcome}: {detail}"


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_geometry_at_extreme_theta_is_correct_or_refuses_by_name(seed):
    for label, call, check in geometry_cases(seed, 3):
        outcome, detail = classify(call, check, timeout=60)
        assert outcome in ACCEPTED, f"{label}: {outcome}: {detail}"


def _ids(cases):
    return [c[0] for c in cases]


ARGUMENT_CASES = list(argument_cases())
MATRIX_CASES = list(matrix_cases())


@pytest.mark.parametrize("case", ARGUMENT_CASES, ids=_ids(ARGUMENT_CASES))
def test_secondary_arguments_are_validated_by_name(case):
    label, call, check = case
    outcome, detail = classify(call, check, timeout=60)
    assert outcome in (*ACCEPTED, "other clean error"), f"{label}: {outcome}: {detail}"


@pytest.mark.parametrize("case", MATRIX_CASES, ids=_ids(MATRIX_CASES))
def test_fisher_matrix_methods_answer_or_refuse_by_name(case):
    label, call, check = case
    outcome, detail = classify(call, check, timeout=60)
    assert outcome in (*ACCEPTED, "other clean error"), f"{label}: {outcome}: {detail}"


def test_files_inconsistent_fifo_full_disk_and_orphans(tmp_path):
    for label, call, check in file_cases(str(tmp_path)):
        outcome, detail = classify(call, check, timeout=60)
        assert outcome in (*ACCEPTED, "other clean error"), f"{label}: {outcome}: {detail}"


# --- the reproducers of issue 15, one by one, with their true values --------------------------------------
def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


@pytest.mark.parametrize(
    ("name", "fixed", "theta", "dtype", "route"),
    [
        ("bernoulli", {}, [1e-7], F32, "kl_hessian"),
        ("bernoulli", {}, [1e-7], F32, "score"),
        ("binomial", {"total_count": 10}, [1e-15], F32, "kl_hessian"),
        ("bernoulli", {}, [1e-300], F64, "kl_hessian"),
        ("poisson", {}, [1e-300], F64, "score"),
        ("exponential", {}, [1e-18], F32, "score"),
        ("categorical", {"k": 3}, [1e-300, 0.5], F64, "score"),
        ("categorical", {"k": 3}, [1e-7, 0.5], F32, "score"),
        ("normal", {}, [0.0, 1e150], F64, "neg_hessian"),
        ("cauchy", {}, [2e135, 1.5], F64, "score"),
        ("negativebinomial", {"total_count": 5.0}, [1e-100], F64, "kl_hessian"),
        # after merging issue 17's rearranged closed forms: Binet's Bregman term at a tiny shape, the
        # Bessel ratio at a tiny κ, products a·B at huge concentrations, float32 underflow of node weights
        ("chi2", {}, [3.48058e-10], F32, "kl_hessian"),
        ("beta", {}, [3.97015e-13, 2.51383e19], F32, "kl_hessian"),
        ("beta", {}, [0.032, 4.38889e-98], F64, "jeffreys_hessian"),
        ("beta", {}, [4.43e261, 1.22e198], F64, "jeffreys_hessian"),
        ("dirichlet", {"k": 3}, [3.53e29, 6.8e20, 1.24e22], F32, "kl_hessian"),
        ("vonmises", {}, [0.0, 7.3716e-21], F32, "jeffreys_hessian"),
        ("vonmises", {}, [0.0, 4.85171e-200], F64, "jeffreys_hessian"),
        ("studentt", {"df": 5.0}, [-0.97942, 0.16836], F32, "kl_hessian"),
    ],
)
def test_issue_reproducers_give_the_true_value(name, fixed, theta, dtype, route):
    fam = fk.family(name, **fixed)
    x = t(theta, dtype)
    est = fk.fisher(fam, x, route, return_error=True)
    truth = torch.tensor(as_floats(fisher_oracle(name, fixed, [float(v) for v in x])), dtype=F64)
    got = est.value.to(F64)
    tol = 1e-9 if dtype == F64 else 2e-3
    assert torch.all((got - truth).abs() <= est.error.to(F64) + tol * truth.abs().max()), (got, truth)


def test_float32_mixture_kl_hessian_matches_float64():
    fam = fk.family("mixture_normal")
    low = fk.fisher(fam, fam.typical(F32), "kl_hessian").to(F64)
    high = fk.fisher(fam, fam.typical(F64), "kl_hessian")
    assert float((low - high).abs().max()) < 1e-4 * float(high.abs().max())


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: fk.fisher(fk.family("gamma"), t([1e-300, 1.0])), ["infinite", "gamma", "1e-300"]),
        (lambda: fk.fisher(fk.family("poisson"), t([1e8], F32), "score"), ["float64"]),
        (lambda: fk.fisher(fk.family("dirichlet"), t([1e-4] * 3), "score", seed=0), ["samples"]),
        # c_k = λ(−δ/λ)^k/k: c₂ = 1/(2λ) = 1e323 overflows
        (lambda: fk.kl_taylor(fk.family("poisson"), t([5e-324]), t([1.0])), ["non-finite"]),
        (lambda: fk.christoffel(fk.family("geometric"), t([5e-324])), ["Christoffel", "rescale"]),
        # the mass spans ~5e12 integers: refused at once instead of a series that ran for minutes
        (lambda: fk.fisher(fk.family("negativebinomial"), t([1 - 1e-12]), "neg_hessian"), ["integers"]),
    ],
)
def test_unresolvable_results_raise_numerical_error(call, words):
    with pytest.raises(fk.NumericalError) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("kappa", [1e-300, 1e-20, 1e-5, 0.1, 0.3, 0.4999, 0.5, 0.7, 2.0])
def test_bessel_ratio_and_its_derivative_across_the_small_kappa_series(kappa):
    import mpmath as mp

    from fisherkl.families.distributions import bessel_ratio, bessel_ratio_complement, bessel_ratio_derivative

    with mp.workdps(40):
        k = mp.mpf(kappa)
        a = mp.besseli(1, k) / mp.besseli(0, k)
        want = [a, 1 - a, 1 - a / k - a**2]  # A, 1 − A, A′ = 1 − A/κ − A²
    x = t([kappa])
    for fn, w in zip((bessel_ratio, bessel_ratio_complement, bessel_ratio_derivative), want):
        assert abs(float(fn(x)[0]) - float(w)) <= 3e-15 * abs(float(w)), (fn.__name__, kappa)


@pytest.mark.parametrize("a", [1e-200, 1e-10, 1e-3, 0.5, 0.999, 1.0, 3.0])
@pytest.mark.parametrize("r", [1e-9, 0.3, -0.45])
def test_binet_bregman_across_the_small_shape_split(a, r):
    import mpmath as mp

    from fisherkl.special import binet_bregman

    with mp.workdps(60):
        big_a, d = mp.mpf(a), mp.mpf(a * r)

        def mu(z):  # Binet's function log Γ(z) − (z − ½) log z + z − ½ log 2π
            return mp.loggamma(z) - (z - mp.mpf(1) / 2) * mp.log(z) + z - mp.log(2 * mp.pi) / 2

        mu1 = mp.digamma(big_a) - mp.log(big_a) + 1 / (2 * big_a)
        want = float(mu(big_a + d) - mu(big_a) - d * mu1)
    got = float(binet_bregman(t([a]), t([float(d)]))[0])
    assert abs(got - want) <= 1e-14 * want, (a, r, got, want)


def test_poisson_taylor_coefficients_at_a_tiny_rate():
    # KL[Poisson(λ) ‖ Poisson(λ + tδ)] = λ·G(tδ/λ), G(x) = x − log(1 + x) = Σ_{k≥2} (−x)^k/k, so
    # c_k = λ(−δ/λ)^k/k: finite at λ = δ = 1e-300 although I(λ) = 1/λ = 1e300 is huge
    lam = delta = 1e-300
    got = fk.kl_taylor_terms(fk.family("poisson"), t([lam]), t([delta]), order=4)
    truth = [0.0, 0.0] + [lam * (-delta / lam) ** k / k for k in (2, 3, 4)]
    assert all(math.isclose(float(g), w, rel_tol=1e-14, abs_tol=0.0) for g, w in zip(got, truth)), (got, truth)


def test_a_concave_log_partition_is_refused():
    concave = fk.ExponentialFamily(
        lambda e: -(e**2).sum(-1), 1, base=lambda e: torch.distributions.Normal(e[..., 0], 1.0)
    )
    with pytest.raises(fk.NumericalError, match="negative diagonal"):
        fk.fisher(concave, t([0.0]))


def test_a_model_that_ignores_theta_has_fisher_zero():
    constant = fk.Model(lambda th: torch.distributions.Poisson(torch.full(th.shape[:-1], 2.0, dtype=th.dtype)), 1)
    for route in ("score", "neg_hessian", "kl_hessian", "jeffreys_hessian"):
        assert float(fk.fisher(constant, t([0.3]), route).abs().max()) == 0.0


def test_fisher_rao_distance_with_huge_location_is_finite():
    got = float(fk.fisher_rao_distance(fk.family("normal"), t([1e160, 1.5]), t([0.0, 1.5])))
    assert math.isclose(got, float(normal_distance([1e160, 1.5], [0.0, 1.5])), rel_tol=1e-12)


def test_valid_extreme_fixed_arguments_are_accepted_and_huge_sizes_refused_at_once():
    studentt = fk.family("studentt", df=1e300)
    assert torch.allclose(fk.fisher(studentt, t([0.0, 1.0])), t([[1.0, 0.0], [0.0, 2.0]]))
    assert float(fk.fisher(fk.family("pareto", scale=1e-300), t([2.0]))) == 0.25
    with pytest.raises(fk.ParameterError, match="total_count"):
        fk.family("binomial", total_count=1e30)
    with pytest.raises(fk.ParameterError, match="'k'"):
        fk.family("categorical", k=10**20)


def test_cramer_rao_with_an_astronomical_n_divides_exactly():
    got = fk.cramer_rao(fk.family("poisson"), t([8e281]), n=10**400)
    assert math.isclose(float(got), 8e-119, rel_tol=1e-12)  # 8e281 / 10**400


def test_stride_zero_batch_is_computed_once_and_expanded():
    theta = t([0.5, 1.5]).expand(10**5, 2)
    info = fk.fisher(fk.family("normal"), theta, "score")
    assert info.shape == (10**5, 2, 2) and info.is_contiguous()
    assert torch.allclose(info[7], t([[1 / 2.25, 0.0], [0.0, 2 / 2.25]]), rtol=1e-10, atol=1e-14)


def test_bad_matrix_file_fails_at_load_with_its_reason(tmp_path):
    from fisherkl.io import write_file
    from fisherkl.matrix import Dense, ParamLayout

    f = Dense(t([[2.0, 0.5], [0.5, 1.0]]), ParamLayout(("w",), ((2,),)))
    state = {**f.state_dict(), "matrix": t([[1.0, 2.0], [2.0, 1.0]])}  # symmetric, eigenvalue −1
    path = os.path.join(tmp_path, "bad.pt")
    write_file(path, "matrix", "Dense", state)
    with pytest.raises(fk.FileFormatError, match="not positive semi-definite"):
        fk.load(path)
