"""Gradient averaging through shared memory for DDP workers on one node: a DDP communication hook.

Why: on CPU, torch's gloo all-reduce goes through loopback TCP and wakes a thread per message, so
for a small model on a few cores the time goes to synchronisation, not to moving bytes; ranks that
share memory can hand their gradients over without either (bench/results/ddp_handover.json; the
same training through gloo: train_throughput_ddp.json, `ray_gloo_allreduce`).

How: one file in /dev/shm per worker group, mapped by every rank and unlinked as soon as all have
mapped it: a sequence counter per rank (each on its own cache line) and two generations of one slot
per rank, as large as all the gradients. For each bucket, a rank copies its gradients into its slot
of generation n % 2, publishes n in its counter, waits until every rank has published n, then sums
the slots in rank order (the same order on every rank, so all ranks get the same bits) and divides by
the world size, as DDP's default hook does. With two generations one wait per bucket suffices: a rank
writes generation n only after every rank published n - 1, that is, finished reading n - 2.

Used when every rank is on one node, trains on CPU, and the machine is x86-64, whose stores become
visible to other cores in program order (a published counter means the slot is written; other
architectures would need memory fences, which Python cannot issue). A waiting rank gives up after
`timeout_s` (a peer died; Ray Train then restarts the worker group).
"""

# No `from __future__ import annotations`: DDP compares the hook's annotations with the real types.
import mmap
import os
import platform
import time
import uuid

import numpy as np
import torch
import torch.distributed as dist

SHM_DIR = "/dev/shm"
LINE = 64  # bytes: one cache line per rank's counter, so ranks never write the same line
DEFAULT_TIMEOUT_S = 600.0


def usable(params: list[torch.Tensor], device: torch.device, world: int, same_node: bool) -> str | None:
    """Why the shared-memory hook cannot be used for training `params` on `device`, or None."""
    if world < 2 or not same_node:
        return "the workers are on more than one node" if world > 1 else "one worker"
    if device.type != "cpu":
        return f"training on {device.type}"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{platform.machine()} needs memory fences"
    if any(p.dtype != torch.float32 for p in params):
        return "parameters are not all float32"
    if not os.path.isdir(SHM_DIR):
        return f"no {SHM_DIR}"
    need = _size(world, sum(p.numel() for p in params))
    st = os.statvfs(SHM_DIR)
    if st.f_bavail * st.f_frsize < 2 * need:
        return f"{SHM_DIR} has less than {2 * need:,} bytes free"
    return None


def _size(world: int, numel: int) -> int:
    return LINE * world + 2 * world * numel * 4


class SharedMemoryAllReduce:
    """A DDP comm hook (`ddp.register_comm_hook(None, hook.reduce)`) averaging float32 gradient buckets of
    `world` ranks through one shared-memory file; `numel` is the number of gradient values."""

    def __init__(self, name: str, rank: int, world: int, numel: int, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.rank, self.world, self.numel, self.timeout_s = rank, world, numel, timeout_s
        size = _size(world, numel)
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.seq = np.frombuffer(self._map, dtype=np.int64, count=LINE // 8 * world)[:: LINE // 8]  # (W,)
        values = np.frombuffer(self._map, dtype=np.float32, offset=LINE * world)
        self.slots = torch.from_numpy(values).view(2, world, numel)  # (generation, rank, value)
        self.calls = 0  # buckets reduced so far; every rank calls in the same order
        self.offset = 0  # where this step's next bucket starts in a slot

    def reduce(self, state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        grads = bucket.buffer()  # (n,) this rank's flattened gradients of the bucket
        if bucket.index() == 0:  # DDP hands buckets over in index order, from 0 each step
            self.offset = 0
        lo, hi = self.offset, self.offset + grads.numel()
        if hi > self.numel:
            raise RuntimeError(f"gradient bucket ends at {hi:,} values, past the {self.numel:,} mapped")
        self.offset = hi
        self.calls += 1
        slots = self.slots[self.calls % 2]  # (W, numel)
        slots[self.rank, lo:hi].copy_(grads)
        self.seq[self.rank] = self.calls  # publish: the slot is written
        self._wait_for_all(self.calls)
        # Sum straight into the bucket, in rank order (usable(): world >= 2): one pass fewer than copying
        # slot 0 in first, with the same bits.
        torch.add(slots[0, lo:hi], slots[1, lo:hi], out=grads)
        for r in range(2, self.world):
            grads.add_(slots[r, lo:hi])
        grads.div_(self.world)
        fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        fut.set_result(grads)
        return fut

    def _wait_for_all(self, n: int) -> None:
        deadline = None
        while (self.seq < n).any():
            os.sched_yield()  # releases the GIL and the core while peers catch up
            if deadline is None:
                deadline = time.monotonic() + self.timeout_s
            elif time.monotonic() > deadline:
                late = np.flatnonzero(self.seq < n).tolist()
                raise TimeoutError(
                    f"rank {self.rank}: ranks {late} did not hand over gradient bucket {n} "
                    f"within {self.timeout_s:g}s"
                )


def ddp_arguments(params: list[torch.Tensor]) -> dict[str, float | bool]:
    """DDP arguments for the hook: all gradients in one bucket, one hand-over per step instead of one
    per bucket (a rank waits for the slowest at each), and no small first bucket (an explicit
    bucket_cap_mb also caps the first); gradients as views of that bucket, so DDP does not copy them
    into it after backward and back out after the hook (the weights come out the same)."""
    return {"bucket_cap_mb": sum(p.numel() for p in params) * 4 / 2**20 + 1, "gradient_as_bucket_view": True}


def install(ddp: torch.nn.parallel.DistributedDataParallel, rank: int, world: int) -> SharedMemoryAllReduce:
    """Register the hook on `ddp` (before its first backward pass); every rank calls this together.

    Rank 0 names the file and broadcasts the name over the process group; once every rank has mapped
    it, rank 0 unlinks it, so nothing is left in /dev/shm even if a worker is killed later.
    """
    names = [f"vaeflow-ddp-{uuid.uuid4().hex}" if rank == 0 else None]
    dist.broadcast_object_list(names, src=0)
    numel = sum(p.numel() for p in ddp.module.parameters() if p.requires_grad)
    hook = SharedMemoryAllReduce(str(names[0]), rank, world, numel)
    dist.barrier()
    if rank == 0:
        os.unlink(os.path.join(SHM_DIR, str(names[0])))
    ddp.register_comm_hook(None, hook.reduce)
    return hook
