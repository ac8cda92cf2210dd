"""Init trainers of label-aware pre-training methods (semi_local): the checkpoint must come from the
same labelled subset, i.e. the same label fraction and the same fold as the fine-tuning run.

Pre-training on the 25 % subset and fine-tuning a 10 % trainer would let labels the 10 % run may not
see into its initialisation; another fold would even use labels of its validation cases. Both are
refused with one clear error. The checkpoint is looked up at the method's folder for this trainer's
fraction and fold (``semi_local_frac10_fold0`` ...), or taken from ``nnUNet_cl_pretrained_checkpoint``
(and then checked).
"""

from __future__ import annotations

from nnunet_cl.errors import NnunetClError
from nnunet_cl.trainers.pretrained_init import nnUNetTrainerPretrainedInit


class nnUNetTrainerLabelAwarePretrainedInit(nnUNetTrainerPretrainedInit):
    def method_options(self) -> dict:
        return {"fraction": self.label_fraction, "fold": self.fold}

    @classmethod
    def checkpoint_folder_name(cls) -> str:
        from nnunet_cl.pretraining.methods import get_method
        method = get_method(cls.pretraining_method)
        return method.folder_name(dict(method.default_options, fraction=cls.label_fraction, fold="<fold>"))

    def check_checkpoint(self, checkpoint: dict, path: str) -> None:
        options = (checkpoint.get("config") or {}).get("options") or {}
        if "fraction" not in options or "fold" not in options:
            raise NnunetClError(f"{path} records no label fraction / fold; {self.pretrain_hint()}")
        same_fraction = abs(float(options["fraction"]) - self.label_fraction) < 1e-9
        if not same_fraction or str(options["fold"]) != str(self.fold):
            raise NnunetClError(
                f"{path} was pre-trained on the labelled subset of fraction {float(options['fraction']):g}, fold "
                f"{options['fold']}, but {type(self).__name__} trains fraction {self.label_fraction:g}, fold "
                f"{self.fold}; it must see no other labels: {self.pretrain_hint()}")
