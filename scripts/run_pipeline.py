#!/usr/bin/env python
"""The main job: pre-train -> fine-tune (10 % labels) -> compare with scratch, at a CPU budget.

    python scripts/run_pipeline.py                      # ../shared/data/Task04_Hippocampus, else generated data
    python scripts/run_pipeline.py --msd-task /path/to/Task05_Prostate --method pcl

Everything goes below --work (default ./nnunet_cl_work): nnUNet_raw, nnUNet_preprocessed, nnUNet_results.
Each step is skipped when its output exists, so a rerun continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TASK = os.path.join(REPO, "..", "shared", "data", "Task04_Hippocampus")


def script(name: str) -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name


def run(args, env, label):
    start = time.time()
    print(f"\n==> {label}\n    {' '.join(map(str, args))}", flush=True)
    proc = subprocess.run([script(args[0])] + [str(a) for a in args[1:]], env=env)
    if proc.returncode != 0:
        sys.exit(f"run_pipeline: step '{label}' failed with exit code {proc.returncode}")
    print(f"    ({time.time() - start:.0f} s)", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--msd-task", default=DEFAULT_TASK, help="MSD task folder (TaskXX_Name); generated data if absent")
    p.add_argument("--work", default=os.path.join(os.getcwd(), "nnunet_cl_work"))
    p.add_argument("--method", default="pcl")
    p.add_argument("--fraction", default="10pct", choices=("10pct", "25pct"))
    p.add_argument("--fold", default="0")
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--pretrain-iters", type=int, default=40)
    p.add_argument("--pretrain-batch", type=int, default=32)
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--finetune-iters", type=int, default=40)
    p.add_argument("--finetune-batch", type=int, default=32)
    p.add_argument("-device", "--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args()

    work = os.path.abspath(args.work)
    env = dict(os.environ, nnUNet_raw=os.path.join(work, "nnUNet_raw"),
               nnUNet_preprocessed=os.path.join(work, "nnUNet_preprocessed"),
               nnUNet_results=os.path.join(work, "nnUNet_results"), nnUNet_def_n_proc="2")
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key], exist_ok=True)
    plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}  # 0 breaks the planner

    if os.path.isdir(args.msd_task):
        task_name = os.path.basename(os.path.normpath(args.msd_task))
        dataset_id = int(task_name.split("_")[0][4:])
        dataset_name = f"Dataset{dataset_id:03d}_{task_name.split('_', 1)[1]}"
        if not os.path.isdir(os.path.join(env["nnUNet_raw"], dataset_name)):
            run(["nnUNetv2_convert_MSD_dataset", "-i", os.path.abspath(args.msd_task), "-np", "2"], plan_env,
                "convert the MSD task")
    else:
        print(f"no MSD task at {args.msd_task}: using a generated dataset", flush=True)
        sys.path.insert(0, REPO)
        from nnunet_cl.synthetic import make_synthetic_dataset
        dataset_id, dataset_name = 990, "Dataset990_Synth"
        if not os.path.isdir(os.path.join(env["nnUNet_raw"], dataset_name)):
            make_synthetic_dataset(env["nnUNet_raw"], dataset_id=990, num_cases=40, shape=(24, 64, 64))

    if not os.path.isfile(os.path.join(env["nnUNet_preprocessed"], dataset_name, "nnUNetPlans.json")):
        run(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "2d", "-np", "2"], plan_env,
            "nnU-Net planning and 2d preprocessing")

    pretrained = os.path.join(env["nnUNet_results"], dataset_name, "nnunet_cl",
                              f"{args.method}__nnUNetPlans__2d", "checkpoint_final.pth")
    if not os.path.isfile(pretrained):
        run(["nnunet_cl", "pretrain", "-d", dataset_id, "-m", args.method, "--epochs", args.pretrain_epochs,
             "--iters-per-epoch", args.pretrain_iters, "--batch-size", args.pretrain_batch, "-device", args.device,
             "--c"], env, f"{args.method} pre-training")

    from nnunet_cl.ext_trainer import ext_trainer_value
    train_env = dict(env, nnUNet_n_proc_DA="0", nnUNet_cl_num_epochs=str(args.finetune_epochs),
                     nnUNet_cl_num_iterations_per_epoch=str(args.finetune_iters),
                     nnUNet_cl_num_val_iterations_per_epoch="5", nnUNet_cl_batch_size=str(args.finetune_batch),
                     nnUNet_extTrainer=ext_trainer_value())
    method_trainer = {m.name: m.trainer_name for m in _methods()}[args.method]
    results = {}
    for trainer in (f"nnUNetTrainer{method_trainer}Init_{args.fraction}", f"nnUNetTrainerScratch_{args.fraction}"):
        fold_dir = os.path.join(env["nnUNet_results"], dataset_name, f"{trainer}__nnUNetPlans__2d",
                                f"fold_{args.fold}")
        if not os.path.isfile(os.path.join(fold_dir, "validation", "summary.json")):
            run(["nnUNetv2_train", dataset_id, "2d", args.fold, "-tr", trainer, "-device", args.device], train_env,
                f"fine-tune {trainer}")
        summary = json.load(open(os.path.join(fold_dir, "validation", "summary.json")))
        results[trainer] = (summary["foreground_mean"]["Dice"], fold_dir)

    print("\n==> results (validation cases of fold %s, mean foreground Dice)" % args.fold)
    for trainer, (dice, folder) in results.items():
        print(f"    {trainer:40s} Dice {dice:.4f}   {folder}")
    print(f"    pre-trained checkpoint: {pretrained}")
    print(f"    pre-training curves:    {os.path.join(os.path.dirname(pretrained), 'progress.png')}")
    print(f"    nnU-Net folders:        {work}")


def _methods():
    from nnunet_cl.pretraining.methods import METHODS
    return METHODS.values()


if __name__ == "__main__":
    main()
