"""`vaeflow data describe`: a dataset's splits and columns as training would see them, before training.

For each split folder under the root: files and rows (Parquet footers only). For the train split's
columns: type and role (id, vector, continuous, categorical, excluded, unused), and, from the codec
fitted on train exactly as `vaeflow train` fits it (or a checkpoint's, with nothing refitted), the
feature count, the likelihood that fits and per column its width, exact null count, categories or
range. Integer columns of 0 and 1 only are categorical by default (dataset.resolve_spec); other
integer columns with few distinct values are trained as continuous and flagged as likely codes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vae_core.config import DataConfig
from vae_core.data.codecs import Codec, fit_codec
from vae_core.data.dataset import (
    IMPORT_HINT,
    count_rows,
    is_list_type,
    iter_batches,
    list_shards,
    open_dataset,
    other_format,
    with_recorded_id,
)
from vae_core.data.storage import filesystem, join
from vae_core.data.tabular import CategoricalColumn, ContinuousColumn
from vae_core.errors import DataError


@dataclass
class ColumnInfo:
    name: str
    type: str
    role: str  # id, vector, continuous, categorical, excluded, unused
    detail: str = ""
    nulls: int | None = None  # in the train split (feature columns; None: not counted)


@dataclass
class Description:
    uri: str
    splits: dict[str, dict[str, int]]  # split -> {"files", "rows"}
    columns: list[ColumnInfo]
    codec: str
    features: int
    likelihood: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"dataset {self.uri}"]
        for split, s in self.splits.items():
            out.append(f"  {split + '/':<8} {s['rows']:>12,} rows in {s['files']} file(s)")
        width = max(len(c.name) for c in self.columns)
        type_width = max(len(c.type) for c in self.columns)
        out.append("columns (train/):")
        for c in self.columns:
            out.append(
                f"  {c.name:<{width}}  {c.type:<{type_width}}  {c.role}{'  ' + c.detail if c.detail else ''}"
            )
        out.append(f"features: {self.features} ({self.codec} codec, {self.likelihood} likelihood)")
        out += [f"note: {n}" for n in self.notes]
        return out


def split_folders(uri: str, storage_options: dict | None = None) -> list[str]:
    """The folders directly under `uri` that hold Parquet files (train and test first)."""
    fs, path = filesystem(uri, storage_options)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        raise DataError(f"{uri}: no such dataset (path does not exist)")
    if fs.isfile(path):
        hint = f"; {IMPORT_HINT.format(kind='csv', uri=uri)}" if other_format(path) else ""
        raise DataError(f"{uri}: a file, not a dataset folder with train/ (and test/){hint}")
    base = path.rstrip("/")
    found = {
        p[len(base) + 1 :].split("/", 1)[0]
        for p in fs.find(path)
        if p.endswith(".parquet") and p.startswith(base + "/") and "/" in p[len(base) + 1 :]
    }
    return sorted(found, key=lambda s: (s not in ("train", "test"), s != "train", s))


LIKELY_CODES = 32  # an integer column with at most this many distinct values is flagged as likely codes


@dataclass
class _Counts:
    """Exact nulls and (up to LIKELY_CODES + 1) distinct values of each column, over one pass."""

    nulls: dict[str, int] = field(default_factory=dict)
    values: dict[str, set] = field(default_factory=dict)

    def update(self, batch: pa.RecordBatch) -> None:
        for name in batch.schema.names:
            arr = batch.column(name)
            self.nulls[name] = self.nulls.get(name, 0) + arr.null_count
            seen = self.values.setdefault(name, set())
            if len(seen) <= LIKELY_CODES and not is_list_type(arr.type):
                seen.update(pc.unique(arr.drop_null()).to_pylist()[: LIKELY_CODES + 1])


def describe(cfg: DataConfig, codec: Codec | None = None, seed: int = 0) -> Description:
    """Describe the dataset at cfg.uri with cfg's column settings (see the module docstring), fitting
    the codec with `seed` as training does (train.seed). With `codec` (a checkpoint's), its fitted
    columns are shown and nothing is refitted."""
    cfg = with_recorded_id(cfg)
    folders = split_folders(cfg.uri, cfg.storage_options)
    if "train" not in folders:
        raise DataError(f"{cfg.uri}: no train/ folder of Parquet files (found: {folders or 'none'})")
    train_shards, schema, spec = open_dataset(cfg, "train")
    splits = {}
    for split in folders:
        shards = train_shards if split == "train" else list_shards(join(cfg.uri, split), cfg.storage_options)
        splits[split] = {"files": len(shards), "rows": count_rows(shards, cfg.storage_options)}
    counts = _Counts()

    def batches(columns: list[str]) -> Iterator[tuple[str, pa.RecordBatch]]:
        for shard, batch in iter_batches(train_shards, columns, storage_options=cfg.storage_options):
            counts.update(batch)
            yield shard, batch

    if codec is None:
        codec = fit_codec(spec, schema, batches, join(cfg.uri, "train"), cfg, seed)
    else:  # the checkpoint's codec: one pass for the counts only
        for _ in batches(spec.feature_columns):
            pass
    fitted = {c.name: c for c in getattr(getattr(codec, "transformer", None), "columns", [])}
    columns, codes = [], []
    for f in schema:
        nulls = counts.nulls.get(f.name)
        if f.name == spec.id_column:
            role, detail = "id", "kept with every embedding and generated row"
        elif f.name == spec.vector_column:
            role, detail = "vector", f"{codec.dim} features, divided by {spec.scale:g}"
        elif f.name in spec.continuous or f.name in spec.categorical:
            role = "continuous" if f.name in spec.continuous else "categorical"
            detail = _detail(fitted.get(f.name), nulls)
            distinct = len(counts.values.get(f.name, ()))
            if role == "continuous" and pa.types.is_integer(f.type) and distinct <= LIKELY_CODES:
                codes.append(f.name)
                detail += f"; {distinct} distinct values: likely categorical"
        elif f.name in cfg.exclude:
            role, detail = "excluded", "data.exclude"
        else:
            role, detail = "unused", "not a feature of this config"
        columns.append(ColumnInfo(f.name, str(f.type), role, detail, nulls))
    notes = []
    if codes:
        listed = ",".join(f'"{c}"' for c in codes)
        notes.append(
            f"integer column(s) with few distinct values, trained as continuous: {', '.join(codes)}; if "
            f"they are codes rather than quantities, use data.categorical=[{listed}]"
        )
    if "test" not in splits:
        notes.append("no test/ split: training validates on train.val_split (default test)")
    if spec.id_column is None:
        notes.append("no id column (data.id_column is null): embeddings cannot be joined back to rows")
    return Description(cfg.uri, splits, columns, codec.kind, codec.dim, codec.likelihood, notes)


def _modes(col: ContinuousColumn) -> str:
    return f"{col.modes} quantile bin(s)" if col.bins is not None else f"{col.modes} mode(s)"


def _nulls(n: int | None) -> str:
    return "" if n is None else f", {n:,} null{'s' if n != 1 else ''}"


def _detail(col: ContinuousColumn | CategoricalColumn | None, nulls: int | None) -> str:
    if isinstance(col, CategoricalColumn):
        slot = " (+1 for nulls and unseen values)" if col.other_slot else ""
        return f"{len(col.categories)} categories{_nulls(nulls)}, {col.width} features{slot}"
    if isinstance(col, ContinuousColumn):
        kind = "integers" if col.integer else "reals"
        return f"{kind} in [{col.min:g}, {col.max:g}]{_nulls(nulls)}, {_modes(col)}, {col.width} features"
    return ""
