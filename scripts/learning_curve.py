"""Fine-tuning learning curve: validation DSC after several training lengths.

Used to choose a benchmark budget near the plateau. Two protocols:

* default: every length is its own nnUNetv2_train run with nnU-Net's full poly schedule. Runs go to
  ``OUTPUT/steps_<N>/nnUNet_results``; a finished length (``validation/summary.json``) is skipped, an
  interrupted one resumed with ``--c``.
* ``--one-run``: one run of the longest length (in this process, through nnU-Net's own
  ``get_trainer_from_args``), which keeps a checkpoint after each shorter length and afterwards runs
  nnU-Net's final validation on each (``OUTPUT/one_run/.../fold_F/steps_<N>/validation``). Costs the longest
  length only; a checkpoint in the middle of the run has not annealed its learning rate, so its DSC is a lower
  bound of what a run of that length reaches, which makes a budget chosen from it conservative.

The table (``curve.md``, ``curve.csv``) and ``curve.png`` are rewritten after every run.

    python scripts/learning_curve.py -d 4 -tr nnUNetTrainerScratch_10pct nnUNetTrainerScratch_25pct \
        --steps 350 700 1400 2800 5600 -o ../learning_curve [--one-run]

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

from nnunet_cl.nnunet_context import CONFIGURATION, DEFAULT_PLANS, results_folder_name


def fold_folder(output: str, steps: int, dataset: str, trainer: str, fold: int, one_run: bool = False) -> str:
    run = "one_run" if one_run else f"steps_{steps}"
    return os.path.join(output, run, "nnUNet_results", dataset, results_folder_name(trainer, DEFAULT_PLANS),
                        f"fold_{fold}")


def summary_path(output: str, steps: int, dataset: str, trainer: str, fold: int, one_run: bool = False) -> str:
    folder = fold_folder(output, steps, dataset, trainer, fold, one_run)
    if one_run:
        folder = os.path.join(folder, f"steps_{steps}")
    return os.path.join(folder, "validation", "summary.json")


def budget_environment(args, results: str, epochs: int) -> dict:
    """A fine-tuning child's environment exactly as ``nnunet_cl benchmark`` gives it (the cpu-plateau preset
    with this curve's batch, iterations and epochs), in ``results``; torch threads from
    ``nnUNet_cl_num_threads`` (default 1)."""
    from nnunet_cl.tools.benchmark_children import ChildProcesses
    from nnunet_cl.tools.benchmark_plan import make_budget
    budget = make_budget("cpu-plateau", finetune_epochs=epochs, finetune_iters_per_epoch=args.iters,
                         finetune_batch_size=args.batch, finetune_val_iters_per_epoch=args.val_iters, device="cpu")
    env = ChildProcesses(budget, processes=2).env(training=True)
    env.update(nnUNet_results=results, nnUNet_cl_num_threads=os.environ.get("nnUNet_cl_num_threads", "1"))
    return env


def foreground_dice(path: str) -> float:
    with open(path) as f:
        return float(json.load(f)["foreground_mean"]["Dice"])


def run_one(args, dataset: str, trainer: str, steps: int) -> None:
    results = os.path.join(args.output, f"steps_{steps}", "nnUNet_results")
    summary = summary_path(args.output, steps, dataset, trainer, args.fold)
    if not os.path.isfile(summary):
        epochs = steps // args.iters
        env = budget_environment(args, results, epochs)
        folder = fold_folder(args.output, steps, dataset, trainer, args.fold)
        command = [os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train"), args.dataset, CONFIGURATION,
                   str(args.fold), "-tr", trainer, "-device", "cpu"]
        if os.path.isfile(os.path.join(folder, "checkpoint_latest.pth")):
            command.append("--c")
        os.makedirs(os.path.join(args.output, "logs"), exist_ok=True)
        log = os.path.join(args.output, "logs", f"{trainer}_steps{steps}_fold{args.fold}.log")
        print(f"{trainer} {steps} steps ({epochs} x {args.iters}, batch {args.batch}): {' '.join(command)}\n  log {log}",
              flush=True)
        start = time.time()
        with open(log, "a") as f:
            subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
        print(f"  done in {time.time() - start:.0f} s", flush=True)


def run_long(args, dataset: str, trainer_name: str) -> None:
    """One run of the longest length that keeps a checkpoint after each shorter one, then validates each."""
    longest = max(args.steps)
    epochs = longest // args.iters
    os.environ.update(budget_environment(args, os.path.join(args.output, "one_run", "nnUNet_results"), epochs))
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    trainer = get_trainer_from_args(args.dataset, CONFIGURATION, args.fold, trainer_name, DEFAULT_PLANS,
                                    device=torch.device("cpu"))
    folder = trainer.output_folder
    kept = {s // args.iters: os.path.join(folder, f"checkpoint_steps{s}.pth") for s in args.steps if s != longest}
    kept[epochs] = os.path.join(folder, "checkpoint_final.pth")
    epoch_end = trainer.on_epoch_end

    def on_epoch_end_keeping_checkpoints():
        epoch_end()                         # increments current_epoch to the number of finished epochs
        if trainer.current_epoch in kept and trainer.current_epoch != epochs:
            trainer.save_checkpoint(kept[trainer.current_epoch])

    trainer.on_epoch_end = on_epoch_end_keeping_checkpoints
    if not os.path.isfile(kept[epochs]):
        resume = os.path.isfile(os.path.join(folder, "checkpoint_latest.pth"))
        print(f"{trainer_name}: one run of {longest} steps ({epochs} x {args.iters}, batch {args.batch})"
              f"{' resumed' if resume else ''}, checkpoints after {sorted(args.steps)} steps in {folder}", flush=True)
        maybe_load_checkpoint(trainer, resume, False, None)
        start = time.time()
        trainer.run_training()
        print(f"  trained in {time.time() - start:.0f} s", flush=True)
    for epoch, checkpoint in sorted(kept.items()):
        steps = epoch * args.iters
        if os.path.isfile(summary_path(args.output, steps, dataset, trainer_name, args.fold, one_run=True)):
            continue
        trainer.load_checkpoint(checkpoint)
        trainer.output_folder = os.path.join(folder, f"steps_{steps}")
        os.makedirs(trainer.output_folder, exist_ok=True)
        trainer.perform_actual_validation(False)
        trainer.output_folder = folder
        write_outputs(args, finished_rows(args, dataset))


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
        protocol = (f"checkpoints of one {max(args.steps)}-step run" if args.one_run
                    else "one full-schedule run per length")
        f.write(f"Validation DSC (%, nnU-Net's foreground mean), fold {args.fold}, batch {args.batch}, "
                f"{args.iters} iterations per epoch, {protocol}\n\n" + "\n".join(lines) + "\n")
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
    protocol = "checkpoints of one run" if args.one_run else "one run per length"
    ax.set_title(f"Learning curve, fold {args.fold} ({protocol})", fontsize=10)
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
    p.add_argument("--one-run", action="store_true",
                   help="one run of the longest length, validated at checkpoints after the shorter ones")
    args = p.parse_args()
    bad = [s for s in args.steps if s % args.iters]
    if bad:
        p.error(f"--steps {bad} are not multiples of --iters {args.iters}")
    from nnunet_cl.nnunet_context import resolve_dataset_name
    dataset = resolve_dataset_name(args.dataset)
    args.output = os.path.abspath(args.output)
    if args.one_run:
        for trainer in args.trainers:
            run_long(args, dataset, trainer)
            write_outputs(args, finished_rows(args, dataset))
        return
    for steps in args.steps:            # given longest first, the plateau of every trainer is known early
        for trainer in args.trainers:
            run_one(args, dataset, trainer, steps)
            write_outputs(args, finished_rows(args, dataset))


def finished_rows(args, dataset: str) -> list:
    """Every finished (trainer, steps) of the output folder, so runs of one trainer per process can share it."""
    return [(trainer, args.fold, steps, args.batch,
             foreground_dice(summary_path(args.output, steps, dataset, trainer, args.fold, args.one_run)))
            for trainer in args.trainers for steps in sorted(args.steps)
            if os.path.isfile(summary_path(args.output, steps, dataset, trainer, args.fold, args.one_run))]


if __name__ == "__main__":
    main()
