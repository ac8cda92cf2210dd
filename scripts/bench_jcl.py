#!/usr/bin/env python
"""Benchmark of JCL (not a test): measured ratios in one run.

1. One JCL pre-training step (``Pretrainer.train_step``: forward of both branches, the three loss terms,
   backward, clipping, SGD) against one supervised nnU-Net step (``nnUNetTrainer.train_step``: the same
   plans' network with deep supervision, DC+CE loss, backward, clipping, SGD) at the same batch size,
   on real slices of the dataset. Steps alternate so both see the same machine load; medians reported.
2. JCL's dense loss L_d vectorised over locations (``location_wise_info_nce``) against the public
   code's per-location Python loop (one loss call per location, then the mean), forward + backward,
   at the Hippocampus JCL size and at MACL's CHD size (512^2 slices -> 32x32 maps, 2x16 vectors).

    nnUNet_raw=... nnUNet_preprocessed=... python scripts/bench_jcl.py -d 4

Needs a dataset planned and preprocessed for 2d. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_cl.nnunet_context import add_plans_argument


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_location_loop(pixel, mask, temperature):
    """The public code's L_d: one position-based SupCon call per location, averaged."""
    from nnunet_cl.losses import multi_positive_info_nce
    losses = [multi_positive_info_nce(pixel[:, :, y, x], mask, temperature=temperature)
              for y in range(pixel.shape[2]) for x in range(pixel.shape[3])]
    return torch.stack(losses).mean()


def bench_dense_loss(n_rows, dim, height, width, repeats, seed=0):
    from nnunet_cl.losses.dense_positional import location_wise_info_nce
    from nnunet_cl.masks import positional_positive_mask

    g = torch.Generator().manual_seed(seed)
    pixel = torch.randn(n_rows, dim, height, width, generator=g).requires_grad_(True)
    mask = positional_positive_mask(torch.rand(n_rows // 2, generator=g), n_views=2, threshold=0.1)

    def run(loss_fn):
        pixel.grad = None
        loss = loss_fn(pixel, mask, 0.1)
        loss.backward()
        return loss

    vectorised, looped = run(location_wise_info_nce).detach(), run(per_location_loop).detach()
    assert torch.allclose(vectorised, looped, rtol=1e-5), (float(vectorised), float(looped))
    times = {"vectorised": [], "loop": []}
    for _ in range(repeats):
        times["vectorised"].append(timed(lambda: run(location_wise_info_nce)))
        times["loop"].append(timed(lambda: run(per_location_loop)))
    v, lp = statistics.median(times["vectorised"]), statistics.median(times["loop"])
    print(f"  L_d [{n_rows} vectors x {dim} dims x {height}x{width} locations], forward+backward: "
          f"vectorised {v * 1e3:.2f} ms, per-location loop {lp * 1e3:.2f} ms -> {lp / v:.1f}x faster "
          f"(loss {float(vectorised):.5f} = {float(looped):.5f})")
    return lp / v


def supervised_batch(trainer, slices, batch_size, rng):
    windows = slices.sample_windows(batch_size, rng)
    data = torch.from_numpy(slices.images(windows))
    seg = torch.from_numpy(np.stack([slices.segmentation(w) for w in windows]).astype(np.float32))
    patch = seg.shape[2:]
    targets = [F.interpolate(seg, size=[round(p * s) for p, s in zip(patch, scale)], mode="nearest")
               for scale in trainer._get_deep_supervision_scales()]
    return {"data": data, "target": targets}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset", default="4")
    add_plans_argument(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="timed steps of each kind (after 2 warm-up steps)")
    p.add_argument("--loss-repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from nnunet_cl.nnunet_context import load_dataset_context
    from nnunet_cl.pretraining.engine import PretrainConfig, Pretrainer
    from nnunet_cl.pretraining.slices import PreprocessedSlices
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    context = load_dataset_context(args.dataset, args.plans)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dataset {context.dataset_name}, "
          f"plan patch {context.patch_size}, batch {args.batch_size}")

    print("L_d, vectorised vs per-location loop:")
    ratio_hippocampus = bench_dense_loss(2 * args.batch_size, 128, 8, 8, args.loss_repeats)
    ratio_chd = bench_dense_loss(32, 128, 32, 32, max(1, args.loss_repeats // 5))

    with tempfile.TemporaryDirectory() as results:
        os.environ["nnUNet_results"] = results    # the trainer and the pre-trainer write their folders here
        pretrainer = Pretrainer(PretrainConfig(dataset=args.dataset, method="jcl", plans=args.plans,
                                               batch_size=args.batch_size, epochs=1, iters_per_epoch=1))
        method = pretrainer.method
        trainer = nnUNetTrainer(dict(copy.deepcopy(context.plans), continue_training=False), context.configuration, 0,
                                context.dataset_json, device=torch.device("cpu"))
        trainer.initialize()
        plan_slices = PreprocessedSlices(context.data_folder, context.patch_size)
        rng = np.random.default_rng(0)
        print(f"JCL: k={method.k}, crop {method.crop} (plan patch rounded up to a multiple of "
              f"{[t * u for t, u in zip(method.total_stride, method.upsampling)]}), dominant view "
              f"{method.dominant_size}, pre-trained prefixes {list(method.pretrained_prefixes)}")

        times = {"jcl": [], "supervised": [], "jcl_batch": []}
        pretrainer.network.train(); method.train(); trainer.network.train()
        for step in range(args.steps + 2):
            start = time.perf_counter()
            jcl_batch = method.make_batch(pretrainer.slices, args.batch_size, rng)
            batch_time = time.perf_counter() - start
            sup_batch = supervised_batch(trainer, plan_slices, args.batch_size, rng)
            jcl_time = timed(lambda: pretrainer.train_step(jcl_batch))
            sup_time = timed(lambda: trainer.train_step(sup_batch))
            if step >= 2:
                times["jcl"].append(jcl_time); times["supervised"].append(sup_time)
                times["jcl_batch"].append(batch_time)
        jcl, sup = statistics.median(times["jcl"]), statistics.median(times["supervised"])
        print(f"step time (median of {args.steps}, forward+backward+SGD, batch {args.batch_size}): JCL {jcl * 1e3:.0f} ms, "
              f"supervised nnU-Net {sup * 1e3:.0f} ms -> JCL / supervised = {jcl / sup:.2f}; "
              f"JCL batch preparation (augmentation, CPU) {statistics.median(times['jcl_batch']) * 1e3:.0f} ms")
    print(f"summary: L_d speed-up {ratio_hippocampus:.1f}x (Hippocampus size), {ratio_chd:.1f}x (CHD size); "
          f"JCL step = {jcl / sup:.2f} x supervised step")


if __name__ == "__main__":
    main()
