"""``nnunet_cl show-superpixels``: look at SuperCL's superpixels and measure how well they follow the labels.

Writes a PNG grid of slices with the superpixel boundaries (yellow) and, where the dataset has labels,
the label contours, and prints the leakage over every slice of the dataset: the share of superpixels
that contain more than one label (cross a label boundary), overall and among the superpixels that
touch a foreground label. This is the sanity check of SuperCL's core assumption (pixels of one
superpixel belong together): ILCP treats every pixel pair inside a leaking superpixel as positive.

Slices shown: ``--num-slices`` cases spread evenly over the dataset; in each, the slice with the most
foreground (the middle slice when a case has no labels).
"""

from __future__ import annotations

import os

import numpy as np

from nnunet_cl.pretraining.superpixels import leakage_counts
from nnunet_cl.tools.superpixels import add_superpixel_arguments, supercl_superpixels


def whole_case(slices, case_index: int) -> tuple:
    """``(image (C, Z, Y, X), labels (Z, Y, X) with -1 -> 0)`` of a case, read with nnU-Net's dataset class."""
    data, seg, _, _ = slices.dataset.load_case(slices.case_ids[case_index])
    labels = np.asarray(seg[0]) if seg is not None else np.zeros(slices.shapes[case_index][1:], np.int16)
    return np.asarray(data), np.maximum(labels, 0)


def dataset_leakage(slices, cache) -> np.ndarray:
    """Summed :func:`leakage_counts` over every slice of every case."""
    totals = np.zeros(4, dtype=np.int64)
    for case_index in range(len(slices.case_ids)):
        _, labels = whole_case(slices, case_index)
        superpixels = np.asarray(cache.volume(case_index))
        for z in range(labels.shape[0]):
            totals += leakage_counts(superpixels[z], labels[z])
    return totals


def describe_leakage(totals: np.ndarray, num_slices: int) -> str:
    superpixels, crossing, foreground, foreground_crossing = (int(t) for t in totals)
    text = (f"superpixel leakage: {crossing / max(superpixels, 1):.1%} of the {superpixels} superpixels of "
            f"{num_slices} slices ({superpixels / max(num_slices, 1):.1f} per slice) cross a label boundary")
    if foreground:
        text += (f"; of the {foreground} superpixels touching a foreground label, "
                 f"{foreground_crossing / foreground:.1%} also contain another label")
    else:
        text += " (the dataset has no foreground labels)"
    return text


def render_grid(slices, cache, case_indices, path: str, columns: int = 4) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    from nnunet_cl.atomic import atomic_target

    rows = int(np.ceil(len(case_indices) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, case_index in zip(axes.ravel(), case_indices):
        image, labels = whole_case(slices, case_index)
        foreground = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1)
        z = int(foreground.argmax()) if foreground.any() else labels.shape[0] // 2
        superpixels = np.asarray(cache.volume(case_index)[z])
        n, crossing, _, _ = leakage_counts(superpixels, labels[z])
        # Drawn at an integer upscale (nearest) so one-pixel boundaries stay thin on small slices.
        scale = max(1, 256 // max(superpixels.shape))
        def upscale(a):
            return np.kron(a, np.ones((scale, scale), dtype=a.dtype))
        ax.imshow(upscale(image[0, z]), cmap="gray", interpolation="nearest")
        overlay = np.zeros((superpixels.shape[0] * scale, superpixels.shape[1] * scale, 4))
        overlay[find_boundaries(upscale(superpixels), mode="inner")] = (1.0, 0.85, 0.0, 0.7)
        ax.imshow(overlay, interpolation="nearest")
        for k in np.unique(labels[z]):
            if k > 0:
                ax.contour(upscale((labels[z] == k).astype(np.uint8)), levels=[0.5], colors=[colours(int(k) % 10)],
                           linewidths=1.2)
        ax.set_title(f"{slices.case_ids[case_index]} z={z}\n{n} superpixels, {crossing / max(n, 1):.0%} cross labels",
                     fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def add_show_superpixels_parser(subparsers) -> None:
    p = subparsers.add_parser("show-superpixels", help="PNG of SuperCL's superpixels with label contours, and "
                                                       "the share of superpixels crossing a label boundary")
    add_superpixel_arguments(p)   # method options via --option KEY=VALUE here: -o is the PNG
    p.add_argument("-o", "--output", dest="output", required=True, metavar="FILE.png", help="PNG to write")
    p.add_argument("--num-slices", type=int, default=8, help="slices in the grid (default 8)")
    p.set_defaults(func=run_show_superpixels)


def run_show_superpixels(args) -> None:
    from nnunet_cl.errors import NnunetClError
    from nnunet_cl.validation import positive_int, writable_file_path

    if not args.output.lower().endswith(".png"):
        raise NnunetClError(f"--output {args.output!r} must be a .png file")
    writable_file_path(args.output, "--output")
    positive_int(args.num_slices, "--num-slices")
    _, slices, params, cache = supercl_superpixels(args.dataset, args.plans, dict(args.options), args.num_processes)
    shown = np.unique(np.linspace(0, len(slices.case_ids) - 1, min(args.num_slices, len(slices.case_ids))).round()
                      .astype(int))
    render_grid(slices, cache, list(shown), args.output)
    print(f"wrote {args.output} ({len(shown)} slices, {params.n_segments} superpixels per patch, cache {cache.folder})")
    print(describe_leakage(dataset_leakage(slices, cache), slices.num_slices))
