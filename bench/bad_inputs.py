"""bad_inputs: the table of bad-input classes (tests/unit/test_bad_inputs.py), run by pytest; the test
module writes bench/results/bad_inputs.json when the whole table ran."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    test = ROOT / "tests" / "unit" / "test_bad_inputs.py"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)], cwd=ROOT, check=False
    )


if __name__ == "__main__":
    main()
