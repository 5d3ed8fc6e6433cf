"""Where the time of 2 data-parallel workers goes on one CPU node, without Ray: the product's VAE,
Adam and `fit`, 2 processes x 1 torch thread with batch 64 each, against the plain loop with 2 threads
and batch 128 (train_throughput's baseline) in the same run.

Variants, alternating over ROUNDS rounds; each variant's figure is the median of its round medians:
- solo: the 2 processes train independently, no DDP, nothing exchanged: what 2 x 1 thread can do;
- noop: DDP with a communication hook that hands nothing over: the cost of the DDP wrapper;
- shared: DDP with the product's shared-memory hook (vae_core.distributed.allreduce), as the Ray Train
  workers of train_throughput_ddp run it; both ranks end with the same weights (checked).
value = shared / plain, the plain-torch counterpart of train_throughput_ddp (its target, 0.8); the
steps between solo, noop and shared split the rest.
"""

# No `from __future__ import annotations`: DDP compares the hook's annotations with the real types.
import os
import socket
import statistics
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench._results import write_result
from vae_core.config import VaeflowConfig
from vae_core.data.packaged import mnist_table
from vae_core.distributed import allreduce
from vae_core.models.families import DataShape, build_model
from vae_core.training.loop import fit, make_optimizer

WORLD, BATCH, WARM, STEPS, REPS, ROUNDS = 2, 64, 600, 900, 3, 3
VARIANTS = ("solo", "noop", "shared")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _noop(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def _rates(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, batch: int
) -> list[float]:
    """samples/s of REPS epochs of STEPS steps after WARM steps, over consecutive batches of x."""
    count = x.shape[0] // batch

    def batches(steps: int, start: int) -> Any:
        return lambda epoch: (
            x[(start + i) % count * batch : ((start + i) % count + 1) * batch] for i in range(steps)
        )

    fit(model, batches(WARM, 0), epochs=1, optimizer=optimizer)
    return [
        fit(model, batches(STEPS, WARM + r * STEPS), epochs=1, optimizer=optimizer)[0].samples_per_s
        for r in range(REPS)
    ]


def _worker(rank: int, port: int, variant: str, x: torch.Tensor, out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = build_model(VaeflowConfig().model, DataShape(784))
    optimizer = make_optimizer(model, 1e-3)
    wrapped: torch.nn.Module = model
    if variant != "solo":
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, **allreduce.ddp_arguments(list(model.parameters()))
        )
        if variant == "shared":
            allreduce.install(ddp, rank, WORLD)
        else:
            ddp.register_comm_hook(None, _noop)
        wrapped = ddp
    torch.manual_seed(1 + rank)
    rates = _rates(wrapped, optimizer, x[rank::WORLD], BATCH)
    out[rank] = ([r * WORLD for r in rates], [p.detach().clone() for p in model.parameters()])
    dist.destroy_process_group()


def _plain(x: torch.Tensor, out: Any) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build_model(VaeflowConfig().model, DataShape(784))
    out[0] = (_rates(model, make_optimizer(model, 1e-3), x, BATCH * WORLD), [])


def main() -> None:
    image = mnist_table("train").column("image").combine_chunks()
    x = torch.from_numpy(image.flatten().to_numpy().reshape(-1, 784).copy()).float() / 255
    rounds: dict[str, list[float]] = {v: [] for v in ("plain", *VARIANTS)}
    identical = []
    with mp.Manager() as manager:
        for r in range(ROUNDS):
            for variant in ("plain", *VARIANTS):
                out = manager.dict()
                if variant == "plain":
                    proc = mp.get_context("spawn").Process(target=_plain, args=(x, out))
                    proc.start()
                    proc.join()
                else:
                    mp.spawn(_worker, args=(_port(), variant, x, out), nprocs=WORLD, join=True)
                if 0 not in out:
                    raise RuntimeError(f"round {r}: {variant} returned nothing")
                rates, weights = out[0]
                if variant == "shared":
                    identical.append(all(torch.equal(a, b) for a, b in zip(weights, out[1][1], strict=True)))
                rounds[variant].append(statistics.median(rates))
                print(
                    f"[ddp_handover] round {r + 1}: {variant} {statistics.median(rates):,.0f} samples/s",
                    flush=True,
                )
    if not all(identical):
        raise RuntimeError("the shared-memory hook left the ranks with different weights")
    rate = {v: statistics.median(values) for v, values in rounds.items()}
    write_result(
        "ddp_handover",
        rate["shared"] / rate["plain"],
        "ratio: 2 DDP processes x 1 thread with the shared-memory hook, samples/s / the plain 2-thread loop",
        0.8,
        "higher",
        {
            "rows": x.shape[0],
            "workers": WORLD,
            "batch_per_worker": BATCH,
            "steps": f"{WARM} warm-up, then {REPS} x {STEPS} timed, per variant and round",
            "rounds": ROUNDS,
            "model": "vae mlp 784-400-20, fused Adam",
            "ray": "none: torch.multiprocessing and gloo for DDP's set-up",
        },
        baseline=rate["plain"],
        samples_per_s=rate,
        round_medians=rounds,
        share_of_solo={v: rate[v] / rate["solo"] for v in VARIANTS},
        ranks_identical=all(identical),
    )


if __name__ == "__main__":
    main()
