"""SuperCL speed measurements (ratios in one run; no timed assertions anywhere else).

    nnUNet_raw=... nnUNet_preprocessed=... python scripts/bench_supercl.py -d 4 [--batch-size 32]

Needs a dataset planned and preprocessed for 2d. Writes nothing into nnUNet_results (a temp folder is
used); the superpixel timing builds a fresh cache in a temp folder, the step timing uses (and if
needed builds) the real cache. Reports:

1. superpixel cache: wall and CPU time per slice-equivalent of 256^2 pixels (2 processes), on the
   dataset's slices and on slices resized to 256^2; SLIC with 3 / 5 / 10 iterations (count, leakage);
2. one SuperCL pre-training step (``Pretrainer.train_step``) vs one supervised nnU-Net step
   (``nnUNetTrainer.train_step``, same network and batch), the share of the three loss terms, the
   per-term cost, and the batch preparation (augmentation + superpixel crops) on its own;
3. ILCP vectorised (one batched kernel call, equal-label form) vs a naive loop over images and pixels
   and vs the kernel's mask form, batch 16, 1024 pixels per image (32 x 32, 128 channels: the
   paper's setting);
4. CCL components per batch with and without the image's own views in the neighbour search.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ["nnUNet_results"] = tempfile.mkdtemp(prefix="bench_supercl_results_")  # before nnU-Net reads it

import numpy as np  # noqa: E402
import torch  # noqa: E402


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(functions: dict, repeats: int) -> dict:
    """Median seconds of each function, run in rotation (one call of each per round) so that a change
    of machine load during the run hits all of them alike."""
    for fn in functions.values():
        fn()
    times: dict = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- 1. superpixel cache
def bench_cache(context, slices, params, processes: int, resized: int) -> None:
    from skimage.transform import resize

    from nnunet_cl.pretraining.superpixels import (SlicParameters, build_superpixel_cache, leakage_counts,
                                                   slic_slice)

    equivalents = sum(float(np.prod(s[2:])) * s[1] for s in slices.shapes) / 256 ** 2
    folder = tempfile.mkdtemp(prefix="bench_superpixels_")
    cpu0, start = children_cpu(), time.perf_counter()
    build_superpixel_cache(slices.data_folder, params, num_processes=processes, folder=folder, progress=False)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu0
    print(f"[cache] {slices.num_slices} slices of {len(slices.case_ids)} cases = {equivalents:.1f} slice-equivalents "
          f"of 256^2, {processes} processes: {wall:.1f} s wall ({1e3 * wall / equivalents:.1f} ms per 256^2-equivalent, "
          f"incl. process start-up), {1e3 * cpu / equivalents:.1f} ms CPU per 256^2-equivalent")

    # Real 256^2 slices: dataset slices resized, one process, CPU time.
    rng = np.random.default_rng(0)
    picks = [(c, int(rng.integers(slices.depths[c]))) for c in rng.integers(0, len(slices.case_ids), resized)]
    images = [resize(np.asarray(slices._case(c)[0][:, z], np.float32), (1, 256, 256), order=1) for c, z in picks]
    big = SlicParameters(params.segments_for((256, 256)), (256, 256), params.compactness, params.max_num_iter)
    start = time.process_time()
    for image in images:
        slic_slice(image, big)
    per_slice = (time.process_time() - start) / len(images)
    print(f"[cache] {len(images)} slices resized to 256^2 ({big.n_segments} superpixels each), 1 process: "
          f"{1e3 * per_slice:.1f} ms CPU per slice -> {1e3 * per_slice / processes:.1f} ms per slice with "
          f"{processes} processes if they scale")

    # Cost per call on one of the dataset's own slices: what is fixed (Python set-up, connectivity) and what
    # grows with the iterations.
    data = np.asarray(slices._case(0)[0], np.float32)
    image = data[:, data.shape[1] // 2]
    per_call = {}
    for iterations in (1, params.max_num_iter):
        p = SlicParameters(params.n_segments, params.patch_size, params.compactness, iterations)
        per_call[iterations] = median_time(lambda: [slic_slice(image, p) for _ in range(50)], 5) / 50
    print(f"[cache] one slic call on a {image.shape[1]} x {image.shape[2]} slice: "
          + ", ".join(f"{1e3 * t:.2f} ms with {i} iteration(s)" for i, t in per_call.items())
          + f" -> {1e3 * per_call[1] * 256 ** 2 / (image.shape[1] * image.shape[2]):.1f} ms CPU per 256^2-equivalent "
            f"at 1 iteration")

    # Quality of 3 vs 5 vs 10 SLIC iterations on every 10th case.
    for iterations in sorted({3, params.max_num_iter, 10}):
        p = SlicParameters(params.n_segments, params.patch_size, params.compactness, iterations)
        totals, n_slices, start = np.zeros(4, np.int64), 0, time.process_time()
        for c in range(0, len(slices.case_ids), 10):
            data, seg = slices._case(c)
            data, seg = np.asarray(data), np.asarray(seg)[0]
            for z in range(data.shape[1]):
                totals += leakage_counts(slic_slice(data[:, z], p), seg[z])
                n_slices += 1
        print(f"[cache] SLIC {iterations:2d} iterations on {n_slices} slices: {totals[0] / n_slices:.1f} superpixels "
              f"per slice, leakage {totals[1] / totals[0]:.1%} (foreground-touching {totals[3] / max(totals[2], 1):.1%}),"
              f" {1e3 * (time.process_time() - start) / n_slices:.2f} ms CPU per slice")


# ----------------------------------------------------------------------------- 2. training steps
def supervised_trainer(context):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = dict(context.plans, continue_training=False)   # nnU-Net's run_training adds this key
    trainer = nnUNetTrainer(plans, context.configuration, 0, context.dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def supervised_batch(trainer, slices, batch_size, rng) -> dict:
    windows = slices.sample_windows(batch_size, rng)
    data = torch.from_numpy(slices.images(windows))
    seg = torch.from_numpy(np.stack([slices.segmentation(w) for w in windows]).astype(np.float32))
    targets = []
    for scale in trainer._get_deep_supervision_scales():
        size = [int(round(s * f)) for s, f in zip(seg.shape[2:], scale)]
        targets.append(torch.nn.functional.interpolate(seg, size=size, mode="nearest"))
    return {"data": data, "target": targets}


def bench_steps(context, slices, batch_size: int, repeats: int) -> None:
    from nnunet_cl.losses.asp import average_superpixel_map
    from nnunet_cl.losses.ccl import connected_component_labels, igcp_positive_mask
    from nnunet_cl.losses.ilcp import ilcp_loss
    from nnunet_cl.losses import multi_positive_info_nce
    from nnunet_cl.pretraining.engine import PretrainConfig, Pretrainer
    from nnunet_cl.pretraining.methods.supercl import encoder_stage_outputs

    rng = np.random.default_rng(0)
    trainer = supervised_trainer(context)
    batch = supervised_batch(trainer, slices, batch_size, rng)
    pretrainer = Pretrainer(PretrainConfig(dataset=context.dataset_name, method="supercl", batch_size=batch_size,
                                           device="cpu"))
    method, network = pretrainer.method, pretrainer.network
    cl_batch = method.make_batch(pretrainer.slices, batch_size, rng)

    def network_only():
        """The same forward passes and backward without the loss terms (their inputs summed)."""
        pretrainer.optimizer.zero_grad(set_to_none=True)
        z = method.instance_projections(network, cl_batch["views"])
        fixed = encoder_stage_outputs(network.encoder, cl_batch["fixed_views"], method.stage)[-1]
        (z.mean() + fixed.mean()).backward()
        pretrainer.optimizer.step()

    # Per term, forward + backward on leaf copies of the real features.
    with torch.no_grad():
        z0 = method.instance_projections(network, cl_batch["views"])
        f0 = encoder_stage_outputs(network.encoder, cl_batch["fixed_views"], method.stage)[-1]
    superpixels, tau = cl_batch["superpixels"], method.options["temperature"]
    ins_mask = method.positive_mask(cl_batch)
    inter_mask, _ = igcp_positive_mask(average_superpixel_map(f0, torch.cat([superpixels] * 2)))

    def term(fn, source):
        leaf = source.clone().requires_grad_(True)
        return lambda: fn(leaf).backward()

    def ilcp(stride):
        return term(lambda f: ilcp_loss(*f.chunk(2), superpixels, tau, stride=stride)[0], f0)

    strides = (2, 4, 16)
    t = interleaved_medians({
        "supervised": lambda: trainer.train_step(batch),
        "step": lambda: pretrainer.train_step(cl_batch),
        "bare": network_only,
        "prepare": lambda: method.make_batch(pretrainer.slices, batch_size, rng),
        "ins": term(lambda z: multi_positive_info_nce(z, ins_mask, tau), z0),
        "intra": ilcp(1),
        "graph": lambda: igcp_positive_mask(average_superpixel_map(f0, torch.cat([superpixels] * 2))),
        "inter": term(lambda z: multi_positive_info_nce(z, inter_mask, tau), z0),
        **{f"intra{s}": ilcp(s) for s in strides},
    }, repeats)
    others = t["ins"] + t["graph"] + t["inter"]

    print(f"[step] batch {batch_size}, patch {context.patch_size}, ILCP stage {method.stage} "
          f"{method.feature_shape}, {torch.get_num_threads()} threads, median of {repeats} interleaved rounds")
    print(f"[step] supervised nnUNetTrainer.train_step: {t['supervised']:.3f} s")
    print(f"[step] SuperCL Pretrainer.train_step:       {t['step']:.3f} s  -> ratio {t['step'] / t['supervised']:.2f} "
          f"(target <= 2.3)")
    print(f"[step] same passes without the loss terms:  {t['bare']:.3f} s  -> loss terms {t['step'] - t['bare']:.3f} s "
          f"= {(t['step'] - t['bare']) / t['step']:.1%} of the step (target <= 15%)")
    print(f"[step] per term (forward+backward): ins {t['ins']:.4f} s, intra (ILCP) {t['intra']:.3f} s, "
          f"ASP+CCL {t['graph']:.4f} s, inter {t['inter']:.4f} s; sum {others + t['intra']:.3f} s "
          f"= {(others + t['intra']) / (t['bare'] + others + t['intra']):.1%} of network + terms")
    for stride in strides:
        cost = others + t[f"intra{stride}"]
        print(f"[step] ILCP with -o ilcp_stride={stride} ({-(-int(np.prod(method.feature_shape)) // stride)} pixels "
              f"per view): {t[f'intra{stride}']:.3f} s; all terms {cost / (t['bare'] + cost):.1%} of network + terms")
    print(f"[step] batch preparation (4 augmented views per slice + superpixel crops, main process): "
          f"{t['prepare']:.3f} s ({t['prepare'] / t['step']:.0%} of a step; no SLIC runs here)")

    # 4. CCL components on real batches, own views excluded (default) or allowed (reference code).
    counts = {True: [], False: []}
    with torch.no_grad():
        for _ in range(max(3, repeats)):
            b = method.make_batch(pretrainer.slices, batch_size, rng)
            f = encoder_stage_outputs(network.encoder, b["fixed_views"], method.stage)[-1]
            asp = average_superpixel_map(f, torch.cat([b["superpixels"]] * 2))
            for exclude in counts:
                counts[exclude].append(connected_component_labels(asp, 2, exclude_own_views=exclude)[1])
    print(f"[ccl] components per batch of {batch_size} (untrained encoder): own views excluded "
          f"{np.mean(counts[True]):.1f} {counts[True]}; reference search {np.mean(counts[False]):.1f} {counts[False]}")


# ----------------------------------------------------------------------------- 3. ILCP vectorised vs naive
def naive_ilcp_loop(view1, view2, superpixels, temperature):
    """The obvious implementation: Python loops over images and anchor pixels (vectorised over candidates)."""
    losses = []
    for b in range(view1.shape[0]):
        pixels = torch.nn.functional.normalize(torch.cat([view1[b].flatten(1), view2[b].flatten(1)], 1).T, dim=1)
        labels = torch.cat([superpixels[b].flatten()] * 2)
        for i in range(pixels.shape[0]):
            logits = pixels @ pixels[i] / temperature
            others = torch.arange(pixels.shape[0]) != i
            positives = others & (labels == labels[i])
            log_denominator = torch.logsumexp(logits[others], 0)
            losses.append(-(logits[positives] - log_denominator).mean())
    return torch.stack(losses).mean()


def naive_double_loop_forward(view1, view2, superpixels, temperature, anchors_per_image):
    """The tests' reference, pure Python: per image, per anchor pixel, loops over candidates and positives
    (forward only). Timed on the first ``anchors_per_image`` anchors of each image; its cost is exactly
    linear in the number of anchors."""
    total = 0.0
    for b in range(view1.shape[0]):
        pixels = torch.nn.functional.normalize(torch.cat([view1[b].flatten(1), view2[b].flatten(1)], 1).T, dim=1)
        pixels = pixels.detach().double().numpy()
        labels = torch.cat([superpixels[b].flatten()] * 2).tolist()
        for i in range(anchors_per_image):
            similarity = [float(pixels[i] @ pixels[j]) / temperature for j in range(len(labels))]
            log_denominator = math.log(sum(math.exp(similarity[a]) for a in range(len(labels)) if a != i))
            positives = [p for p in range(len(labels)) if p != i and labels[p] == labels[i]]
            total += -sum(similarity[p] - log_denominator for p in positives) / len(positives)
    return total


def ilcp_mask_form(view1, view2, superpixels, temperature):
    """ILCP through ``multi_positive_info_nce``'s mask form: equal-superpixel positives and a validity
    denominator as explicit ``[B, 2P, 2P]`` masks (every image here has >= 2 superpixels)."""
    from nnunet_cl.losses import multi_positive_info_nce
    from nnunet_cl.losses.ilcp import ilcp_pixels

    pixels, labels = ilcp_pixels(view1, view2, superpixels)
    valid = labels > 0
    pair_valid = valid[:, :, None] & valid[:, None, :]
    positives = (labels[:, :, None] == labels[:, None, :]) & pair_valid
    return multi_positive_info_nce(pixels, positives, temperature=temperature, denominator_mask=pair_valid,
                                   anchor_weights=valid.float())


def bench_ilcp(repeats: int, sampled_anchors: int = 16) -> None:
    from nnunet_cl.losses.ilcp import ilcp_loss

    torch.manual_seed(0)
    B, C, h, w = 16, 128, 32, 32
    view1 = torch.randn(B, C, h, w, requires_grad=True)
    view2 = torch.randn(B, C, h, w, requires_grad=True)
    # ~100 superpixels per image: a 10 x 10 grid of blocks of the 32 x 32 map.
    blocks = (np.arange(h)[:, None] * 10 // h) * 10 + (np.arange(w)[None, :] * 10 // w) + 1
    superpixels = torch.from_numpy(np.stack([blocks] * B)).long()

    vectorised_loss, _ = ilcp_loss(view1, view2, superpixels, 0.1)
    naive_loss = naive_ilcp_loop(view1, view2, superpixels, 0.1)
    assert torch.allclose(vectorised_loss, naive_loss, rtol=1e-4), (vectorised_loss, naive_loss)
    assert torch.allclose(vectorised_loss, ilcp_mask_form(view1, view2, superpixels, 0.1), rtol=1e-5)
    vectorised = median_time(lambda: ilcp_loss(view1, view2, superpixels, 0.1)[0].backward(), repeats)
    naive = median_time(lambda: naive_ilcp_loop(view1, view2, superpixels, 0.1).backward(), 1, warmup=0)
    print(f"[ilcp] batch {B}, {h * w} pixels x 2 views per image, {C} channels, forward+backward: vectorised "
          f"{vectorised:.3f} s, loop over images and anchor pixels (vectorised over candidates) {naive:.2f} s -> "
          f"{naive / vectorised:.1f}x; losses agree ({float(vectorised_loss.detach()):.5f})")
    mask_form = median_time(lambda: ilcp_mask_form(view1, view2, superpixels, 0.1).backward(), repeats)
    print(f"[ilcp] the same loss through the kernel's mask form ([B, 2P, 2P] positive and denominator masks, "
          f"the implementation before the equal-label form): {mask_form:.3f} s forward+backward -> the equal-label "
          f"form is {mask_form / vectorised:.1f}x faster")
    with torch.no_grad():
        forward = median_time(lambda: ilcp_loss(view1, view2, superpixels, 0.1), repeats)
    start = time.perf_counter()
    naive_double_loop_forward(view1, view2, superpixels, 0.1, sampled_anchors)
    per_anchor = (time.perf_counter() - start) / (B * sampled_anchors)
    double_loop = per_anchor * B * 2 * h * w
    print(f"[ilcp] forward only: vectorised {forward:.3f} s; per-pixel double loop in Python (the tests' reference) "
          f"{1e3 * per_anchor:.1f} ms per anchor, measured on {B * sampled_anchors} anchors -> {double_loop:.0f} s for "
          f"all {B * 2 * h * w} anchors (linear extrapolation) -> {double_loop / forward:.0f}x (target >= 20x)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", dest="dataset", default="4")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-np", dest="processes", type=int, default=2)
    parser.add_argument("--resized-slices", type=int, default=40, help="slices resized to 256^2 for SLIC timing")
    parser.add_argument("--skip", nargs="*", default=[], choices=("cache", "steps", "ilcp"))
    args = parser.parse_args(argv)

    from nnunet_cl.nnunet_context import load_dataset_context
    from nnunet_cl.pretraining.methods import get_method
    from nnunet_cl.pretraining.slices import PreprocessedSlices

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    context = load_dataset_context(args.dataset)
    slices = PreprocessedSlices(context.data_folder, context.patch_size)
    method = get_method("supercl")
    _, _, params = method.geometry(context.patch_size, context.build_network().encoder.strides,
                                   method.resolve_options({}))
    print(f"# bench_supercl on {context.dataset_name}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, torch {torch.__version__}")
    if "cache" not in args.skip:
        bench_cache(context, slices, params, args.processes, args.resized_slices)
    if "steps" not in args.skip:
        bench_steps(context, slices, args.batch_size, args.repeats)
    if "ilcp" not in args.skip:
        bench_ilcp(args.repeats)
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
