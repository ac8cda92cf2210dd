"""Fine-tuning trainers that start from a pre-trained nnunet-cl checkpoint.

``nnUNetTrainer<Method>Init`` loads the encoder part of the keys the checkpoint lists as pre-trained (all
of them with ``nnUNet_cl_pretrained_parts=all``, e.g. JCL's first decoder blocks too). The other layers
keep nnU-Net's fresh initialisation. The checkpoint is looked up at

    $nnUNet_results/<Dataset>/nnunet_cl/<method folder>__<plans>__<configuration>/checkpoint_final.pth

unless ``nnUNet_cl_pretrained_checkpoint`` names a file.

``nnUNet_cl_pretrained_parts``: ``encoder`` (default) loads only the encoder of a checkpoint, also of the
methods that pre-trained decoder blocks too (JCL, semi_local; JCL's decoder start cost 1.2 DSC points after
2800 fine-tuning steps, README Results); ``all`` loads every prefix the method trained.
``nnUNet_cl_weight_norm_reset=1`` rescales every loaded conv weight to the norm nnU-Net's initialisation gave
that layer in this run (the network's own weight before loading; see :mod:`nnunet_cl.trainers.weight_norm`).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from nnunet_cl.checkpoint import load_checkpoint, load_pretrained_part
from nnunet_cl.errors import NnunetClError
from nnunet_cl.nnunet_context import CONFIGURATION, PRETRAINED_CHECKPOINT, pretraining_folder, results_folder_name
from nnunet_cl.trainers.base import nnUNetTrainerCL, unwrap_network
from nnunet_cl.trainers.finetune_schedules import DEFAULT_SCHEDULE, PEAK_LR_ENV, SCHEDULE_ENV, FinetuneChoice
from nnunet_cl.trainers.weight_norm import RESET_ENV, conv_weight_norms, rescale_to_norms, weight_norm_reset_from_env

CHECKPOINT_ENV = "nnUNet_cl_pretrained_checkpoint"
PARTS_ENV = "nnUNet_cl_pretrained_parts"
PARTS = ("all", "encoder")
DEFAULT_PARTS = "encoder"
ENCODER_PREFIX = "encoder."
FINETUNE_LEVER_VARIABLES = (SCHEDULE_ENV, PEAK_LR_ENV, PARTS_ENV, RESET_ENV)


def finetune_levers_from_env(num_epochs: Optional[int] = None, length_setting: str = "nnUNet_cl_num_epochs") -> dict:
    """The fine-tuning levers set in the environment, ``{variable: value}``, each checked (one NnunetClError), and
    the schedule against a run length when ``num_epochs`` is given: what a benchmark records to keep runs with
    different levers apart."""
    choice = FinetuneChoice()
    if num_epochs is not None:
        choice.check_length(num_epochs, length_setting)
    pretrained_parts_from_env()
    weight_norm_reset_from_env()
    return {v: os.environ[v] for v in FINETUNE_LEVER_VARIABLES if os.environ.get(v)}


def finetune_lever_defaults() -> dict:
    """What the trainers use for each lever variable left unset, ``{variable: value}``: a benchmark pins it with
    its budget, so that one output never mixes runs made under two versions of the defaults."""
    return {SCHEDULE_ENV: DEFAULT_SCHEDULE, PEAK_LR_ENV: "the schedule's", PARTS_ENV: DEFAULT_PARTS, RESET_ENV: "0"}


def pretrained_parts_from_env() -> str:
    """``nnUNet_cl_pretrained_parts``: "encoder" (unset) or "all"."""
    parts = os.environ.get(PARTS_ENV) or DEFAULT_PARTS
    if parts not in PARTS:
        raise NnunetClError(f"{PARTS_ENV}={parts!r} must be 'encoder' (only the encoder, the default) or 'all' "
                            f"(every part the method pre-trained, e.g. JCL's decoder blocks too)")
    return parts


def selected_prefixes(pretrained_prefixes, parts: str) -> list:
    """The checkpoint prefixes to load for ``parts`` ("all": every one; "encoder": those inside the encoder)."""
    if parts == "all":
        return list(pretrained_prefixes)
    return [p for p in pretrained_prefixes if p.startswith(ENCODER_PREFIX)]


class nnUNetTrainerPretrainedInit(nnUNetTrainerCL):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        parts, reset = pretrained_parts_from_env(), weight_norm_reset_from_env()   # before the output folder exists
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pretrained_parts = parts
        self.weight_norm_reset = reset
        self.loaded_prefixes = []

    def decoder_phase_frozen_prefixes(self) -> tuple:
        return tuple(self.loaded_prefixes)

    def method_options(self) -> dict:
        """Options that decide the checkpoint folder (label-aware methods: fraction and fold)."""
        return {}

    @classmethod
    def checkpoint_folder_name(cls) -> str:
        """The method's results sub-folder this trainer class reads (label-aware ones: per fraction and fold)."""
        from nnunet_cl.pretraining.methods import get_method
        method = get_method(cls.pretraining_method)
        return method.folder_name(method.resolve_options({}))

    @classmethod
    def initialisation(cls) -> str:
        return (f"the encoder of nnunet_cl/{results_folder_name(cls.checkpoint_folder_name(), '<plans>', CONFIGURATION)}"
                f"/{PRETRAINED_CHECKPOINT}")

    def pretrained_checkpoint_path(self) -> str:
        if os.environ.get(CHECKPOINT_ENV):
            return os.environ[CHECKPOINT_ENV]
        from nnunet_cl.pretraining.methods import get_method
        from nnunetv2.paths import nnUNet_results
        method = get_method(self.pretraining_method)
        folder = method.folder_name(method.resolve_options(self.method_options()))
        return os.path.join(pretraining_folder(nnUNet_results, self.plans_manager.dataset_name, folder,
                                               self.plans_manager.plans_name, self.configuration_name),
                            PRETRAINED_CHECKPOINT)

    def pretrain_hint(self) -> str:
        """The command that makes this trainer's checkpoint; ``method_options`` become its flags
        (label-aware methods: ``--fraction 0.1 --fold 0``)."""
        flags = "".join(f" --{key} {value:g}" if isinstance(value, float) else f" --{key} {value}"
                        for key, value in self.method_options().items())
        return (f"run: nnunet_cl pretrain -d {self.plans_manager.dataset_name} -m {self.pretraining_method}{flags} "
                f"-p {self.plans_manager.plans_name}")

    def check_checkpoint(self, checkpoint: dict, path: str) -> None:
        """Hook for stricter trainers (e.g. label-aware ones check fraction and fold)."""

    def initialize(self):
        super().initialize()
        path = self.pretrained_checkpoint_path()
        hint = f"{self.pretrain_hint()} (or set {CHECKPOINT_ENV})"
        checkpoint = load_checkpoint(path, pretrain_hint=hint)
        self.check_checkpoint(checkpoint, path)
        network = unwrap_network(self.network)
        prefixes = selected_prefixes(checkpoint["pretrained_prefixes"], self.pretrained_parts)
        if not prefixes:
            raise NnunetClError(f"{PARTS_ENV}={self.pretrained_parts}: {path} pre-trained no encoder part (its prefixes: "
                                f"{checkpoint['pretrained_prefixes']}); set {PARTS_ENV}=all")
        initial_norms = conv_weight_norms(network)     # nnU-Net's initialisation of this very network
        loaded = load_pretrained_part(network, checkpoint, path, expected_method=self.pretraining_method,
                                      prefixes=prefixes)
        self.loaded_prefixes = prefixes
        skipped = [p for p in checkpoint["pretrained_prefixes"] if p not in prefixes]
        self.print_to_log_file(f"nnunet_cl: loaded {len(loaded)} pre-trained tensors under {prefixes} from {path} "
                               f"(method {checkpoint['method']}); {PARTS_ENV}={self.pretrained_parts}"
                               + (f", not loaded: {skipped}" if skipped else "")
                               + "; all other layers keep nnU-Net's initialisation")
        if self.weight_norm_reset:
            ratios = rescale_to_norms(network, loaded, initial_norms)
            self.print_to_log_file(f"nnunet_cl: {RESET_ENV}=1: {len(ratios)} loaded conv weights rescaled to the norms "
                                   f"of nnU-Net's initialisation (loaded norm / initial norm: "
                                   + (", ".join(f"{name} {ratio:.3f}" for name, ratio in ratios.items()) or "none")
                                   + ")")
