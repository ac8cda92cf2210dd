"""The bad-input matrix: one table, each case one clear line on stderr, exit code 1, no traceback, nothing
half-written. (A NaN loss is covered in test_interruption.py, constant slices in the SuperCL tests.)"""

import json
import os
import shutil

import pytest
import torch

from nnunet_cl.checkpoint import save_checkpoint
from nnunet_cl.nnunet_context import architecture_fingerprint

pytestmark = pytest.mark.integration

PRETRAIN = ["nnunet_cl", "pretrain", "--epochs", "1", "--iters-per-epoch", "1", "--batch-size", "2", "-device", "cpu"]


def init_training(trainer="nnUNetTrainerSimCLRInit_10pct", fold="3"):
    return ["nnUNetv2_train", "990", "2d", fold, "-tr", trainer, "-device", "cpu"]


def raw_only_dataset(env, tmp):
    os.makedirs(os.path.join(env.raw, "Dataset991_RawOnly"), exist_ok=True)
    return PRETRAIN + ["-d", "991", "-m", "pcl"], {}


def planned_not_preprocessed(env, tmp):
    planned_only = os.path.join(env.preprocessed, "Dataset992_PlannedOnly")
    os.makedirs(planned_only, exist_ok=True)
    for name in ("nnUNetPlans.json", "dataset.json"):
        shutil.copy(os.path.join(env.preprocessed, "Dataset990_Synth", name), planned_only)
    return PRETRAIN + ["-d", "992", "-m", "pcl"], {}


def checkpoint_file(tmp, network, method="simclr", plans="nnUNetPlans"):
    path = str(tmp / f"{method}_{plans}.pth")
    save_checkpoint({"network_weights": network.state_dict(), "method": method, "plans_identifier": plans,
                     "architecture_fingerprint": architecture_fingerprint(network),
                     "pretrained_prefixes": ["encoder."]}, path)
    return path


def missing_checkpoint(env, tmp):
    return init_training(), {"nnUNet_cl_pretrained_checkpoint": str(tmp / "missing.pth")}


def corrupt_checkpoint(env, tmp):
    (tmp / "corrupt.pth").write_bytes(b"PK\x03\x04 not really a checkpoint")
    return init_training(), {"nnUNet_cl_pretrained_checkpoint": str(tmp / "corrupt.pth")}


def other_architecture_checkpoint(env, tmp):
    from tests.test_checkpoint import small_unet
    return init_training(), {"nnUNet_cl_pretrained_checkpoint": checkpoint_file(tmp, small_unet(), plans="Other")}


def other_method_checkpoint(env, tmp):
    from nnunet_cl.nnunet_context import load_dataset_context
    os.environ.update(nnUNet_raw=env.raw, nnUNet_preprocessed=env.preprocessed, nnUNet_results=env.results)
    network = load_dataset_context("990").build_network()
    return init_training(), {"nnUNet_cl_pretrained_checkpoint": checkpoint_file(tmp, network, method="pcl")}


def weight_norm_reset_of_a_transposed_conv(env, tmp):
    from nnunet_cl.nnunet_context import load_dataset_context
    os.environ.update(nnUNet_raw=env.raw, nnUNet_preprocessed=env.preprocessed, nnUNet_results=env.results)
    network = load_dataset_context("990").build_network()
    path = checkpoint_file(tmp, network, method="jcl")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint["pretrained_prefixes"] = ["encoder.", "decoder.transpconvs.0.", "decoder.stages.0."]
    save_checkpoint(checkpoint, path)
    return init_training("nnUNetTrainerJCLInit_10pct"), {"nnUNet_cl_pretrained_checkpoint": path,
                                                        "nnUNet_cl_weight_norm_reset": "1"}


def fold_without_training_cases(env, tmp):
    # A split whose fold 5 has no training case: no label fraction can select anything.
    splits_path = os.path.join(env.preprocessed, "Dataset990_Synth", "splits_final.json")
    if not os.path.isfile(splits_path):
        from nnunetv2.utilities.crossval_split import generate_crossval_split
        ids = sorted(f[:-5] for f in os.listdir(os.path.join(env.preprocessed, "Dataset990_Synth", "nnUNetPlans_2d"))
                     if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))
        json.dump(generate_crossval_split(ids, seed=12345, n_splits=5), open(splits_path, "w"))
    splits = json.load(open(splits_path))
    if len(splits) == 5:
        splits.append({"train": [], "val": splits[0]["val"]})
        json.dump(splits, open(splits_path, "w"))
    return init_training("nnUNetTrainerScratch_10pct", fold="5"), {}


CASES = [
    ("env vars unset", lambda e, t: (PRETRAIN + ["-d", "990", "-m", "pcl"], {"nnUNet_raw": "", "nnUNet_results": ""}),
     ("nnUNet_raw", "nnUNet_results", "not set")),
    ("unknown dataset", lambda e, t: (PRETRAIN + ["-d", "123", "-m", "pcl"], {}),
     ("unknown dataset '123'", "nnUNetv2_plan_and_preprocess")),
    ("dataset not planned", raw_only_dataset, ("no plans", "nnUNetv2_plan_and_preprocess -d Dataset991_RawOnly -c 2d")),
    ("dataset not preprocessed for 2d", planned_not_preprocessed, ("not preprocessed for 2d",)),
    ("3d configuration", lambda e, t: (PRETRAIN + ["-d", "990", "-m", "pcl", "-c", "3d_fullres"], {}),
     ("'3d_fullres' is not supported", "-c 2d")),
    ("unknown method", lambda e, t: (PRETRAIN + ["-d", "990", "-m", "nosuchmethod"], {}),
     ("unknown method 'nosuchmethod'", "pcl")),
    ("unknown method option", lambda e, t: (PRETRAIN + ["-d", "990", "-m", "pcl", "-o", "nosuch=1"], {}),
     ("no option 'nosuch'",)),
    ("float16 on CPU", lambda e, t: (PRETRAIN + ["-d", "990", "-m", "pcl", "--precision", "float16"], {}),
     ("--precision float16 needs -device cuda",)),
    ("loader workers not a number", lambda e, t: (PRETRAIN + ["-d", "990", "-m", "pcl"], {"nnUNet_n_proc_DA": "two"}),
     ("nnUNet_n_proc_DA='two' is not an integer",)),
    ("label fraction 0", lambda e, t: (PRETRAIN + ["-d", "990", "-m", "semi_local", "--fraction", "0", "--fold", "0"],
                                       {}), ("label fraction 0.0 is outside (0, 1]",)),
    ("label fraction > 1", lambda e, t: (PRETRAIN + ["-d", "990", "-m", "semi_local", "--fraction", "1.5",
                                                     "--fold", "0"], {}), ("label fraction 1.5 is outside (0, 1]",)),
    ("fraction yields 0 cases", fold_without_training_cases, ("no training cases",)),
    ("checkpoint missing", missing_checkpoint, ("does not exist", "nnunet_cl pretrain -d Dataset990_Synth -m simclr")),
    ("checkpoint corrupt", corrupt_checkpoint, ("corrupt",)),
    ("checkpoint of another architecture", other_architecture_checkpoint,
     ("another architecture", "nnUNetv2_move_plans_between_datasets")),
    ("checkpoint of another method", other_method_checkpoint, ("pre-trained with method 'pcl', not 'simclr'",)),
    ("budget variable not a number", lambda e, t: (init_training("nnUNetTrainerScratch_10pct"),
                                                   {"nnUNet_cl_num_epochs": "zero"}), ("nnUNet_cl_num_epochs='zero'",)),
    ("validation mirroring not 0/1", lambda e, t: (init_training("nnUNetTrainerScratch_10pct"),
                                                   {"nnUNet_cl_val_mirroring": "no"}),
     ("nnUNet_cl_val_mirroring='no' must be 0",)),
    ("unknown fine-tuning schedule", lambda e, t: (init_training("nnUNetTrainerScratch_10pct"),
                                                   {"nnUNet_cl_finetune_schedule": "sawtooth"}),
     ("nnUNet_cl_finetune_schedule='sawtooth' is not a fine-tuning schedule", "stock, warmup, decoder_first, adam")),
    ("peak lr not positive", lambda e, t: (init_training(), {"nnUNet_cl_finetune_peak_lr": "0"}),
     ("nnUNet_cl_finetune_peak_lr='0' must be a positive number",)),
    ("run too short for the schedule", lambda e, t: (init_training("nnUNetTrainerScratch_10pct"),
                                                     {"nnUNet_cl_finetune_schedule": "decoder_first"}),
     ("decoder_first needs at least 4 epochs", "nnUNet_cl_num_epochs")),
    ("unknown pretrained parts", lambda e, t: (init_training(), {"nnUNet_cl_pretrained_parts": "decoder"}),
     ("nnUNet_cl_pretrained_parts='decoder' must be 'all'",)),
    ("weight-norm reset not 0/1", lambda e, t: (init_training(), {"nnUNet_cl_weight_norm_reset": "yes"}),
     ("nnUNet_cl_weight_norm_reset='yes' must be 1",)),
    ("weight-norm reset of a layer without normalisation", weight_norm_reset_of_a_transposed_conv,
     ("cannot rescale decoder.transpconvs.0 (ConvTranspose2d)", "nnUNet_cl_pretrained_parts=encoder")),
]


@pytest.mark.parametrize("name, make, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_matrix(synthetic_env, tmp_path, name, make, fragments):
    args, extra = make(synthetic_env, tmp_path)
    if args[0] == "nnUNetv2_train":
        extra = dict(synthetic_env.ext_trainer(), **extra)
    before = set(_all_files(synthetic_env.results))
    proc = synthetic_env.run(args, check=False, **extra)
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nnunet_cl: error: "), last
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    # Nothing half-written: no checkpoint or temp file appeared.
    new = set(_all_files(synthetic_env.results)) - before
    assert not [f for f in new if f.endswith((".pth", ".tmp"))], new


def _all_files(root):
    for folder, _, files in os.walk(root):
        for f in files:
            yield os.path.join(folder, f)
