"""Fine-tuning trainers that start from a pre-trained nnunet-cl checkpoint.

``nnUNetTrainer<Method>Init`` loads only the keys the checkpoint lists as pre-trained (the encoder for
instance-level methods; encoder + first decoder blocks for JCL ...). Decoder and segmentation layers
keep nnU-Net's fresh initialisation. The checkpoint is looked up at

    $nnUNet_results/<Dataset>/nnunet_cl/<method folder>__<plans>__<configuration>/checkpoint_final.pth

unless ``nnUNet_cl_pretrained_checkpoint`` names a file.
"""

from __future__ import annotations

import os

from nnunet_cl.checkpoint import load_checkpoint, load_pretrained_part
from nnunet_cl.trainers.base import nnUNetTrainerCL, unwrap_network

CHECKPOINT_ENV = "nnUNet_cl_pretrained_checkpoint"


class nnUNetTrainerPretrainedInit(nnUNetTrainerCL):
    def method_options(self) -> dict:
        """Options that decide the checkpoint folder (label-aware methods: fraction and fold)."""
        return {}

    def pretrained_checkpoint_path(self) -> str:
        if os.environ.get(CHECKPOINT_ENV):
            return os.environ[CHECKPOINT_ENV]
        from nnunet_cl.pretraining.methods import get_method
        from nnunetv2.paths import nnUNet_results
        method = get_method(self.pretraining_method)
        folder = method.folder_name(method.resolve_options(self.method_options()))
        return os.path.join(nnUNet_results, self.plans_manager.dataset_name, "nnunet_cl",
                            f"{folder}__{self.plans_manager.plans_name}__{self.configuration_name}",
                            "checkpoint_final.pth")

    def pretrain_hint(self) -> str:
        """The command that makes the missing checkpoint (label-aware trainers add --fraction / --fold)."""
        return (f"run: nnunet_cl pretrain -d {self.plans_manager.dataset_name} -m {self.pretraining_method} "
                f"-p {self.plans_manager.plans_name}")

    def check_checkpoint(self, checkpoint: dict, path: str) -> None:
        """Hook for stricter trainers (e.g. label-aware ones check fraction and fold)."""

    def initialize(self):
        super().initialize()
        path = self.pretrained_checkpoint_path()
        hint = f"{self.pretrain_hint()} (or set {CHECKPOINT_ENV})"
        checkpoint = load_checkpoint(path, pretrain_hint=hint)
        self.check_checkpoint(checkpoint, path)
        loaded = load_pretrained_part(unwrap_network(self.network), checkpoint, path,
                                      expected_method=self.pretraining_method)
        self.print_to_log_file(f"nnunet_cl: loaded {len(loaded)} pre-trained tensors under "
                               f"{checkpoint['pretrained_prefixes']} from {path} (method "
                               f"{checkpoint['method']}); all other layers keep nnU-Net's initialisation")
