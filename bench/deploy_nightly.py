"""The nightly deployment on `make deploy-test`'s 2-node cluster against the same config through
`vaeflow run` in one container, measured in one run: bench/results/deploy_nightly.json.

It runs the deployment tier's clean night and its one-node baseline (the `bench`-marked test in
tests/deploy, which `make deploy-test` leaves out); it needs root, podman and the image (`make image`).
"""

from __future__ import annotations

import subprocess
import sys


def main() -> None:
    tests = "test_the_nightly_runs_on_two_nodes_and_promotes or test_the_same_night_on_one_node"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "deploy",
        "tests/deploy",
        "-k",
        tests,
    ]
    sys.exit(subprocess.run(cmd, check=False).returncode)


if __name__ == "__main__":
    main()
