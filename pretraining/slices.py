"""2D slices of an nnU-Net preprocessed 2d dataset, read with nnU-Net's own dataset classes.

nnU-Net's 2d configuration stores whole 3D volumes ``(C, Z, Y, X)`` resampled in plane; a 2D sample
is one z-slice. Every slice keeps its normalised position in its volume, ``(z + 0.5) / depth`` in
(0, 1), which position-based losses (PCL) need. Slices are cropped (random window) or zero-padded
(centred) to the plan's 2d patch size; :class:`SliceWindow` records the window so any other map of
the same slice (labels, superpixels) can be cropped identically.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from nnunet_cl.errors import NnunetClError


@dataclass(frozen=True)
class SliceWindow:
    case_index: int
    z: int
    position: float
    src: tuple      # (y0, y1, x0, x1) read from the slice
    dst: tuple      # (y0, y1, x0, x1) written into the patch


# Case ids drawn by ``sample_windows`` while a batch is made: the loader names them when the batch fails.
_drawn_cases: ContextVar[Optional[list]] = ContextVar("drawn_cases", default=None)


@contextmanager
def recording_drawn_cases():
    """Inside the block, ``sample_windows`` of every ``PreprocessedSlices`` appends the case ids it draws to
    the yielded list (in draw order)."""
    cases: list = []
    token = _drawn_cases.set(cases)
    try:
        yield cases
    finally:
        _drawn_cases.reset(token)


class PreprocessedSlices:
    def __init__(self, data_folder: str, patch_size: Sequence[int], case_ids: Optional[Sequence[str]] = None):
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        self.dataset_class = infer_dataset_class(data_folder)
        available = list(self.dataset_class.get_identifiers(data_folder))
        if case_ids is None:
            case_ids = available
        missing = sorted(set(case_ids) - set(available))
        if missing:
            raise NnunetClError(f"cases {missing[:5]} are not in {data_folder}; re-run nnUNetv2_plan_and_preprocess")
        if not case_ids:
            raise NnunetClError(f"no preprocessed cases in {data_folder}; run nnUNetv2_plan_and_preprocess -c 2d")
        self.data_folder = data_folder
        self.case_ids = sorted(case_ids)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.dataset = self.dataset_class(data_folder, self.case_ids)
        self._cache: dict = {}
        self.shapes = [tuple(self._case(i)[0].shape) for i in range(len(self.case_ids))]  # (C, Z, Y, X)
        self.depths = np.array([s[1] for s in self.shapes])
        self.num_channels = self.shapes[0][0]

    def _case(self, index: int):
        # nnU-Net's blosc2 arrays are memory-mapped and decompress only the chunks a slice touches.
        if index not in self._cache:
            data, seg, _, _ = self.dataset.load_case(self.case_ids[index])
            self._cache[index] = (data, seg)
        return self._cache[index]

    def with_patch_size(self, patch_size: Sequence[int]) -> "PreprocessedSlices":
        """The same slices read at another patch size (e.g. JCL's stride-aligned crop); shares the
        loaded-case cache, so nothing is read twice."""
        other = copy.copy(self)
        other.patch_size = tuple(int(p) for p in patch_size)
        return other

    @property
    def num_slices(self) -> int:
        return int(self.depths.sum())

    def all_slices(self):
        """Every (case_index, z) pair, in order."""
        for c, depth in enumerate(self.depths):
            for z in range(depth):
                yield c, z

    def window(self, case_index: int, z: int, rng: np.random.Generator) -> SliceWindow:
        _, _, height, width = self.shapes[case_index]
        src, dst = [], []
        for size, patch in ((height, self.patch_size[0]), (width, self.patch_size[1])):
            if size >= patch:
                start = int(rng.integers(0, size - patch + 1))
                src.append((start, start + patch)); dst.append((0, patch))
            else:
                offset = (patch - size) // 2
                src.append((0, size)); dst.append((offset, offset + size))
        position = (z + 0.5) / self.depths[case_index]
        return SliceWindow(case_index, z, float(position), src[0] + src[1], dst[0] + dst[1])

    def sample_windows(self, n: int, rng: np.random.Generator) -> list[SliceWindow]:
        """Uniform over slices: a case with probability proportional to its depth, then a slice."""
        slice_ids = rng.integers(0, self.num_slices, size=n)
        bounds = np.cumsum(self.depths)
        cases = np.searchsorted(bounds, slice_ids, side="right")
        zs = slice_ids - np.concatenate([[0], bounds])[cases]
        drawn = _drawn_cases.get()
        if drawn is not None:
            drawn.extend(self.case_ids[int(c)] for c in cases)
        return [self.window(int(c), int(z), rng) for c, z in zip(cases, zs)]

    @staticmethod
    def crop(slice_2d: np.ndarray, window: SliceWindow, patch_size, fill=0) -> np.ndarray:
        """Crop/pad a ``(..., Y, X)`` array of the window's slice to the patch."""
        out = np.full(slice_2d.shape[:-2] + tuple(patch_size), fill, dtype=slice_2d.dtype)
        sy0, sy1, sx0, sx1 = window.src
        dy0, dy1, dx0, dx1 = window.dst
        out[..., dy0:dy1, dx0:dx1] = slice_2d[..., sy0:sy1, sx0:sx1]
        return out

    def image(self, window: SliceWindow) -> np.ndarray:
        data, _ = self._case(window.case_index)
        return self.crop(np.asarray(data[:, window.z], dtype=np.float32), window, self.patch_size)

    def segmentation(self, window: SliceWindow) -> np.ndarray:
        """Label patch; nnU-Net's -1 (outside the nonzero mask) becomes background 0."""
        _, seg = self._case(window.case_index)
        patch = self.crop(np.asarray(seg[:, window.z]), window, self.patch_size)
        return np.where(patch < 0, 0, patch).astype(np.int16)

    def images(self, windows: Sequence[SliceWindow]) -> np.ndarray:
        return np.stack([self.image(w) for w in windows])
