"""The training cases of an nnU-Net fold, outside a trainer (label-aware pre-training needs them).

Mirrors ``nnUNetTrainer.do_split`` of nnU-Net 2.8 exactly, so pre-training and the later
``nnUNetv2_train`` see the same cases: ``fold == "all"`` -> every case; otherwise
``splits_final.json`` of the preprocessed dataset, created if missing exactly as nnU-Net creates it
(``generate_crossval_split(sorted ids, seed=12345, n_splits=5)``; written atomically here); a fold
beyond the file's folds -> nnU-Net's seeded random 80:20 split.
"""

from __future__ import annotations

import json
import os

import numpy as np

from nnunet_cl.atomic import atomic_write_json
from nnunet_cl.errors import NnunetClError
from nnunet_cl.label_subsets import labeled_subset

SPLIT_SEED = 12345


def parse_fold(fold):
    """``0``, ``"0"`` -> 0; ``"all"`` -> ``"all"`` (as ``nnUNetv2_train``)."""
    if str(fold) == "all":
        return "all"
    try:
        value = int(fold)
    except (TypeError, ValueError):
        value = -1
    if value < 0:
        raise NnunetClError(f"fold {fold!r} must be a non-negative integer or 'all' (as for nnUNetv2_train)")
    return value


def check_fold_exists(preprocessed_folder: str, fold) -> None:
    """A numbered fold must be one of ``splits_final.json``'s, or of the 5 nnU-Net creates when it is missing.

    nnU-Net itself falls back to a random 80:20 split for a fold beyond the file; a typo such as ``-f 7``
    would then silently train on another split than the user meant.
    """
    fold = parse_fold(fold)
    if fold == "all":
        return
    path = os.path.join(preprocessed_folder, "splits_final.json")
    n_folds, source = 5, "nnU-Net's default split (splits_final.json is created at the first training)"
    if os.path.isfile(path):
        with open(path) as f:
            n_folds, source = len(json.load(f)), path
    if fold >= n_folds:
        raise NnunetClError(f"fold {fold} does not exist: {source} has {n_folds} folds (0-{n_folds - 1}); "
                            "use one of them or 'all'")


def load_or_create_splits(preprocessed_folder: str, case_ids) -> list:
    path = os.path.join(preprocessed_folder, "splits_final.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    splits = generate_crossval_split(list(np.sort(list(case_ids))), seed=SPLIT_SEED, n_splits=5)
    atomic_write_json(splits, path)
    return splits


def fold_training_cases(preprocessed_folder: str, data_folder: str, fold) -> list:
    """The fold's training cases (before any label fraction), as ``nnUNetTrainer.do_split`` returns them."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    fold = parse_fold(fold)
    case_ids = list(infer_dataset_class(data_folder).get_identifiers(data_folder))
    if fold == "all":
        return sorted(case_ids)
    splits = load_or_create_splits(preprocessed_folder, case_ids)
    if fold < len(splits):
        return list(splits[fold]["train"])
    keys = np.sort(case_ids)
    rnd = np.random.RandomState(seed=SPLIT_SEED + fold)
    chosen = rnd.choice(len(keys), int(len(keys) * 0.8), replace=False)
    return [str(keys[i]) for i in chosen]


def labeled_cases_of_fold(preprocessed_folder: str, data_folder: str, fraction: float, fold) -> list:
    """The labelled subset the ``_10pct`` / ``_25pct`` trainers of this fold use (one rule: ``labeled_subset``)."""
    return labeled_subset(fold_training_cases(preprocessed_folder, data_folder, fold), fraction, parse_fold(fold))
