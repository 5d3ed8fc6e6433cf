"""The footer check of an embed job's ids (distributed/ids.py): when shards' id ranges keep them apart,
and the check within one shard that the job then makes as it reads it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vae_core.distributed.ids import ShardIds, ids_apart
from vae_core.errors import DataError


def _shard(path, ids, **write) -> str:
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "x": np.zeros(len(ids))}), path, **write)
    return str(path)


def test_footers_prove_ids_apart_only_for_disjoint_integer_ranges(tmp_path):
    a = _shard(tmp_path / "a.parquet", range(0, 100), row_group_size=30)
    b = _shard(tmp_path / "b.parquet", [250, 120, 199, 100])  # unordered inside, above a's range
    assert ids_apart([b, a], "id", "corpus", None) == 104
    # b's range touches c's at 250: the footers cannot rule out a repeat.
    c = _shard(tmp_path / "c.parquet", [250, 400])
    assert ids_apart([a, b, c], "id", "corpus", None) is None
    # No statistics in a footer, or ids as text: the footers cannot tell.
    d = _shard(tmp_path / "d.parquet", [500, 501], write_statistics=False)
    assert ids_apart([a, d], "id", "corpus", None) is None
    pq.write_table(pa.table({"id": ["x", "y"]}), tmp_path / "e.parquet")
    assert ids_apart([str(tmp_path / "e.parquet")], "id", "corpus", None) is None
    # A null id, counted by the footer: the same error as the up-front check, naming the shard.
    f = _shard(tmp_path / "f.parquet", [600, None, 602])
    with pytest.raises(DataError, match=r"corpus: id column 'id' has 1 null\(s\), e.g. in .*f.parquet"):
        ids_apart([a, f], "id", "corpus", None)


@pytest.mark.parametrize(
    ("batches", "repeat"),
    [
        ([[0, 1, 2], [3, 4]], None),  # increasing: checked as the batches pass
        ([[3, 1], [4, 0, 2]], None),  # unordered, unique: counted from the file
        ([[0, 1, 2], [2, 3]], 2),  # a repeat across two batches
        ([[5, 1, 9], [7, 1]], 1),  # unordered with a repeat
    ],
)
def test_shard_ids_names_an_id_repeated_within_the_shard(tmp_path, batches, repeat):
    shard = _shard(tmp_path / "s.parquet", [i for b in batches for i in b])
    seen = ShardIds(shard, "id", "corpus", None)
    for b in batches:
        seen.add(pa.array(b, pa.int64()))
    if repeat is None:
        seen.check()
        return
    with pytest.raises(
        DataError, match=rf"corpus: id column 'id' is not unique: 1 ids .*e.g. {repeat}, in .*s.parquet"
    ):
        seen.check()
