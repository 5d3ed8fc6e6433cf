"""Run every benchmark (or those named on the command line): python -m bench [name ...]."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = [
    "mnist_quality",
    "tabular_fit_memory",
    "mnist_quality_ray",
    "train_throughput",
    "batch_jobs",
    "adult_efficacy",
]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {BENCHMARKS}", file=sys.stderr)
        return 2
    for name in names:
        print(f"[bench] running {name}", flush=True)
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
