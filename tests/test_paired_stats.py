"""Paired difference to scratch: effect, case bootstrap stratified by fold, fold t interval, pairing rules."""

import itertools
import math

import numpy as np
import pytest

from nnunet_cl.errors import NnunetClError
from nnunet_cl.tools.paired_stats import bootstrap_interval, compare, effect, fold_t_interval, paired_differences


def as_folds(*per_fold):
    """Differences given per fold -> {fold: {case: method score}}, {fold: {case: 0}}."""
    method = {f: {f"c{i}": float(v) for i, v in enumerate(values)} for f, values in enumerate(per_fold)}
    reference = {f: {c: 0.0 for c in cases} for f, cases in method.items()}
    return method, reference


def exact_bootstrap_quantiles(per_fold, tail=0.025):
    """Slow reference: every resample of every fold enumerated, each equally likely; inverse-CDF quantiles."""
    fold_distributions = []
    for values in per_fold:
        n = len(values)
        fold_distributions.append([np.mean([values[i] for i in draw])
                                   for draw in itertools.product(range(n), repeat=n)])
    statistics = np.round([np.mean(combo) for combo in itertools.product(*fold_distributions)], 12)
    atoms, counts = np.unique(statistics, return_counts=True)
    return atoms, np.cumsum(counts) / len(statistics)


def test_constant_difference_gives_a_zero_width_interval():
    result = compare(*as_folds([2.5, 2.5, 2.5], [2.5, 2.5]))
    assert result.effect == pytest.approx(2.5)
    assert (result.bootstrap_low, result.bootstrap_high) == pytest.approx((2.5, 2.5))
    assert (result.fold_low, result.fold_high) == pytest.approx((2.5, 2.5))
    assert result.folds == (0, 1) and result.cases == 5


def test_three_cases_by_hand():
    # Differences 0, 0, 3: a resample's mean is k (the number of 3s drawn), k ~ Binomial(3, 1/3):
    # P(k=0) = 8/27 > 2.5 % and P(k <= 2) = 26/27 < 97.5 %, so the 95 % interval is [0, 3]; the effect is 1.
    differences = paired_differences(*as_folds([0.0, 0.0, 3.0]))
    assert effect(differences) == pytest.approx(1.0)
    assert bootstrap_interval(differences) == pytest.approx((0.0, 3.0))


def test_bootstrap_matches_exact_enumeration():
    per_fold = [[0.0, 1.0, 5.0], [2.0, -1.0]]
    atoms, cdf = exact_bootstrap_quantiles(per_fold)
    exact_low = atoms[int(np.searchsorted(cdf, 0.025))]
    exact_high = atoms[int(np.searchsorted(cdf, 0.975))]
    # Only compare where the quantiles sit well inside an atom of the discrete distribution.
    for q in (0.025, 0.975):
        assert np.min(np.abs(cdf - q)) > 0.01
    low, high = bootstrap_interval(paired_differences(*as_folds(*per_fold)), resamples=50_000, seed=3)
    assert (low, high) == pytest.approx((exact_low, exact_high), abs=1e-9)


def test_resampling_is_stratified_by_fold():
    # One fold with one case (+10), one with three (0): every stratified resample has effect (10 + 0) / 2 = 5.
    # Pooling the four cases would give resamples from 0 to 10.
    differences = paired_differences(*as_folds([10.0], [0.0, 0.0, 0.0]))
    assert effect(differences) == pytest.approx(5.0)
    assert bootstrap_interval(differences) == pytest.approx((5.0, 5.0))


def test_fold_t_interval_by_hand():
    # Fold means 1, 2, 3: mean 2, sd 1, t(0.975, df=2) = 4.302652729911275.
    half = 4.302652729911275 / math.sqrt(3)
    differences = paired_differences(*as_folds([1.0, 1.0], [2.0], [3.0, 3.0, 3.0]))
    assert fold_t_interval(differences) == pytest.approx((2 - half, 2 + half))
    assert all(math.isnan(v) for v in fold_t_interval(paired_differences(*as_folds([1.0, 2.0]))))


def test_pairing_uses_shared_folds_and_refuses_mismatched_cases():
    method, reference = as_folds([1.0, 2.0], [3.0, 4.0])
    del reference[1]
    result = compare(method, reference)
    assert result.folds == (0,) and result.effect == pytest.approx(1.5)
    assert compare(method, {}).folds == () and math.isnan(compare(method, {}).effect)
    reference = {0: {"c0": 0.0, "other": 0.0}, 1: reference[0]}
    with pytest.raises(NnunetClError) as error:
        paired_differences(method, reference)
    message = str(error.value)
    assert "\n" not in message and "cannot pair fold 0" in message and "c1" in message and "other" in message


def test_differences_are_method_minus_reference_case_by_case():
    method = {0: {"a": 0.9, "b": 0.5}}
    reference = {0: {"b": 0.7, "a": 0.6}}
    assert paired_differences(method, reference)[0] == pytest.approx([0.3, -0.2])
