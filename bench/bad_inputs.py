"""bad_inputs: the table of bad-input classes (tests/unit/test_bad_inputs.py), run by pytest with
VAEFLOW_WRITE_BAD_INPUTS set; the test module then writes bench/results/bad_inputs.json."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    test = ROOT / "tests" / "unit" / "test_bad_inputs.py"
    env = {**os.environ, "VAEFLOW_WRITE_BAD_INPUTS": "1"}  # the test module writes the result only then
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
    subprocess.run(command, cwd=ROOT, env=env, check=False)


if __name__ == "__main__":
    main()
