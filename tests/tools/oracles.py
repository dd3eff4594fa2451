"""Independent oracles for the Fisher information: the closed forms of DESIGN.md evaluated with mpmath at
50 digits (never fisherkl's own code), at θ as the given dtype represents it."""

from __future__ import annotations

import mpmath as mp

mp.mp.dps = 50
EULER = mp.euler


def _diag(*entries):
    n = len(entries)
    return [[entries[i] if i == j else mp.mpf(0) for j in range(n)] for i in range(n)]


def _ls(a, c, e, sigma):
    s2 = sigma**2
    return [[a / s2, c / s2], [c / s2, e / s2]]


def _vonmises(kappa):
    big_a = mp.besseli(1, kappa) / mp.besseli(0, kappa)
    return _diag(kappa * big_a, 1 - big_a / kappa - big_a**2)


def fisher_oracle(name: str, fixed: dict, theta: list[float]) -> list[list] | None:
    """I(θ) as a d × d list of mpmath numbers, or None where no closed form is listed here."""
    t = [mp.mpf(x) for x in theta]
    if name in ("normal", "lognormal"):
        return _ls(1, 0, 2, t[1])
    if name == "laplace":
        return _ls(1, 0, 1, t[1])
    if name == "cauchy":
        return _ls(mp.mpf(1) / 2, 0, mp.mpf(1) / 2, t[1])
    if name == "studentt":
        nu = mp.mpf(fixed.get("df", 5.0))
        return _ls((nu + 1) / (nu + 3), 0, 2 * nu / (nu + 3), t[1])
    if name == "logistic":
        return _ls(mp.mpf(1) / 3, 0, (mp.pi**2 + 3) / 9, t[1])
    if name == "gumbel":
        return _ls(1, EULER - 1, (1 - EULER) ** 2 + mp.pi**2 / 6, t[1])
    if name == "bernoulli":
        return [[1 / (t[0] * (1 - t[0]))]]
    if name == "binomial":
        return [[mp.mpf(fixed.get("total_count", 10)) / (t[0] * (1 - t[0]))]]
    if name == "geometric":
        return [[1 / (t[0] ** 2 * (1 - t[0]))]]
    if name == "negativebinomial":
        return [[mp.mpf(fixed.get("total_count", 5.0)) / (t[0] * (1 - t[0]) ** 2)]]
    if name in ("categorical", "multinomial"):
        n = mp.mpf(fixed.get("total_count", 10)) if name == "multinomial" else 1
        last = 1 - mp.fsum(t)
        return [[n * ((1 / t[i] if i == j else 0) + 1 / last) for j in range(len(t))] for i in range(len(t))]
    if name == "poisson":
        return [[1 / t[0]]]
    if name == "exponential":
        return [[1 / t[0] ** 2]]
    if name == "rayleigh":
        return [[4 / t[0] ** 2]]
    if name == "halfnormal":
        return [[2 / t[0] ** 2]]
    if name in ("gamma", "inversegamma"):
        a, b = t
        return [[mp.psi(1, a), -1 / b], [-1 / b, a / b**2]]
    if name == "chi2":
        return [[mp.psi(1, t[0] / 2) / 4]]
    if name == "beta":
        a, b = t
        s = mp.psi(1, a + b)
        return [[mp.psi(1, a) - s, -s], [-s, mp.psi(1, b) - s]]
    if name == "dirichlet":
        s = mp.psi(1, mp.fsum(t))
        return [[(mp.psi(1, t[i]) if i == j else 0) - s for j in range(len(t))] for i in range(len(t))]
    if name == "weibull":
        lam, k = t
        g = 1 - EULER
        return [[k**2 / lam**2, -g / lam], [-g / lam, (g**2 + mp.pi**2 / 6) / k**2]]
    if name == "vonmises":
        return _vonmises(t[1])
    if name == "pareto":
        return [[1 / t[0] ** 2]]
    return None


def normal_distance(a: list[float], b: list[float]):
    """Fisher–Rao distance of Normal(μ, σ): √2·arccosh(1 + [(μ₁−μ₂)² + 2(σ₁−σ₂)²]/(4σ₁σ₂))."""
    m1, s1, m2, s2 = (mp.mpf(x) for x in (*a, *b))
    return mp.sqrt(2) * mp.acosh(1 + ((m1 - m2) ** 2 + 2 * (s1 - s2) ** 2) / (4 * s1 * s2))


def poisson_distance(a: float, b: float):
    return 2 * abs(mp.sqrt(mp.mpf(a)) - mp.sqrt(mp.mpf(b)))


def as_floats(matrix) -> list[list[float]]:
    """mpmath entries as floats (inf where they overflow float64)."""
    return [[float(x) for x in row] for row in matrix]
