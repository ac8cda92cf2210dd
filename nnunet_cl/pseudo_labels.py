"""Pseudo-label rounds on disk, their agreement, and an nnU-Net dataset view that serves them.

Layout in the trainer's fold folder::

    pseudo_labels/round_001/<case>.npy                    (1, Z, Y, X) labels in preprocessed space
    pseudo_labels/round_001/<case>_class_locations.pkl    foreground locations of the *pseudo*-labels
    pseudo_labels/round_001/manifest.json                 written last: the round is complete
    pseudo_labels/rounds.json                             every round: iteration, cases, agreement

Every file is written atomically; a round counts only once its manifest exists, so a crash while
predicting never leaves a half-written round in use. Only the current and the previous round are kept
(the previous one for the agreement of the next re-estimation). ``.npy`` (uncompressed) so the loader
memory-maps and reads only the slice it crops.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np

from nnunet_cl.atomic import atomic_target, atomic_write_json


def label_dtype(max_label: int):
    return np.int8 if max_label <= 127 else np.int16


class PseudoLabelStore:
    def __init__(self, folder: str):
        self.folder = folder

    def round_folder(self, round_number: int) -> str:
        return os.path.join(self.folder, f"round_{round_number:03d}")

    def is_complete(self, round_number: int) -> bool:
        return round_number > 0 and os.path.isfile(os.path.join(self.round_folder(round_number), "manifest.json"))

    def start_round(self, round_number: int) -> None:
        shutil.rmtree(self.round_folder(round_number), ignore_errors=True)
        os.makedirs(self.round_folder(round_number))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def write_case(self, round_number: int, case: str, labels: np.ndarray, class_locations: dict) -> None:
        base = os.path.join(self.round_folder(round_number), case)
        with atomic_target(base + ".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, labels)
        with atomic_target(base + "_class_locations.pkl") as tmp:
            with open(tmp, "wb") as f:
                pickle.dump(class_locations, f)

    def labels(self, round_number: int, case: str, mmap: bool = True) -> np.ndarray:
        return np.load(os.path.join(self.round_folder(round_number), case + ".npy"), mmap_mode="r" if mmap else None)

    def class_locations(self, round_number: int, case: str) -> dict:
        with open(os.path.join(self.round_folder(round_number), case + "_class_locations.pkl"), "rb") as f:
            return pickle.load(f)

    def finish_round(self, round_number: int, info: dict) -> None:
        """Mark the round complete, append it to rounds.json and drop rounds older than the previous one."""
        atomic_write_json(dict(info, round=round_number), os.path.join(self.round_folder(round_number),
                                                                       "manifest.json"))
        history = self.history()
        history = [h for h in history if h["round"] < round_number] + [dict(info, round=round_number)]
        atomic_write_json(history, os.path.join(self.folder, "rounds.json"))
        for name in os.listdir(self.folder):
            if name.startswith("round_") and os.path.isdir(os.path.join(self.folder, name)) \
                    and int(name.split("_")[1]) < round_number - 1:
                shutil.rmtree(os.path.join(self.folder, name), ignore_errors=True)

    def history(self) -> list:
        path = os.path.join(self.folder, "rounds.json")
        if not os.path.isfile(path):
            return []
        with open(path) as f:
            return json.load(f)


class RoundAgreement:
    """Agreement of a new pseudo-label round with the previous one, accumulated case by case:
    the fraction of equal voxels and the Dice of each foreground class between the two rounds."""

    def __init__(self, foreground_labels):
        self.labels = list(foreground_labels)
        self.equal = 0
        self.total = 0
        self.intersection = np.zeros(len(self.labels))
        self.sizes = np.zeros(len(self.labels))

    def update(self, previous: np.ndarray, current: np.ndarray) -> None:
        previous, current = np.asarray(previous), np.asarray(current)
        self.equal += int((previous == current).sum())
        self.total += current.size
        for i, label in enumerate(self.labels):
            in_previous, in_current = previous == label, current == label
            self.intersection[i] += np.logical_and(in_previous, in_current).sum()
            self.sizes[i] += in_previous.sum() + in_current.sum()

    def summary(self) -> dict:
        dice = {str(label): (2 * self.intersection[i] / self.sizes[i] if self.sizes[i] > 0 else None)
                for i, label in enumerate(self.labels)}
        defined = [d for d in dice.values() if d is not None]
        return {"voxel_agreement": self.equal / self.total if self.total else None,
                "dice_per_class": dice, "mean_foreground_dice": float(np.mean(defined)) if defined else None}


class PseudoLabeledDataset:
    """An nnU-Net dataset (duck-typed for ``nnUNetDataLoader``) over unlabelled cases whose segmentation
    is a pseudo-label round. The ground truth of these cases is never returned: ``load_case`` drops the
    preprocessed segmentation and replaces the ``class_locations`` (foreground oversampling) by those of
    the pseudo-labels."""

    def __init__(self, base_dataset, store: PseudoLabelStore, round_number: int):
        self.base = base_dataset
        self.identifiers = list(base_dataset.identifiers)
        self.store = store
        self.round_number = round_number

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def load_case(self, identifier):
        data, _ground_truth, seg_prev, properties = self.base.load_case(identifier)
        seg = self.store.labels(self.round_number, identifier)
        properties = dict(properties, class_locations=self.store.class_locations(self.round_number, identifier))
        return data, seg, seg_prev, properties
