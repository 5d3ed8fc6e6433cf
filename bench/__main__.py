"""Run every benchmark (or those named): python -m bench [name ...]; python -m bench table writes
bench/README.md from the result files alone."""

from __future__ import annotations

import subprocess
import sys

from bench import table

BENCHMARKS = [
    "mnist_quality",
    "tabular_fit_memory",
    "mnist_quality_ray",
    "train_throughput",
    "train_throughput_streamed",
    "ddp_handover",
    "data_feed",
    "command_overhead",
    "batch_jobs",
    "embed_nights",
    "embed_scale",
    "year_of_nights",
    "adult_vs_peers",
    "bad_inputs",
    "deploy_nightly",
]


def main(argv: list[str]) -> int:
    if argv[:1] == ["table"]:
        if argv[1:]:
            print(f"python -m bench table takes no arguments, got {argv[1:]}", file=sys.stderr)
            return 2
        print(f"[bench] wrote {table.write()}")
        return 0
    names = argv or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {BENCHMARKS}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"[bench] running {name}", flush=True)
        # Each in its own process: a benchmark's S3 server, Ray cluster and cached filesystem clients
        # (s3fs keeps instances per endpoint) must not leak into the next one.
        code = f"import bench.{name} as b; b.main()"
        if subprocess.run([sys.executable, "-c", code], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"[bench] failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
