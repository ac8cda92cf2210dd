"""The child processes of ``nnunet_cl benchmark``: their environment, their logs, their progress lines and
their stop. Every step (conversion, preprocessing, pre-training, fine-tuning, prediction) is a real
console script run as a subprocess in its own process group."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta

from nnunet_cl.console_scripts import console_script
from nnunet_cl.errors import NnunetClError
from nnunet_cl.tools.benchmark_plan import Budget, BenchmarkLayout

# Lines of the children's output echoed to the console (everything goes to the run's log file).
CONSOLE_LINE = re.compile(r"(: Epoch \d+\s*$|Pseudo dice|: epoch \d+/\d+ |[Ee]rror|Traceback|pre-trained checkpoint:)")


class ChildProcesses:
    """Runs one child at a time; ``output`` (set once the benchmark folder is known) holds ``logs/``."""

    def __init__(self, budget: Budget, processes: int, verbose: bool = False):
        self.budget = budget
        self.processes = processes
        self.verbose = verbose
        self.output = None
        self.current = None

    def env(self, training: bool) -> dict:
        env = dict(os.environ)
        env["nnUNet_def_n_proc"] = str(self.processes)
        if training:
            from nnunet_cl.ext_trainer import ext_trainer_value
            if self.budget.device == "cpu":
                env["nnUNet_n_proc_DA"] = "0"  # on few cores, augmentation workers only compete with torch
            env["nnUNet_extTrainer"] = ext_trainer_value()
            env.pop("nnUNet_cl_plot_every", None)
            for variable, value in self.budget.finetune_env().items():
                if value is None:
                    env.pop(variable, None)
                else:
                    env[variable] = str(value)
            if not self.budget.test_time_augmentation:
                env["nnUNet_cl_val_mirroring"] = "0"   # the final validation, as --disable_tta for test images
            else:
                env.pop("nnUNet_cl_val_mirroring", None)
            if self.budget.finetune_epochs is not None:
                # Short runs: a checkpoint_latest.pth every ~1/8 of the run, so a killed run resumes (--c).
                env["nnUNet_cl_save_every"] = str(max(1, self.budget.finetune_epochs // 8))
                env["nnUNet_cl_plot_every"] = env["nnUNet_cl_save_every"]     # progress.png, same rhythm
        else:
            env.pop("nnUNet_n_proc_DA", None)   # 0 breaks nnU-Net's planner (torch.set_num_threads(0))
        return env

    def execute(self, args: list, log_name: str, what: str, training: bool = True, total_epochs=None) -> None:
        command = [console_script(args[0])] + [str(a) for a in args[1:]]
        log = BenchmarkLayout(self.output, "").log_file(log_name)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        print(f"    $ {' '.join(shlex.quote(c) for c in [args[0]] + command[1:])}\n    log: {log}", flush=True)
        start = time.time()
        with open(log, "a", buffering=1) as log_file:   # line-buffered: the log is readable live
            log_file.write(f"\n===== {datetime.now():%Y-%m-%d %H:%M:%S} {' '.join(command)}\n")
            log_file.flush()
            # Own process group: on Ctrl-C / SIGTERM the whole child tree (nnU-Net's pools) is stopped.
            proc = subprocess.Popen(command, env=self.env(training), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
            self.current = proc
            try:
                for line in proc.stdout:
                    log_file.write(line)
                    if self.verbose or CONSOLE_LINE.search(line):
                        print("      " + progress_line(line.rstrip(), total_epochs, start), flush=True)
                code = proc.wait()
            finally:
                self.stop()
        if code != 0:
            tail = open(log).read().splitlines()[-25:]
            print("\n".join("      | " + t for t in tail), file=sys.stderr)
            raise NnunetClError(f"{what} failed ({args[0]} exited with code {code}); see {log}. Fix the cause and "
                                "rerun the same command: finished steps are skipped")

    def stop(self) -> None:
        proc, self.current = self.current, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


NNUNET_EPOCH_LINE = re.compile(r": Epoch (\d+)\s*$")    # nnU-Net's "<time>: Epoch 3" (0-based)


def plain_numbers(text: str) -> str:
    """numpy scalars shown as numbers: "[np.float32(0.82)]" -> "[0.82]" (nnU-Net's pseudo Dice under numpy 2)."""
    return re.sub(r"np\.float(?:16|32|64)\(([^()]*)\)", r"\1", text)


def progress_line(line: str, total_epochs, start: float) -> str:
    """nnU-Net's "<time>: Epoch 3" -> "epoch 4/20 (0:01:10)"; other lines without their timestamp and with
    ``plain_numbers``."""
    match = NNUNET_EPOCH_LINE.search(line)
    if match:
        return f"epoch {int(match.group(1)) + 1}/{total_epochs or '?'} ({timedelta(seconds=round(time.time() - start))})"
    line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?: ", "", line)
    return plain_numbers(line)
