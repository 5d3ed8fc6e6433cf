"""The shared-memory DDP hook: the same averaged gradients as gloo's all-reduce, no file left behind."""

import os
import platform

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.servers import free_port
from vae_core.distributed import allreduce

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="the hook is used on x86-64 only"
)


def _train(rank: int, world: int, port: int, shared: bool, out: dict) -> None:
    """A few DDP steps of a small MLP on rank-specific data; the final weights go to out[rank]."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(12, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))
    params = list(model.parameters())
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, **(allreduce.ddp_arguments(params) if shared else {})
    )
    if shared:
        allreduce.install(ddp, rank, world)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
    for _ in range(5):
        x = torch.randn(8, 12, generator=g)
        optimizer.zero_grad()
        ddp(x).pow(2).mean().backward()
        optimizer.step()
    out[rank] = [p.detach().clone() for p in model.parameters()]
    out[f"grad storages {rank}"] = len({p.grad.untyped_storage().data_ptr() for p in model.parameters()})
    dist.destroy_process_group()


def _weights(shared: bool, world: int = 2) -> dict:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_train, args=(world, free_port(), shared, out), nprocs=world, join=True)
        return dict(out)


def _leftovers() -> set[str]:
    return {n for n in os.listdir(allreduce.SHM_DIR) if n.startswith("vaeflow-ddp-")}


@pytest.mark.timeout(120)
def test_ranks_averaging_through_shared_memory_end_with_gloos_weights_and_leave_no_file():
    before = _leftovers()
    gloo, shared = _weights(shared=False), _weights(shared=True)
    for a, b in zip(shared[0], shared[1], strict=True):
        assert torch.equal(a, b)  # every rank sums the slots in the same order: the same bits
    for a, b in zip(shared[0], gloo[0], strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(shared[0][0], _initial_first_layer())  # it trained
    # With the hook every gradient is a view of DDP's one bucket (not copied in and out of it).
    assert shared["grad storages 0"] == shared["grad storages 1"] == 1
    assert gloo["grad storages 0"] == len(shared[0])
    assert _leftovers() == before  # rank 0 unlinked the file once every rank had mapped it


def _initial_first_layer() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.nn.Linear(12, 9).weight.detach()


def test_a_rank_whose_peer_never_hands_over_gives_up_naming_it(tmp_path):
    hook = allreduce.SharedMemoryAllReduce(f"vaeflow-ddp-test-{os.getpid()}", 0, 3, 4, timeout_s=0.2)
    os.unlink(os.path.join(allreduce.SHM_DIR, f"vaeflow-ddp-test-{os.getpid()}"))
    hook.seq[0] = hook.seq[2] = 1
    with pytest.raises(TimeoutError, match=r"ranks \[1\] did not hand over gradient bucket 1 within 0.2s"):
        hook._wait_for_all(1)


def test_the_hook_is_used_only_for_float32_cpu_workers_on_one_node():
    params = list(torch.nn.Linear(4, 2).parameters())
    cpu = torch.device("cpu")
    assert allreduce.usable(params, cpu, 2, same_node=True) is None
    assert allreduce.usable(params, cpu, 1, same_node=True) == "one worker"
    assert allreduce.usable(params, cpu, 2, same_node=False) == "the workers are on more than one node"
    assert allreduce.usable(params, torch.device("cuda"), 2, same_node=True) == "training on cuda"
    half = list(torch.nn.Linear(4, 2).to(torch.float64).parameters())
    assert allreduce.usable(half, cpu, 2, same_node=True) == "parameters are not all float32"
    assert allreduce.ddp_arguments(params)["bucket_cap_mb"] > 10 * 4 / 2**20
