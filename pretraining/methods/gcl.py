"""GCL's global loss (Chaitanya et al. 2020), as the baseline the PCL/JCL/SuperCL papers compare with.

Each volume is cut into ``partitions`` (S, default 4) equal parts along z; a slice at normalised
position p belongs to partition ``min(floor(p * S), S - 1)``. Slices in the same partition, from any
volume and either view, are positives; everything else is a negative. Same views, head and kernel as
SimCLR/PCL (:class:`InstanceContrastMethod`): only the positive mask differs.

Differences from the original TensorFlow code (``domain_specific_cl``), on purpose:

* the loss is the shared SupCon L_out with the full denominator, i.e. the ``gcl`` mode of PCL's
  ``SupConLoss`` that Zeng et al.'s comparisons ran. The original G^D leaves all same-partition images
  except the current positive out of each pair's denominator (a per-pair denominator);
* slices are drawn uniformly (as for PCL) instead of "m volumes x one slice per partition"; with a
  batch of 32 and S = 4 every partition is present with several slices;
* no all-zero batch slots (the original stitching loop stops one block early and feeds 16 blank
  images as anchors and negatives);
* the head is the package's GAP -> Linear -> batch standardisation -> ReLU -> Linear on the bottleneck
  (``InstanceProjectionHead``; the original flattens a fixed 6x6 bottleneck), the augmentations the
  package's T_var.
"""

from __future__ import annotations

from nnunet_cl.validation import positive_int
from nnunet_cl.masks import partition_positive_mask
from nnunet_cl.pretraining.methods import register
from nnunet_cl.pretraining.methods.instance import InstanceContrastMethod


@register
class GCL(InstanceContrastMethod):
    name = "gcl"
    trainer_name = "GCL"
    supports_distributed = True   # the parent's gathering compute_loss
    default_options = {**InstanceContrastMethod.default_options, "partitions": 4}

    @classmethod
    def check_options(cls, options: dict) -> None:
        super().check_options(options)
        positive_int(options["partitions"], "gcl option partitions", "the paper uses 4")

    def positive_mask(self, batch):
        return partition_positive_mask(batch["positions"], n_views=2, partitions=self.options["partitions"])
