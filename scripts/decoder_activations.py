"""What a loaded decoder feeds into each decoder stage, on real slices (markdown table).

    python scripts/decoder_activations.py -d 4 CHECKPOINT [CHECKPOINT ...] [--parts all|encoder]

Each stage of nnU-Net's U-Net decoder concatenates the transposed convolution's upsampled features ("up") with
the encoder's skip features of that resolution and passes both through a conv + InstanceNorm. The transposed
convolutions are not followed by a normalisation, so a loaded one whose output is much larger (or smaller)
than the skip features decides how much of the skip's fine detail the first conv of the stage can still use.
Per decoder stage the table gives RMS(up) / RMS(skip) = their ratio, over ``--slices`` preprocessed slices
(drawn uniformly, seed 0), for a network freshly initialised by nnU-Net (seed 0) and for the same network
with each checkpoint's pre-trained part loaded as an Init trainer loads it (``--parts``: every pre-trained
prefix, or only the encoder, as ``nnUNet_cl_pretrained_parts``).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from nnunet_cl.checkpoint import load_checkpoint, load_pretrained_part
from nnunet_cl.nnunet_context import add_dataset_arguments, load_dataset_context
from nnunet_cl.pretraining.slices import PreprocessedSlices
from nnunet_cl.trainers.pretrained_init import PARTS, selected_prefixes
from nnunet_cl.validation import positive_int


def fresh_network(context, seed: int = 0):
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return context.build_network()
    finally:
        torch.random.set_rng_state(state)


def rms(tensor: torch.Tensor) -> float:
    return float(tensor.double().pow(2).mean().sqrt())


@torch.no_grad()
def stage_inputs(network, images: torch.Tensor) -> list:
    """Per decoder stage ``(RMS of the upsampled features, RMS of the skip features)``."""
    decoder = network.decoder
    upsampled = {}
    hooks = [conv.register_forward_hook(lambda module, args, output, s=s: upsampled.__setitem__(s, output))
             for s, conv in enumerate(decoder.transpconvs)]
    try:
        skips = network.encoder(images)
        decoder(skips)
    finally:
        for hook in hooks:
            hook.remove()
    return [(rms(upsampled[s]), rms(skips[-(s + 2)])) for s in range(len(decoder.stages))]


def markdown_table(columns: list) -> str:
    lines = ["| decoder stage | " + " | ".join(title for title, _ in columns) + " |", "|" + "---|" * (1 + len(columns))]
    for s in range(len(columns[0][1])):
        cells = [f"{up:.3g} / {skip:.3g} = {up / skip:.3g}" for up, skip in (values[s] for _, values in columns)]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser, "dataset id or name (its plans and slices)")
    parser.add_argument("--parts", default="all", choices=PARTS,
                        help="what an Init trainer loads: every pre-trained prefix (default) or only the encoder")
    parser.add_argument("--slices", default=64, type=int, help="slices drawn for the statistics (default 64)")
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    args = parser.parse_args(argv)
    positive_int(args.slices, "--slices")
    context = load_dataset_context(args.dataset, args.plans, args.configuration)
    checkpoints = [(path, load_checkpoint(path)) for path in args.checkpoints]
    slices = PreprocessedSlices(context.data_folder, context.patch_size)
    images = torch.from_numpy(slices.images(slices.sample_windows(args.slices, np.random.default_rng(0))))
    columns = [("nnU-Net init", stage_inputs(fresh_network(context), images))]
    for path, checkpoint in checkpoints:
        network = fresh_network(context)
        loaded = load_pretrained_part(network, checkpoint, path,
                                      prefixes=selected_prefixes(checkpoint["pretrained_prefixes"], args.parts))
        columns.append((f"{checkpoint['method']} ({args.parts})", stage_inputs(network, images)))
        print(f"{checkpoint['method']}: {os.path.abspath(path)}, {len(loaded)} tensors loaded")
    print(f"\n{args.slices} slices of {context.dataset_name}; cells: RMS(up) / RMS(skip) = ratio\n")
    print(markdown_table(columns))


if __name__ == "__main__":
    main()
