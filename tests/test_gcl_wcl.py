"""The GCL and WCL baselines: partition mask, 1-NN-graph weak labels, losses against naive references
and hand-computed cases, their Init trainers, and one real pre-training step each."""

import dataclasses
import glob
import math
import os
from types import SimpleNamespace

import pytest
import torch

from nnunet_cl.graph_labels import nearest_neighbour_components
from nnunet_cl.losses import multi_positive_info_nce
from nnunet_cl.masks import partition_positive_mask, volume_partition
from nnunet_cl.pretraining.methods.gcl import GCL
from nnunet_cl.pretraining.methods.wcl import WCL, graph_loss
from tests.test_info_nce import naive_info_nce
from tests.test_jcl import unet


def same_partition(labels_a, labels_b):
    """Two labellings describe the same partition of the rows."""
    return torch.equal(labels_a[:, None] == labels_a[None, :], labels_b[:, None] == labels_b[None, :])


def naive_components(embeddings):
    """1-NN graph (cosine, self excluded, first index on ties) + components by repeated merging."""
    n = len(embeddings)
    unit = [e / e.norm() for e in embeddings]
    neighbour = [max((j for j in range(n) if j != i), key=lambda j: (float(unit[i] @ unit[j]), -j)) for i in range(n)]
    component = list(range(n))
    changed = True
    while changed:
        changed = False
        for i in range(n):
            a, b = component[i], component[neighbour[i]]
            if a != b:
                low = min(a, b)
                component = [low if c in (a, b) else c for c in component]
                changed = True
    return torch.tensor(component)


# ---------------------------------------------------------------- GCL
def test_volume_partition_hand_computed():
    positions = torch.tensor([0.05, 0.3, 0.5, 0.74, 0.99, 1.0])
    assert volume_partition(positions, 4).tolist() == [0, 1, 2, 2, 3, 3]   # p = 1.0 clamps to S - 1
    assert volume_partition(positions, 1).tolist() == [0] * 6


def test_partition_mask_matches_double_loop():
    positions = torch.rand(7, generator=torch.Generator().manual_seed(0))
    mask = partition_positive_mask(positions, n_views=2, partitions=3)
    for i in range(14):
        for j in range(14):
            pi, pj = float(positions[i % 7]), float(positions[j % 7])
            assert bool(mask[i, j]) == (min(int(pi * 3), 2) == min(int(pj * 3), 2)), (i, j)


def test_gcl_loss_hand_computed():
    # Slices in partitions 0 and 3, tau = 1, rows [e1, e2, e1, e2]: anchor 0's one positive is row 2
    # (s = 1), rows 1 and 3 give s = 0 -> -(1 - log(e + 2)); the same for every anchor.
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mask = partition_positive_mask(torch.tensor([0.1, 0.9]), n_views=2, partitions=4)
    loss = multi_positive_info_nce(torch.stack([e1, e2, e1, e2]), mask, temperature=1.0)
    assert loss.item() == pytest.approx(math.log(math.e + 2) - 1, abs=1e-6)


def test_gcl_compute_loss_matches_naive_reference():
    torch.manual_seed(0)
    network = unet().double()
    method = GCL(network, SimpleNamespace(patch_size=(32, 32)), {"partitions": 3, "temperature": 0.2}).double()
    positions = torch.tensor([0.1, 0.2, 0.5, 0.9, 0.95], dtype=torch.float64)
    batch = {"views": torch.randn(10, 1, 32, 32, dtype=torch.float64), "positions": positions}
    loss, _ = method.compute_loss(network, batch)
    with torch.no_grad():
        z = method.instance_head(network.encoder(batch["views"])[-1])
    partition = [min(int(float(p) * 3), 2) for p in positions]
    mask = [[partition[i % 5] == partition[j % 5] for j in range(10)] for i in range(10)]
    assert loss.item() == pytest.approx(naive_info_nce(z, mask, 0.2), rel=1e-9)


def test_gcl_rejects_zero_partitions():
    from nnunet_cl.errors import NnunetClError
    with pytest.raises(NnunetClError, match="gcl option partitions=0 must be an integer >= 1"):
        GCL(unet(), SimpleNamespace(patch_size=(32, 32)), {"partitions": 0})


# ---------------------------------------------------------------- 1-NN graph weak labels
def test_nearest_neighbour_components_hand_computed():
    # Unit vectors at 0, 10, 90, 100 and 200 degrees: 0<->10, 90<->100, and 200 -> 100 (100 deg away,
    # closer than 90 at 110 deg or 0 at 160 deg): components {0, 1} and {2, 3, 4}.
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 90.0, 100.0, 200.0]))
    points = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0], [0.5], [2.0], [1.0]])
    labels = nearest_neighbour_components(points)
    assert same_partition(labels, torch.tensor([0, 0, 1, 1, 1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_neighbour_components_match_naive(seed):
    embeddings = torch.randn(24, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    labels = nearest_neighbour_components(embeddings)
    assert same_partition(labels, naive_components(embeddings))
    assert torch.bincount(labels).min() >= 2   # every node has a neighbour: no singleton component


# ---------------------------------------------------------------- WCL
def test_wcl_graph_loss_hand_computed_uses_the_other_views_graph():
    # View 1 rows [e1, e1, e2, e2] -> components {0,1},{2,3}; view 2 rows [e1, e2, e1, e2] -> {0,2},{1,3}.
    # View-1 anchor 0 is supervised by view 2's graph: positive row 2 (e2, s = 0), candidates rows 1
    # (e1, s = 1), 2 and 3 (s = 0) -> -(0 - log(e + 2)) = log(e + 2); every anchor of both views alike.
    # (Supervising each view by its OWN graph would give log(e + 2) - 1.)
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    views = torch.stack([torch.stack([e1, e1, e2, e2]), torch.stack([e1, e2, e1, e2])])
    assert graph_loss(views, temperature=1.0).item() == pytest.approx(math.log(math.e + 2), abs=1e-6)


def test_wcl_compute_loss_matches_naive_reference():
    torch.manual_seed(2)
    network = unet().double()
    method = WCL(network, SimpleNamespace(patch_size=(32, 32)), {"temperature": 0.3, "graph_weight": 0.5}).double()
    batch_size = 6
    batch = {"views": torch.randn(2 * batch_size, 1, 32, 32, dtype=torch.float64),
             "positions": torch.rand(batch_size, dtype=torch.float64)}
    loss, terms = method.compute_loss(network, batch)
    with torch.no_grad():
        bottleneck = network.encoder(batch["views"])[-1]
        z, h = method.instance_head(bottleneck), method.graph_head(bottleneck)
    instance_mask = [[i % batch_size == j % batch_size for j in range(12)] for i in range(12)]
    want_instance = naive_info_nce(z, instance_mask, 0.3)
    per_view = []
    for view, other in ((0, 1), (1, 0)):
        labels = naive_components(h[other * batch_size:(other + 1) * batch_size])
        mask = [[bool(labels[i] == labels[j]) for j in range(batch_size)] for i in range(batch_size)]
        per_view.append(naive_info_nce(h[view * batch_size:(view + 1) * batch_size], mask, 0.3))
    want_graph = sum(per_view) / 2
    assert terms["instance"] == pytest.approx(want_instance, rel=1e-9)
    assert terms["graph"] == pytest.approx(want_graph, rel=1e-9)
    assert loss.item() == pytest.approx(want_instance + 0.5 * want_graph, rel=1e-9)


# ---------------------------------------------------------------- trainers and a real step
def test_init_trainers_exist_for_both():
    import nnunet_cl.trainers as trainers
    for stem, method in (("GCL", "gcl"), ("WCL", "wcl")):
        for suffix, fraction in (("", 1.0), ("_10pct", 0.1), ("_25pct", 0.25)):
            cls = getattr(trainers, f"nnUNetTrainer{stem}Init{suffix}")
            assert cls.pretraining_method == method and cls.label_fraction == fraction


@pytest.mark.integration
@pytest.mark.parametrize("method", ["gcl", "wcl"])
def test_one_pretraining_step_writes_an_encoder_checkpoint(synthetic_context, method):
    from nnunet_cl.checkpoint import load_checkpoint
    from nnunet_cl.pretraining.engine import PretrainConfig, Pretrainer

    final = Pretrainer(PretrainConfig(dataset="990", method=method, epochs=1, iters_per_epoch=1, batch_size=4)).run()
    checkpoint = load_checkpoint(final)
    assert checkpoint["method"] == method and checkpoint["pretrained_prefixes"] == ["encoder."]
    assert all(math.isfinite(v[-1]) for k, v in checkpoint["logging"].items() if k not in ("epoch", "lr"))


@pytest.mark.integration
def test_resume_with_heads_of_another_version_is_one_clear_error(synthetic_context):
    """--c on a checkpoint whose heads do not match the method's (other parameter names, as from another
    nnunet_cl version) stops with the fix, not a load_state_dict traceback."""
    from nnunet_cl.errors import NnunetClError
    from nnunet_cl.pretraining.engine import PretrainConfig, Pretrainer

    config = PretrainConfig(dataset="990", method="simclr", epochs=1, iters_per_epoch=1, batch_size=4)
    trainer = Pretrainer(config)
    trainer.run()
    for path in glob.glob(os.path.join(trainer.output_folder, "*.pth")):
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        checkpoint["heads"] = {k.replace("instance_head.mlp.1.", "instance_head.mlp.9."): v
                               for k, v in checkpoint["heads"].items()}
        torch.save(checkpoint, path)
    resumed = Pretrainer(dataclasses.replace(config, continue_training=True))
    with pytest.raises(NnunetClError, match="projection heads that do not match 'simclr'.*start without --c"):
        resumed.maybe_resume()
