"""Keep the results of an ``nnunet_cl benchmark`` output without its checkpoints, and continue from them elsewhere.

A benchmark output is mostly checkpoints and predictions (hundreds of MB); its results are a few small
files. ``save`` copies those (the *records*) into a folder small enough for git; ``restore`` puts them into
an output on another machine, where ``nnunet_cl benchmark`` with the same command then counts the recorded
runs as finished and runs only the rest; ``check`` says whether pre-trainings made again there have the
same weights as the recorded ones (pre-training is deterministic for a seed, data and device at one torch
thread, README "determinism").

    python scripts/benchmark_records.py save    OUTPUT RECORDS
    python scripts/benchmark_records.py restore RECORDS OUTPUT
    python scripts/benchmark_records.py check   RECORDS OUTPUT
    python scripts/benchmark_records.py merge   OTHER   OUTPUT

Records, as paths relative to the output: ``budget.json``, ``results.md``, ``results.csv``, the per-case
metrics ``metrics/<trainer>/fold_X_<split>.csv``, the runs' logs ``logs/*.log``, nnU-Net's
``fold_X/validation/summary.json`` of every finished run (what the benchmark checks to skip a run; the log of
an unfinished run is left out), and
``pretrained_weights.json``: a SHA-256 of the network weights of every pre-trained ``checkpoint_final.pth``.
``save`` into existing records keeps the digests recorded there for checkpoints the output does not hold (a
restored output has none) and refuses, before writing, a checkpoint whose weights differ from the recorded ones.
``restore`` never overwrites: a recorded file that exists in the output with other content is refused
before anything is written.

``merge`` joins two outputs of one benchmark command that ran at the same time (one output is locked by one
benchmark, so a second fold in parallel goes to a second output): every finished run of OTHER -- its whole fold
folder (checkpoints and predictions too), per-case metrics, test predictions and log -- is copied into OUTPUT,
and so is every finished pre-training (folder and log) that OTHER holds and OUTPUT does not.
Refused before anything is written when the budgets differ, when a pre-trained checkpoint both hold has other
weights (the runs would not share their start), when a run or pre-training of OTHER is already in OUTPUT
(finished or not), or while a benchmark holds OUTPUT. The report is not merged: the benchmark's own command
on OUTPUT with ``--report-only`` then counts the merged runs as finished and writes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import glob
import hashlib
import json
import os
import shutil
import sys

from nnunet_cl.atomic import atomic_write_json
from nnunet_cl.errors import NnunetClError
from nnunet_cl.folder_lock import FolderLock
from nnunet_cl.tools.benchmark_plan import (METRIC_SPLITS,  # the output layout has one home
                                            pretrain_done, pretrained_checkpoint_pattern, pretrainings_in,
                                            record_patterns, runs_in,
                                            training_done)

DIGESTS = "pretrained_weights.json"


def record_files(output: str) -> list:
    """Paths (relative to ``output``) of the records it holds; the log of a run still going (or killed) is left
    out: it would read as a finished run's training curve."""
    patterns = record_patterns(glob.escape(output))
    found = {os.path.relpath(path, output) for pattern in patterns for path in glob.glob(pattern)}
    return sorted(found - set(unfinished_run_logs(output)))


def unfinished_run_logs(output: str) -> list:
    """Logs (relative to ``output``) of the fine-tuning runs that have a fold folder but no final summary."""
    return [os.path.relpath(layout.log_file(run.log_name), output)
            for layout, run in runs_in(output) if not training_done(layout, run)]


def weights_digest(checkpoint_path: str) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a checkpoint's ``network_weights``."""
    import torch
    weights = torch.load(checkpoint_path, map_location="cpu", weights_only=False)["network_weights"]
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def pretrained_digests(output: str) -> dict:
    pattern = pretrained_checkpoint_pattern(glob.escape(output))
    return {os.path.relpath(path, output): weights_digest(path) for path in sorted(glob.glob(pattern))}


def require_folder(path: str, what: str, how_to_fix: str) -> None:
    if not os.path.isdir(path):
        raise NnunetClError(f"{what} {path} is not a folder; {how_to_fix}")


def require_benchmark_output(folder: str) -> None:
    require_folder(folder, "output", "give an nnunet_cl benchmark output folder (-o OUTPUT)")
    if not os.path.isfile(os.path.join(folder, "budget.json")):
        raise NnunetClError(f"{folder} has no budget.json: not an nnunet_cl benchmark output")


def recorded_digests(records: str) -> dict:
    path = os.path.join(records, DIGESTS)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def save(output: str, records: str) -> list:
    require_benchmark_output(output)
    # a restored output has no checkpoints: the digests recorded before are kept, not dropped
    digests = recorded_digests(records)
    for relative, digest in pretrained_digests(output).items():
        if digests.setdefault(relative, digest) != digest:
            raise NnunetClError(f"{relative} has other weights in {output} than recorded in {records}: the recorded "
                                "runs started from another pre-training; save into a new records folder")
    files = record_files(output)
    for relative in files:
        target = os.path.join(records, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(output, relative), target)
    atomic_write_json(dict(sorted(digests.items())), os.path.join(records, DIGESTS))
    return files


def restore(records: str, output: str) -> list:
    require_folder(records, "records", "make it with 'benchmark_records.py save OUTPUT RECORDS'")
    files = record_files(records)
    if "budget.json" not in files:
        raise NnunetClError(f"{records} has no budget.json: not a folder written by 'benchmark_records.py save'")
    conflicts = [f for f in files if os.path.exists(os.path.join(output, f))
                 and not filecmp.cmp(os.path.join(records, f), os.path.join(output, f), shallow=False)]
    if conflicts:
        raise NnunetClError(f"{os.path.join(output, conflicts[0])} exists with other content ({len(conflicts)} such "
                            "files): restore into a new output folder, or move that one away first")
    copied = []
    for relative in files:
        target = os.path.join(output, relative)
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(records, relative), target)
            copied.append(relative)
    return copied


def check(records: str, output: str) -> list:
    """``(checkpoint, state)`` per recorded pre-training: same / differs / missing."""
    path = os.path.join(records, DIGESTS)
    if not os.path.isfile(path):
        raise NnunetClError(f"{path} does not exist; make the records with 'benchmark_records.py save OUTPUT RECORDS'")
    recorded = recorded_digests(records)
    states = []
    for relative, digest in sorted(recorded.items()):
        checkpoint = os.path.join(output, relative)
        if not os.path.isfile(checkpoint):
            states.append((relative, "missing"))
        else:
            states.append((relative, "same" if weights_digest(checkpoint) == digest else "differs"))
    return states


def run_paths(layout, run) -> list:
    """Everything of one finished run in its output: the fold folder, metrics, test predictions, log (those
    that exist), as absolute paths."""
    paths = [layout.fold_folder(run), layout.test_predictions(run), layout.log_file(run.log_name)]
    paths += [layout.metrics_file(run, split) for split in METRIC_SPLITS]
    return [path for path in paths if os.path.exists(path)]


def pretraining_paths(layout, job) -> list:
    """A finished pre-training in its output: its folder and log (those that exist), as absolute paths."""
    paths = [os.path.dirname(layout.checkpoint(job)), layout.log_file(job.log_name)]
    return [path for path in paths if os.path.exists(path)]


def merge(other: str, output: str) -> list:
    """Copy the finished runs of ``other``, and the pre-trainings ``output`` lacks, into ``output``; returns the
    runs' names (``<trainer>_fold<X>``)."""
    require_benchmark_output(other)
    require_benchmark_output(output)
    if not filecmp.cmp(os.path.join(other, "budget.json"), os.path.join(output, "budget.json"), shallow=False):
        raise NnunetClError(f"the budget.json of {other} and {output} differ: a table holds runs of one budget only; "
                            "merge outputs of the same benchmark command")
    pretrainings = [(layout, dataclasses.replace(layout, output=output), job) for layout, job in pretrainings_in(other)]
    for theirs, mine, job in pretrainings:                # hashed only where both hold one
        if pretrain_done(mine, job) and weights_digest(mine.checkpoint(job)) != weights_digest(theirs.checkpoint(job)):
            raise NnunetClError(f"{os.path.relpath(theirs.checkpoint(job), other)} has other weights in {other} than "
                                f"in {output}: their runs do not start from the same pre-training; keep them in "
                                "separate outputs")
    finished = [(layout, run) for layout, run in runs_in(other) if training_done(layout, run)]
    relatives = sorted(os.path.relpath(path, other) for layout, run in finished for path in run_paths(layout, run))
    if not relatives:
        raise NnunetClError(f"{other} has no finished fine-tuning run to merge")
    # pre-trainings only OTHER made (label-aware methods pre-train per fraction and fold) come along with their runs
    relatives += sorted(os.path.relpath(path, other) for theirs, mine, job in pretrainings
                        if not pretrain_done(mine, job) for path in pretraining_paths(theirs, job))
    present = [relative for relative in relatives if os.path.exists(os.path.join(output, relative))]
    if present:
        raise NnunetClError(f"{os.path.join(output, present[0])} exists already ({len(present)} such paths): {output} "
                            "holds that run or pre-training too (finished or not); move one of them away first")
    with FolderLock(output, "benchmark_records.py merge", fix="wait for that benchmark to finish"):
        for relative in relatives:
            source, target = os.path.join(other, relative), os.path.join(output, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.isdir(source):
                # copied beside, then renamed: a merge killed midway leaves no half fold folder that reads as a run
                partial = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.merging.tmp")
                shutil.rmtree(partial, ignore_errors=True)
                shutil.copytree(source, partial)
                os.rename(partial, target)
            else:
                shutil.copyfile(source, target)
    return [run.log_name for _, run in finished]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("save", "restore", "check", "merge"))
    parser.add_argument("source", help="save: the benchmark output; restore / check: the records folder; merge: the "
                                       "output whose finished runs are copied")
    parser.add_argument("target", help="save: the records folder; restore / check / merge: the benchmark output")
    args = parser.parse_args(argv)
    try:
        if args.action == "save":
            files = save(args.source, args.target)
            print(f"{len(files)} records of {args.source} in {args.target}")
        elif args.action == "restore":
            copied = restore(args.source, args.target)
            print(f"{len(copied)} records restored into {args.target}; continue with the benchmark's own command")
        elif args.action == "merge":
            merged = merge(args.source, args.target)
            print(f"{len(merged)} finished runs merged into {args.target} ({', '.join(merged)}); write its report "
                  "with the benchmark's own command and --report-only")
        else:
            states = check(args.source, args.target)
            for relative, state in states:
                print(f"{state:<8} {relative}")
            if any(state != "same" for _, state in states):
                sys.exit(1)
    except NnunetClError as error:
        print(f"benchmark_records: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
