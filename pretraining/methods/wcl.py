"""WCL (Zheng et al., ICCV 2021), with the nnU-Net encoder as backbone, as SuperCL compares with it.

Two projection heads on the pooled bottleneck of two T_var views per slice:

* instance head z: SimCLR's loss (the other view of the same slice is the one positive);
* graph head h: per view, the 1-nearest-neighbour graph of the B projections h (cosine), symmetrised,
  its connected components = weak labels (``nearest_neighbour_components``). Each view is then
  supervised by the graph of the OTHER view, contrasting only within its own view:

      L_graph = 1/2 [ SupCon(h1 within view 1, labels of view 2) + SupCon(h2 within view 2, labels of view 1) ]

  computed as one kernel call with the view as leading block dimension (every node of a 1-NN graph
  has a neighbour, so every anchor has a positive and the mean over both blocks is exactly the 1/2 sum).

L = L_instance + graph_weight * L_graph (WCL: weight 1). This is SuperCL's IGCP without ASP: the graph
is built on the projections themselves rather than on averaged-superpixel maps.

Choices: the package's GAP -> Linear -> batch standardisation -> ReLU -> Linear heads (WCL's are
Linear-BN-ReLU-Linear-BN-ReLU-Linear on a ResNet feature); the graph is built on the current batch
only (no memory bank, which the WCL authors report helps only marginally); WCL's weak-augmentation
warm-up is not reproduced.
"""

from __future__ import annotations

import torch

from nnunet_cl import distributed
from nnunet_cl.graph_labels import nearest_neighbour_components
from nnunet_cl.heads import InstanceProjectionHead
from nnunet_cl.losses import multi_positive_info_nce
from nnunet_cl.masks import equal_label_mask, same_sample_positive_mask
from nnunet_cl.pretraining.methods import register
from nnunet_cl.pretraining.methods.instance import InstanceContrastMethod
from nnunet_cl.validation import finite_float


def cross_view_graph_mask(graph_embeddings: torch.Tensor) -> torch.Tensor:
    """``[V=2, B, D] -> [2, B, B]``: block v is the weak-label mask of the other view's 1-NN graph."""
    labels = torch.stack([nearest_neighbour_components(view) for view in graph_embeddings])
    return equal_label_mask(labels.flip(0))


def graph_loss(graph_embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """WCL's L_graph for view-major ``[2, B, D]`` graph-head projections: SupCon within each view,
    positives from the other view's 1-NN-graph components."""
    return multi_positive_info_nce(graph_embeddings, cross_view_graph_mask(graph_embeddings), temperature=temperature)


@register
class WCL(InstanceContrastMethod):
    supports_distributed = True   # both heads' projections are gathered: graphs over the global batch
    name = "wcl"
    trainer_name = "WCL"
    default_options = {**InstanceContrastMethod.default_options, "graph_weight": 1.0}

    @classmethod
    def check_options(cls, options: dict) -> None:
        super().check_options(options)
        finite_float(options["graph_weight"], "wcl option graph_weight", low=0.0)

    def __init__(self, network, context, options=None):
        super().__init__(network, context, options)
        bottleneck = self.encoder_channels[-1]
        self.graph_head = InstanceProjectionHead(bottleneck, bottleneck, self.options["projection_dim"])

    def positive_mask(self, batch):
        return same_sample_positive_mask(len(batch["positions"]), n_views=2)

    def compute_loss(self, network, batch):
        bottleneck = network.encoder(batch["views"])[-1]
        temperature = self.options["temperature"]
        # Under torchrun: the global batch of every rank, view-major (see nnunet_cl.distributed).
        instance = distributed.gather_views(self.instance_head(bottleneck), n_views=2)
        global_batch = dict(batch, positions=distributed.gather(batch["positions"]))
        instance_loss = multi_positive_info_nce(instance, self.positive_mask(global_batch).to(instance.device),
                                                temperature=temperature)
        graph = distributed.gather_views(self.graph_head(bottleneck), n_views=2)
        graph = graph.unflatten(0, (2, -1))                             # view-major rows -> [2, B, D]
        weak_label_loss = graph_loss(graph, temperature)
        total = instance_loss + self.options["graph_weight"] * weak_label_loss
        return total, {"instance": float(instance_loss.detach()), "graph": float(weak_label_loss.detach())}
