"""`vaeflow data describe`: a dataset's splits and columns as training would see them, before training.

For each split folder under the root: files and rows (Parquet footers only). For the train split's
columns: type and role (id, vector, continuous, categorical, excluded, unused), and, from the codec
fitted on train exactly as `vaeflow train` fits it, the feature count, the likelihood that fits
and per column its width, nulls, categories or range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from vae_core.config import DataConfig
from vae_core.data.codecs import fit_on_train
from vae_core.data.dataset import count_rows, list_shards, open_dataset, with_recorded_id
from vae_core.data.storage import filesystem, join
from vae_core.data.tabular import CategoricalColumn, ContinuousColumn
from vae_core.errors import DataError


@dataclass
class ColumnInfo:
    name: str
    type: str
    role: str  # id, vector, continuous, categorical, excluded, unused
    detail: str = ""


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
    base = path.rstrip("/")
    found = {
        p[len(base) + 1 :].split("/", 1)[0]
        for p in fs.find(path)
        if p.endswith(".parquet") and p.startswith(base + "/") and "/" in p[len(base) + 1 :]
    }
    return sorted(found, key=lambda s: (s not in ("train", "test"), s != "train", s))


def describe(cfg: DataConfig) -> Description:
    """Describe the dataset at cfg.uri with cfg's column settings (see the module docstring)."""
    cfg = with_recorded_id(cfg)
    folders = split_folders(cfg.uri, cfg.storage_options)
    if "train" not in folders:
        raise DataError(f"{cfg.uri}: no train/ folder of Parquet files (found: {folders or 'none'})")
    train_shards, schema, spec = open_dataset(cfg, "train")
    splits = {}
    for split in folders:
        shards = train_shards if split == "train" else list_shards(join(cfg.uri, split), cfg.storage_options)
        splits[split] = {"files": len(shards), "rows": count_rows(shards, cfg.storage_options)}
    codec = fit_on_train(spec, schema, train_shards, cfg)
    fitted = {c.name: c for c in getattr(getattr(codec, "transformer", None), "columns", [])}
    columns = []
    for f in schema:
        if f.name == spec.id_column:
            role, detail = "id", "kept with every embedding and generated row"
        elif f.name == spec.vector_column:
            role, detail = "vector", f"{codec.dim} features, divided by {spec.scale:g}"
        elif f.name in spec.continuous or f.name in spec.categorical:
            role = "continuous" if f.name in spec.continuous else "categorical"
            detail = _detail(fitted.get(f.name))
        elif f.name in cfg.exclude:
            role, detail = "excluded", "data.exclude"
        else:
            role, detail = "unused", "not a feature of this config"
        columns.append(ColumnInfo(f.name, str(f.type), role, detail))
    notes = []
    if "test" not in splits:
        notes.append("no test/ split: training validates on train.val_split (default test)")
    if spec.id_column is None:
        notes.append("no id column (data.id_column is null): embeddings cannot be joined back to rows")
    return Description(cfg.uri, splits, columns, codec.kind, codec.dim, codec.likelihood, notes)


def _modes(col: ContinuousColumn) -> str:
    return f"{col.modes} quantile bin(s)" if col.bins is not None else f"{col.modes} mode(s)"


def _detail(col: ContinuousColumn | CategoricalColumn | None) -> str:
    if isinstance(col, CategoricalColumn):
        return f"{len(col.categories)} categories (+1 slot for null/unseen), {col.width} features"
    if isinstance(col, ContinuousColumn):
        nulls = ", has nulls" if col.has_nulls else ""
        kind = "integers" if col.integer else "reals"
        return f"{kind} in [{col.min:g}, {col.max:g}], {_modes(col)}{nulls}, {col.width} features"
    return ""
