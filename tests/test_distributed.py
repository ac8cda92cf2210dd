"""DDP pre-training on CPU (gloo): the global-batch loss of 2 processes equals the single-process loss on the
concatenated batch, for a few iterations (losses and resulting weights); and torchrun drives the real CLI."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from nnunet_cl.pretraining.methods import METHODS as REGISTRY

pytestmark = pytest.mark.integration

ITERATIONS = 2
GLOBAL_BATCH = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Options that keep each method small on the synthetic data; semi_local runs its supervised local stage
# (stage 1 is SimCLR / PCL, tested on their own) on the engine's batch.
METHOD_OPTIONS = {
    "semi_local": {"fraction": 0.5, "fold": "0", "stage1_fraction": 0.0, "stage2_batch_size": 0, "stride": 2},
}
# Every registered method that claims torchrun support (the engine refuses the others under torchrun).
METHODS = [name for name, cls in REGISTRY.items() if cls.supports_distributed]


def make_config(method):
    from nnunet_cl.pretraining.engine import PretrainConfig
    return PretrainConfig(dataset="990", method=method, epochs=1, iters_per_epoch=ITERATIONS,
                          batch_size=GLOBAL_BATCH, device="cpu", seed=7, options=dict(METHOD_OPTIONS.get(method, {})))


def double_precision(trainer):
    """float64 network and heads (the SGD holds the same parameters): the two runs then agree to ~1e-12
    instead of float32 noise, which momentum SGD and the heads' batch standardisation amplify."""
    trainer.network.double()
    trainer.method.double()
    return trainer


def local_part(batch, rank, world):
    """Rank ``rank``'s share of a global batch: per-sample tensors ``[B, ...]`` are cut in rank order;
    view-major tensors ``[2B, ...]`` (views of sample i at rows i and B + i) per view."""
    b = GLOBAL_BATCH // world
    part = {}
    for key, value in batch.items():
        if value.shape[0] == GLOBAL_BATCH:
            part[key] = value[rank * b:(rank + 1) * b]
        elif value.shape[0] == 2 * GLOBAL_BATCH:
            views = value.reshape(2, GLOBAL_BATCH, *value.shape[1:])[:, rank * b:(rank + 1) * b]
            part[key] = views.reshape(2 * b, *value.shape[1:])
        else:
            raise AssertionError(f"batch[{key!r}] has {value.shape[0]} rows, neither B nor 2B")
    return part


def ddp_worker(rank, world, port, method, batches_file, result_file):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from nnunet_cl import distributed
    from nnunet_cl.pretraining.engine import Pretrainer
    trainer = double_precision(Pretrainer(make_config(method)))
    losses = [trainer.train_step(local_part(batch, rank, world))["total"] for batch in torch.load(batches_file)]
    if rank == 0:
        torch.save({"losses": losses, "weights": trainer.network.state_dict(),
                    "heads": trainer.method.state_dict()}, result_file)
    distributed.shutdown()


@pytest.mark.parametrize("method", METHODS)
def test_two_process_global_batch_equals_single_process(synthetic_context, tmp_path, method):
    import numpy as np
    from nnunet_cl.pretraining.engine import Pretrainer

    single = double_precision(Pretrainer(make_config(method)))
    rng = np.random.default_rng(0)
    batches = [single.method.make_batch(single.slices, GLOBAL_BATCH, rng) for _ in range(ITERATIONS)]
    batches = [{k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
               for batch in batches]
    torch.save(batches, tmp_path / "batches.pt")

    mp.start_processes(ddp_worker, args=(2, free_port(), method, str(tmp_path / "batches.pt"),
                                         str(tmp_path / "ddp.pt")), nprocs=2, join=True, start_method="spawn")
    ddp = torch.load(tmp_path / "ddp.pt")

    initial = {k: v.clone() for k, v in single.network.state_dict().items()}
    initial.update({"head." + k: v.clone() for k, v in single.method.state_dict().items()})
    single_losses = [single.train_step(batch)["total"] for batch in batches]
    # In float64 only the summation order differs between 1 and 2 processes: losses and updates agree to
    # ~1e-12 relative (measured); a rank-local loss or rank-local batch statistics are off by percents.
    assert ddp["losses"] == pytest.approx(single_losses, rel=1e-9, abs=1e-12)
    assert single_losses[0] != single_losses[-1]  # the weights did move between iterations
    final_single = dict(single.network.state_dict(), **{"head." + k: v for k, v in single.method.state_dict().items()})
    final_ddp = dict(ddp["weights"], **{"head." + k: v for k, v in ddp["heads"].items()})
    moved = 0
    for key, value in final_single.items():
        if not value.is_floating_point():
            continue
        update_single, update_ddp = value - initial[key], final_ddp[key] - initial[key]
        size = float(update_single.norm())
        assert float((update_ddp - update_single).norm()) <= 1e-8 * size + 1e-12, key
        moved += size > 0
    assert moved > 0


def test_torchrun_cli(synthetic_env):
    synthetic_env.run(["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "nnunet_cl", "pretrain", "-d", "990",
                       "-m", "simclr", "--epochs", "1", "--iters-per-epoch", "2",
                       "--batch-size", "4", "-device", "cpu", "--seed", "3"], OMP_NUM_THREADS="1",
                      nnUNet_n_proc_DA="1")   # one loader worker per rank
    folder = synthetic_env.pretraining_folder("simclr")
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["world_size"] == 2 and checkpoint["iteration"] == 2
    log = open(os.path.join(folder, "pretrain_log.txt")).read()
    assert log.count("epoch 1/1") == 1  # only rank 0 writes
    assert "batches: 1 loader worker processes" in log
