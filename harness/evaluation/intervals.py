"""How sure an accuracy is: the Wilson score interval of a proportion, and the exact McNemar test of
two models read on the same images. Standard library only, so reports and the CLI use it freely.

Wilson (1927): for k right of n, the 95% interval is the set of true accuracies p for which k/n is
within 1.96 standard errors of p; unlike k/n +- 1.96 sqrt(p(1-p)/n) it stays inside [0, 1] and is
right near 0 and 1 and for small n.

McNemar (exact): of the images exactly one of two models reads right, b are A's and c are B's; under
"equally accurate" b ~ Binomial(b + c, 1/2). The two-sided p-value is twice the smaller tail (at
most 1). A difference with p >= 0.05 is within noise.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(right: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (low, high) of the accuracy right / total; (0, 1) when total is 0."""
    if total <= 0:
        return 0.0, 1.0
    p = right / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    low = 0.0 if right == 0 else max(0.0, centre - half)
    high = 1.0 if right == total else min(1.0, centre + half)
    return low, high


def mcnemar(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: ``only_a`` images only A reads right, ``only_b`` only B."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def within_noise(p_value: float, level: float = 0.05) -> bool:
    return p_value >= level
