"""A small generated nnU-Net dataset: for the tests, and the stand-in when no MSD task folder is given.

Each case is a 3D volume with two touching ellipsoids (labels 1 and 2) whose size changes along z,
on a smooth noisy background, so that slice position, local texture and labels all carry signal.
"""

from __future__ import annotations

import json
import os

import numpy as np


def make_synthetic_dataset(raw_root: str, dataset_id: int = 990, name: str = "Synth", num_cases: int = 10,
                           shape=(12, 48, 40), num_test_cases: int = 2, seed: int = 0) -> str:
    import SimpleITK as sitk

    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    for i in range(num_cases + num_test_cases):
        cz, cy, cx = (np.array(shape) / 2) + rng.uniform(-2, 2, 3)
        radius = np.array([shape[0] / 2.5, shape[1] / 4, shape[2] / 4]) * rng.uniform(0.8, 1.2)
        d = ((z - cz) / radius[0]) ** 2 + ((y - cy) / radius[1]) ** 2 + ((x - cx) / radius[2]) ** 2
        label = np.zeros(shape, np.uint8)
        label[d < 1] = 1
        label[(d < 1) & (x > cx)] = 2
        scale = rng.uniform(50, 500)  # MSD-like: per-case intensity scales differ
        image = (scale * (1 + 0.5 * label + 0.2 * np.sin(y / 3) + 0.1 * rng.standard_normal(shape))).astype(np.float32)
        case = f"{name.lower()}_{i:03d}"
        itk_image = sitk.GetImageFromArray(image)
        itk_image.SetSpacing((1.0, 1.0, 2.0))
        if i < num_cases:
            sitk.WriteImage(itk_image, os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
            itk_label = sitk.GetImageFromArray(label)
            itk_label.CopyInformation(itk_image)
            sitk.WriteImage(itk_label, os.path.join(folder, "labelsTr", f"{case}.nii.gz"))
        else:
            sitk.WriteImage(itk_image, os.path.join(folder, "imagesTs", f"{case}_0000.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "left": 1, "right": 2},
                   "numTraining": num_cases, "file_ending": ".nii.gz", "name": name}, f, indent=2)
    return folder
