"""How much noise a comparison of a few training runs can hide: paired differences and their
t-interval, and how large a Matthews correlation chance alone produces.

Used by notebook 08, which trains a few students with and without distillation from the same seeds
(same initial weights, same batches within a seed): each seed gives one *paired* difference, so the
seed-to-seed variation that both variants share cancels out of it.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from collections.abc import Sequence

# Two-sided 95% critical values of Student's t (its 0.975 quantile) for 1 to 30 degrees of freedom,
# as tabulated in the NIST/SEMATECH e-Handbook of Statistical Methods, section 1.3.6.7.2
# ("Critical Values of the Student's t Distribution"). Used only where scipy is not installed.
T_975: tuple[float, ...] = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                            2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                            2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_critical(df: int, confidence: float = 0.95) -> float:
    """The two-sided critical value of Student's t with ``df`` degrees of freedom: the interval
    mean ± t · standard error covers the true mean with probability ``confidence`` (for normally
    distributed differences). From scipy when installed, else from the NIST table (95% only; past
    30 degrees of freedom the table's last value, which is slightly too large, so never too narrow)."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 1 degree of freedom (2 paired runs), got {df}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
    try:
        from scipy.stats import t
    except ImportError:
        if not math.isclose(confidence, 0.95):
            raise ValueError("without scipy only 95% intervals are tabulated: pip install scipy, "
                             "or use confidence=0.95.") from None
        return T_975[min(df, len(T_975)) - 1]
    return float(t.ppf(0.5 + confidence / 2, df))


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the paired differences ``treated − control``, its standard error and t-interval."""

    n: int
    mean: float
    standard_error: float
    t_critical: float
    low: float
    high: float
    confidence: float

    @property
    def verdict(self) -> str:
        """``higher`` or ``lower`` when the interval excludes 0, else ``inconclusive``."""
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "inconclusive"

    def describe(self, what: str = "difference") -> str:
        """One sentence: the mean ± standard error, the interval, and what it allows one to say."""
        head = (f"{what}: {self.mean:+.3f} ± {self.standard_error:.3f} (mean ± standard error over {self.n} "
                f"paired seeds); {self.confidence:.0%} t-interval [{self.low:+.3f}, {self.high:+.3f}] "
                f"(t = {self.t_critical:.2f}, {self.n - 1} df)")
        if self.verdict == "inconclusive":
            return head + ": inconclusive, the interval contains 0"
        return head + f": {self.verdict}, the interval excludes 0"


def paired_difference(treated: Sequence[float], control: Sequence[float],
                      confidence: float = 0.95) -> PairedDifference:
    """The paired t-interval of ``treated[i] − control[i]`` (Student, 1908): mean ± t · s / √n,
    with s the sample standard deviation of the n differences and t from :func:`t_critical`."""
    if len(treated) != len(control):
        raise ValueError(f"paired runs come in pairs: got {len(treated)} treated and {len(control)} control values.")
    differences = [float(a) - float(b) for a, b in zip(treated, control)]
    n = len(differences)
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 paired runs, got {n}: train with more seeds.")
    mean = statistics.fmean(differences)
    se = statistics.stdev(differences) / math.sqrt(n)
    t = t_critical(n - 1, confidence)
    return PairedDifference(n, mean, se, t, mean - t * se, mean + t * se, confidence)


def chance_mcc(n: int, z: float = 1.96) -> float:
    """The |MCC| that predictions independent of the labels stay below in about 95% of samples of
    ``n`` (for z = 1.96). For a 2 × 2 table Pearson's χ² statistic equals n · MCC², and χ² with one
    degree of freedom is the square of a standard normal, so |MCC| · √n is approximately |N(0, 1)|."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    return z / math.sqrt(n)
