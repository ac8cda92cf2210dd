"""Instance-level contrast on the encoder bottleneck: SimCLR and PCL.

Both use two spatially + intensity augmented views (T_var) per slice, a global-pool projection head
on the bottleneck, and the shared multi-positive InfoNCE. They differ only in the positive mask.
"""

from __future__ import annotations

import numpy as np
import torch

from nnunet_cl import distributed
from nnunet_cl.heads import InstanceProjectionHead
from nnunet_cl.losses import multi_positive_info_nce
from nnunet_cl.masks import positional_positive_mask, same_sample_positive_mask
from nnunet_cl.pretraining.methods import register
from nnunet_cl.pretraining.methods.base import PretrainingMethod
from nnunet_cl.pretraining.views import apply_per_sample, spatial_pipeline
from nnunet_cl.validation import finite_float, positive_int


def check_position_threshold(value, name: str) -> float:
    """Positions are normalised to [0, 1]: 0 leaves a slice without positives, above 1 all are positives."""
    return finite_float(value, name, low=0.0, high=1.0, low_open=True,
                        why="normalised slice distance below which two slices are positives")


class InstanceContrastMethod(PretrainingMethod):
    default_options = {"temperature": 0.1, "projection_dim": 128}
    supports_distributed = True   # compute_loss below gathers the global batch

    @classmethod
    def check_options(cls, options: dict) -> None:
        super().check_options(options)
        positive_int(options["projection_dim"], f"{cls.name} option projection_dim")

    def __init__(self, network, context, options=None):
        super().__init__(network, context, options)
        bottleneck = self.encoder_channels[-1]
        self.instance_head = InstanceProjectionHead(bottleneck, bottleneck, self.options["projection_dim"])
        self.spatial_views = spatial_pipeline(self.patch_size)

    def make_batch(self, slices, batch_size, rng):
        windows = slices.sample_windows(batch_size, rng)
        images = slices.images(windows)
        views = torch.cat([apply_per_sample(self.spatial_views, images), apply_per_sample(self.spatial_views, images)])
        positions = torch.tensor([w.position for w in windows], dtype=torch.float32)
        return {"views": views, "positions": positions}

    def positive_mask(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def instance_projections(self, network, views):
        return self.instance_head(network.encoder(views)[-1])

    def compute_loss(self, network, batch):
        # Under torchrun the loss sees the global batch (all ranks' embeddings, gathered with gradients).
        embeddings = distributed.gather_views(self.instance_projections(network, batch["views"]), n_views=2)
        global_batch = dict(batch, positions=distributed.gather(batch["positions"]))
        loss = multi_positive_info_nce(embeddings, self.positive_mask(global_batch).to(embeddings.device),
                                       temperature=self.options["temperature"])
        return loss, {"instance": float(loss.detach())}


@register
class SimCLR(InstanceContrastMethod):
    """SimCLR (Chen et al. 2020): the other view of the same slice is the only positive."""
    name = "simclr"
    trainer_name = "SimCLR"
    supports_distributed = True   # the parent's gathering compute_loss

    def positive_mask(self, batch):
        return same_sample_positive_mask(len(batch["positions"]), n_views=2)


@register
class PCL(InstanceContrastMethod):
    """PCL (Zeng et al. 2021): slices whose normalised positions differ by < ``position_threshold``."""
    name = "pcl"
    trainer_name = "PCL"
    supports_distributed = True   # the parent's gathering compute_loss
    default_options = {**InstanceContrastMethod.default_options, "position_threshold": 0.1}

    @classmethod
    def check_options(cls, options: dict) -> None:
        super().check_options(options)
        check_position_threshold(options["position_threshold"], f"{cls.name} option position_threshold")

    def positive_mask(self, batch):
        return positional_positive_mask(batch["positions"], n_views=2, threshold=self.options["position_threshold"])
