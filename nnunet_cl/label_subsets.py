"""The labelled subset of a fold for label-limited training.

One rule, used by every trainer and by the label-aware pre-training, so nobody ever draws a second,
different subset: shuffle the fold's *sorted* training cases with a fixed seed (12345 + fold) and take
a prefix of ``max(1, round(fraction * n))`` cases. Prefixes of one permutation make the subsets
nested (10 % is inside 25 % is inside 100 %).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nnunet_cl.errors import NnunetClError

SUBSET_SEED = 12345


def check_label_fraction(fraction: float) -> float:
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise NnunetClError(f"label fraction {fraction!r} is not a number; use a value in (0, 1], e.g. 0.1")
    if not (0.0 < fraction <= 1.0):
        raise NnunetClError(f"label fraction {fraction} is outside (0, 1]; use e.g. 0.1 for 10 % of the labels")
    return fraction


def n_labeled_cases(n_train: int, fraction: float) -> int:
    fraction = check_label_fraction(fraction)
    if n_train < 1:
        raise NnunetClError("the fold has no training cases; check splits_final.json of the dataset")
    return min(n_train, max(1, int(round(fraction * n_train))))


def labeled_subset(train_cases: Sequence[str], fraction: float, fold) -> list[str]:
    """Deterministic, nested labelled subset of ``train_cases`` (returned sorted)."""
    cases = sorted(train_cases)
    n = n_labeled_cases(len(cases), fraction)
    fold_offset = 0 if fold == "all" else int(fold)
    permutation = np.random.RandomState(SUBSET_SEED + fold_offset).permutation(len(cases))
    return sorted(cases[i] for i in permutation[:n])
