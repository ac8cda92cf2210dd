"""Paired comparison of two starts (a method and scratch) on the same folds and the same evaluation cases.

The effect is the mean over folds of the per-fold mean per-case difference, ``method - reference``, in the
units of the scores given (the report passes DSC in %). Two 95 % intervals, because two sources of
uncertainty matter and they are of very different size here:

* ``bootstrap_interval`` — percentile bootstrap over evaluation cases, stratified by fold: every resample
  draws each fold's cases with replacement (same count) and recomputes the effect. It answers "how much
  would the effect move with other cases from the same distribution, for these trained networks", and says
  nothing about the randomness of training itself.
* ``fold_t_interval`` — a t interval over the per-fold effects (df = folds - 1). Each fold is an independent
  training of both starts, so this one includes run-to-run variation; with three folds it is wide.

A claim that one start beats another needs the fold interval above zero, not only the bootstrap one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nnunet_cl.errors import NnunetClError

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """Effect of a method against its reference, with both intervals (NaN where undefined)."""
    effect: float
    bootstrap_low: float
    bootstrap_high: float
    fold_low: float
    fold_high: float
    folds: tuple
    cases: int


def paired_differences(method: dict, reference: dict) -> dict:
    """Per-case differences, fold by fold, on folds both have.

    Args:
        method, reference: ``{fold: {case: score}}``.
    Returns:
        ``{fold: np.ndarray of method - reference, in sorted case order}`` for the folds present in both
        (in the method's fold order).
    Raises:
        NnunetClError: a shared fold whose case sets differ (the runs were not evaluated on the same cases).
    """
    differences = {}
    for fold, cases in method.items():
        if fold not in reference:
            continue
        if set(cases) != set(reference[fold]):
            only_method = sorted(set(cases) - set(reference[fold]))
            only_reference = sorted(set(reference[fold]) - set(cases))
            raise NnunetClError(
                f"cannot pair fold {fold}: the case sets differ ({len(only_method)} cases only in the method's "
                f"results{', e.g. ' + only_method[0] if only_method else ''}; {len(only_reference)} only in the "
                f"reference's{', e.g. ' + only_reference[0] if only_reference else ''}); evaluate both on the same "
                f"cases (delete the stale metrics file and rerun the benchmark)")
        order = sorted(cases)
        differences[fold] = np.array([cases[c] for c in order], float) - np.array([reference[fold][c] for c in order],
                                                                                  float)
    return differences


def effect(differences: dict) -> float:
    """Mean over folds of the per-fold mean difference (each fold weighs the same)."""
    return float(np.mean([d.mean() for d in differences.values()])) if differences else math.nan


def bootstrap_interval(differences: dict, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       confidence: float = CONFIDENCE) -> tuple:
    """Percentile bootstrap interval of ``effect``, resampling cases within each fold.

    Args:
        differences: ``{fold: per-case differences}`` as from ``paired_differences``.
        resamples: bootstrap resamples. seed: their generator's seed (reports are reproducible).
    Returns:
        ``(low, high)``; NaN without data.
    """
    if not differences:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    fold_means = np.zeros(resamples)
    for values in differences.values():
        draws = rng.integers(0, len(values), size=(resamples, len(values)))
        fold_means += values[draws].mean(axis=1)
    statistics = fold_means / len(differences)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(statistics, [tail, 1.0 - tail])
    return float(low), float(high)


def fold_t_interval(differences: dict, confidence: float = CONFIDENCE) -> tuple:
    """t interval over the per-fold mean differences; NaN with fewer than two folds."""
    means = np.array([d.mean() for d in differences.values()], float)
    if len(means) < 2:
        return math.nan, math.nan
    from scipy.stats import t

    half = t.ppf(0.5 + confidence / 2, df=len(means) - 1) * means.std(ddof=1) / math.sqrt(len(means))
    return float(means.mean() - half), float(means.mean() + half)


def compare(method: dict, reference: dict, resamples: int = BOOTSTRAP_RESAMPLES,
            seed: int = BOOTSTRAP_SEED) -> PairedDifference:
    """Everything the report shows for one method x fraction against its reference."""
    differences = paired_differences(method, reference)
    low, high = bootstrap_interval(differences, resamples, seed)
    fold_low, fold_high = fold_t_interval(differences)
    return PairedDifference(effect(differences), low, high, fold_low, fold_high, tuple(differences),
                            sum(len(d) for d in differences.values()))
