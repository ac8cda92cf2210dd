"""DDP pre-training on CPU (gloo): the global-batch loss of 2 processes equals the single-process loss on the
concatenated batch, for a few iterations (losses and resulting weights); and torchrun drives the real CLI."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.integration

ITERATIONS = 3
GLOBAL_BATCH = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(method):
    from nnunet_cl.pretraining.engine import PretrainConfig
    return PretrainConfig(dataset="990", method=method, epochs=1, iters_per_epoch=ITERATIONS,
                          batch_size=GLOBAL_BATCH, device="cpu", seed=7)


def local_part(batch, rank, world):
    """Rank ``rank``'s share of a view-major global batch (views [V*B], per-sample tensors [B])."""
    b = GLOBAL_BATCH // world
    views = batch["views"].reshape(2, GLOBAL_BATCH, *batch["views"].shape[1:])[:, rank * b:(rank + 1) * b]
    return {"views": views.reshape(2 * b, *views.shape[2:]), "positions": batch["positions"][rank * b:(rank + 1) * b]}


def ddp_worker(rank, world, port, method, batches_file, result_file):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from nnunet_cl import distributed
    from nnunet_cl.pretraining.engine import Pretrainer
    trainer = Pretrainer(make_config(method))
    losses = [trainer.train_step(local_part(batch, rank, world))["total"] for batch in torch.load(batches_file)]
    if rank == 0:
        torch.save({"losses": losses, "weights": trainer.network.state_dict()}, result_file)
    distributed.shutdown()


@pytest.mark.parametrize("method", ["pcl", "simclr"])
def test_two_process_global_batch_equals_single_process(synthetic_context, tmp_path, method):
    import numpy as np
    from nnunet_cl.pretraining.engine import Pretrainer

    single = Pretrainer(make_config(method))
    rng = np.random.default_rng(0)
    batches = [single.method.make_batch(single.slices, GLOBAL_BATCH, rng) for _ in range(ITERATIONS)]
    torch.save(batches, tmp_path / "batches.pt")

    mp.start_processes(ddp_worker, args=(2, free_port(), method, str(tmp_path / "batches.pt"),
                                         str(tmp_path / "ddp.pt")), nprocs=2, join=True, start_method="spawn")
    ddp = torch.load(tmp_path / "ddp.pt")

    single_losses = [single.train_step(batch)["total"] for batch in batches]
    assert ddp["losses"] == pytest.approx(single_losses, rel=1e-5, abs=1e-6)
    assert single_losses[0] != single_losses[-1]  # the weights did move between iterations
    for key, value in single.network.state_dict().items():
        assert torch.allclose(ddp["weights"][key], value, atol=1e-5, rtol=1e-4), key


def test_torchrun_cli(synthetic_env):
    synthetic_env.run(["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "nnunet_cl", "pretrain", "-d", "990",
                       "-m", "simclr", "--epochs", "1", "--iters-per-epoch", "2",
                       "--batch-size", "4", "-device", "cpu", "--seed", "3"], OMP_NUM_THREADS="1")
    folder = os.path.join(synthetic_env.results, "Dataset990_Synth", "nnunet_cl", "simclr__nnUNetPlans__2d")
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["world_size"] == 2 and checkpoint["iteration"] == 2
    log = open(os.path.join(folder, "pretrain_log.txt")).read()
    assert log.count("epoch 1/1") == 1  # only rank 0 writes
