"""Training throughput when every epoch streams from S3: Ray Train, 1 worker, `train.cache_mb=0`, 240k
MNIST rows read through Ray Data each epoch, against the plain in-memory loop, in the same run.

bench.train_throughput's rows, model, batch and plain loop; the Ray runs take train.cache_mb=0, so no
epoch reads memory (`data_from` is "storage" for every epoch). Value: the median samples/s of epochs
2..N over ROUNDS runs / the plain loop's median, target >= 0.75. Recorded beside it: the share of each
epoch the loop waited for its next batch (data_wait_share), where the time goes.
"""

from __future__ import annotations

from bench import train_throughput as tt
from bench._results import write_result
from tests.servers import local_s3_server, make_bucket

ROUNDS = 3  # the issue asks for medians of >= 3


def main() -> None:
    with local_s3_server(separate_process=True):
        root = f"{make_bucket('bench')}/streamed"
        rows = tt.write_rows(root)
        plains, runs = [tt.plain_loop(root, rows)], []
        for r in range(ROUNDS):
            runs.append(tt.ray_run(root, 1, tag=f"-streamed-r{r}", cache_mb=0))
            print(f"  ray 1 worker, streamed: {runs[-1]['samples_per_s']:,.0f} samples/s", flush=True)
            plains.append(tt.plain_loop(root, rows))
    plain, ray = tt._pooled(plains), tt._pooled(runs)
    assert all(d == "storage" for run in runs for d in run["data_from"]), [r["data_from"] for r in runs]
    write_result(
        "train_throughput_streamed",
        value=ray["samples_per_s"] / plain["samples_per_s"],
        unit="ratio: Ray Train 1 worker steady samples/s, every epoch streamed from S3 (train.cache_mb=0) "
        "/ plain in-memory loop samples/s",
        target=0.75,
        better="higher",
        baseline=plain["samples_per_s"],
        setting={"rows": rows, "epochs": tt.EPOCHS, "global_batch": tt.GLOBAL_BATCH, "workers": 1,
                 "cache_mb": 0, "model": "vae mlp 784-400-20", "storage": "S3 (moto server process)",
                 "steady": f"median samples/s of epochs 2..N over {ROUNDS} Ray runs, interleaved with "
                 f"{ROUNDS + 1} plain runs"},
        plain=plain,
        ray=ray,
        data_wait_share=[r["data_wait_share"] for r in runs],
    )  # fmt: skip


if __name__ == "__main__":
    main()
