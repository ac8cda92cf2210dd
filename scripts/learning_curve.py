"""Fine-tuning learning curve: validation DSC after several training lengths, one nnUNetv2_train run each.

Used to choose a benchmark budget near the plateau. Every length is its own run with nnU-Net's full poly
schedule (a checkpoint in the middle of a longer run has not annealed its learning rate, so it would
understate what that length reaches). Runs go to ``OUTPUT/steps_<N>/nnUNet_results``; a finished length
(``validation/summary.json``) is skipped, an interrupted one resumed with ``--c``. The table
(``curve.md``, ``curve.csv``) and ``curve.png`` are rewritten after every run.

    python scripts/learning_curve.py -d 4 -tr nnUNetTrainerScratch_10pct nnUNetTrainerScratch_25pct \
        --steps 350 700 1400 2800 5600 -o ../learning_curve

Raw and preprocessed data come from ``$nnUNet_raw`` / ``$nnUNet_preprocessed``. Each run uses the budget
variables of the benchmark presets (batch, iterations per epoch, validation iterations) and validates without
mirroring; ``nnUNet_cl_num_threads`` (default 1) sets torch's threads.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

from nnunet_cl.ext_trainer import ext_trainer_value


def summary_path(output: str, steps: int, dataset: str, trainer: str, fold: int) -> str:
    return os.path.join(output, f"steps_{steps}", "nnUNet_results", dataset, f"{trainer}__nnUNetPlans__2d",
                        f"fold_{fold}", "validation", "summary.json")


def foreground_dice(path: str) -> float:
    with open(path) as f:
        return float(json.load(f)["foreground_mean"]["Dice"])


def run_one(args, dataset: str, trainer: str, steps: int) -> None:
    results = os.path.join(args.output, f"steps_{steps}", "nnUNet_results")
    summary = summary_path(args.output, steps, dataset, trainer, args.fold)
    if not os.path.isfile(summary):
        epochs = steps // args.iters
        env = dict(os.environ, nnUNet_results=results, nnUNet_extTrainer=ext_trainer_value(), nnUNet_n_proc_DA="0",
                   nnUNet_cl_num_epochs=str(epochs), nnUNet_cl_num_iterations_per_epoch=str(args.iters),
                   nnUNet_cl_batch_size=str(args.batch), nnUNet_cl_num_val_iterations_per_epoch=str(args.val_iters),
                   nnUNet_cl_val_mirroring="0", nnUNet_cl_save_every=str(max(1, epochs // 8)),
                   nnUNet_cl_num_threads=os.environ.get("nnUNet_cl_num_threads", "1"))
        fold_folder = os.path.dirname(os.path.dirname(summary))
        command = [os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train"), args.dataset, "2d",
                   str(args.fold), "-tr", trainer, "-device", "cpu"]
        if os.path.isfile(os.path.join(fold_folder, "checkpoint_latest.pth")):
            command.append("--c")
        os.makedirs(os.path.join(args.output, "logs"), exist_ok=True)
        log = os.path.join(args.output, "logs", f"{trainer}_steps{steps}_fold{args.fold}.log")
        print(f"{trainer} {steps} steps ({epochs} x {args.iters}, batch {args.batch}): {' '.join(command)}\n  log {log}",
              flush=True)
        start = time.time()
        with open(log, "a") as f:
            subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
        print(f"  done in {time.time() - start:.0f} s", flush=True)


def write_outputs(args, rows: list) -> None:
    with open(os.path.join(args.output, "curve.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trainer", "fold", "steps", "batch", "dsc"])
        writer.writerows(rows)
    lines = ["| trainer | " + " | ".join(f"{s} steps" for s in sorted(args.steps)) + " |",
             "|---|" + "---|" * len(args.steps)]
    for trainer in args.trainers:
        by_steps = {r[2]: r[4] for r in rows if r[0] == trainer}
        lines.append(f"| {trainer} | " + " | ".join(f"{100 * by_steps[s]:.1f}" if s in by_steps else "–"
                                                    for s in sorted(args.steps)) + " |")
    with open(os.path.join(args.output, "curve.md"), "w") as f:
        f.write(f"Validation DSC (%, nnU-Net's foreground mean), fold {args.fold}, batch {args.batch}, "
                f"{args.iters} iterations per epoch\n\n" + "\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for trainer in args.trainers:
        points = sorted((r[2], 100 * r[4]) for r in rows if r[0] == trainer)
        if points:
            ax.plot(*zip(*points), marker="o", label=trainer)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"fine-tuning steps (batch {args.batch})")
    ax.set_ylabel("validation DSC (%)")
    ax.set_title(f"Learning curve, fold {args.fold}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.output, "curve.png"), dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", dest="dataset", required=True)
    p.add_argument("-tr", dest="trainers", nargs="+", required=True)
    p.add_argument("--steps", nargs="+", type=int, required=True)
    p.add_argument("-f", dest="fold", type=int, default=0)
    p.add_argument("--iters", type=int, default=50, help="iterations per epoch (steps must be multiples)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--val-iters", type=int, default=5)
    p.add_argument("-o", dest="output", required=True)
    args = p.parse_args()
    bad = [s for s in args.steps if s % args.iters]
    if bad:
        p.error(f"--steps {bad} are not multiples of --iters {args.iters}")
    from nnunet_cl.nnunet_context import resolve_dataset_name
    dataset = resolve_dataset_name(args.dataset)
    args.output = os.path.abspath(args.output)
    for steps in args.steps:            # given longest first, the plateau of every trainer is known early
        for trainer in args.trainers:
            run_one(args, dataset, trainer, steps)
            write_outputs(args, finished_rows(args, dataset))


def finished_rows(args, dataset: str) -> list:
    """Every finished (trainer, steps) of the output folder, so runs of one trainer per process can share it."""
    return [(trainer, args.fold, steps, args.batch, foreground_dice(summary_path(args.output, steps, dataset, trainer,
                                                                                 args.fold)))
            for trainer in args.trainers for steps in sorted(args.steps)
            if os.path.isfile(summary_path(args.output, steps, dataset, trainer, args.fold))]


if __name__ == "__main__":
    main()
