"""Statistics for many paired comparisons against one baseline.

- Wilson score interval of a proportion (Wilson 1927).
- Exact two-sided McNemar test of a paired difference (binomial on the discordant pairs).
- Newcombe's hybrid score interval for a paired difference of proportions: Newcombe
  1998, "Improved confidence intervals for the difference between binomial proportions
  based on paired data", Statistics in Medicine 17:2635-2650, method 10 (no continuity
  correction): square-and-add of the two marginal Wilson intervals, corrected by the
  phi coefficient of the 2x2 table, as Fagerland, Lydersen & Laake's reference code
  does it (ocbe-uio/contingencytables, R/Newcombe_square_and_add_CI_paired_2x2.R:
  psi = (A - N/2)/sqrt(...) if A > N/2, 0 if 0 <= A <= N/2, A/sqrt(...) if A < 0, with
  A = ad - bc); they recommend it for paired binomial data (Stat Methods Med Res 2014).
- Holm's step-down adjustment (Holm 1979) of the p-values of one family of tests.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exact at the ends (the float formula lands a hair inside 0 and 1 there)
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c (binomial, p=1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def newcombe_paired(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of p1 - p2 for paired binary data (Newcombe 1998, method 10).

    a: both succeed, b: only the first succeeds, c: only the second, d: neither;
    p1 = (a + b) / n, p2 = (a + c) / n, so p1 - p2 = (b - c) / n.
    """
    n = a + b + c + d
    if n == 0:
        return (math.nan, math.nan)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    if denom == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    else:
        phi = (cross - n / 2 if cross > n / 2 else cross) / math.sqrt(denom)
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = p1 - p2
    return (max(-1.0, diff - delta), min(1.0, diff + eps))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order; NaN entries stay NaN and are not counted.

    Sorted ascending p_(1..m): adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j)).
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, Codex paper, Fig. 3:
    1 - C(n-c, k) / C(n, k), computed as a stable product)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod
