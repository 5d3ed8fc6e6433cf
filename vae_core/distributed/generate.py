"""The generate job: draws z ~ N(0, I) decoded through the model and the codec to rows, one Delta commit."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from vae_core.config import ComputeConfig, GenerateConfig
from vae_core.data.objects import fingerprint
from vae_core.data.storage import absolute
from vae_core.data.tables import Committed, Mode
from vae_core.progress import Progress
from vae_core.training.checkpoints import Checkpoint, load_checkpoint
from vae_core.training.inference import generate

from .jobs import Actors, Run, check_output_place, model_record, start_cluster


def block_seed(seed: int, block: int) -> int:
    """A 63-bit seed for output file `block` of a run seeded `seed`, independent of which actor runs it."""
    return int(np.random.SeedSequence([seed, block]).generate_state(1, dtype=np.uint64)[0] >> 1)


def output_schema(ckpt: Checkpoint) -> pa.Schema:
    """The generated rows' schema: the id column (data.id_column, if any) and the codec's columns, each
    in the training schema's type where the checkpoint records it (int64 ids and the codec's own types
    otherwise)."""
    trained = ckpt.meta.schema() or pa.schema([])
    decoded = ckpt.codec.decode(np.zeros((0, ckpt.codec.dim), np.float32)).schema  # the codec's columns
    id_column = ckpt.config.data.id_column
    fields = [pa.field(id_column, pa.int64())] if id_column else []
    return pa.schema(
        [trained.field(f.name) if f.name in trained.names else f for f in fields + list(decoded)]
    )


def _ids(start: int, n: int, id_type: pa.DataType) -> pa.Array:
    """Row ids start, ..., start + n - 1 in the training id type (string ids as their decimal text)."""
    ids = np.arange(start, start + n)
    if pa.types.is_string(id_type) or pa.types.is_large_string(id_type):
        return pa.array([str(i) for i in ids], type=id_type)
    return pa.array(ids, type=id_type)


class _Generator:
    """Loads the checkpoint once per actor; turns one file description (index, first row, rows) into
    one Parquet file of decoded rows."""

    def __init__(self, actors: Actors, job: GenerateConfig, sample_likelihood: bool) -> None:
        ckpt, self.writer = actors.load()
        self.model, self.codec = ckpt.model, ckpt.codec
        id_column = ckpt.config.data.id_column
        self.id_field = actors.schema.field(id_column) if id_column else None
        self.job, self.sample = job, sample_likelihood

    def _rows(self, block: int, start: int, n: int) -> pa.Table:
        seed = block_seed(self.job.seed, block)
        x = generate(self.model, n, seed, self.sample, self.job.chunk_rows)  # (n, D)
        table = self.codec.decode(x.float().cpu().numpy())
        if self.id_field is not None:
            table = table.add_column(0, self.id_field, _ids(start, n, self.id_field.type))
        return table

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        summaries = [
            self.writer.write(self._rows(int(block), int(start), int(n)), f"{int(block):06d}")
            for block, start, n in zip(batch["block"], batch["start"], batch["rows"], strict=True)
        ]
        return pa.Table.from_pylist(summaries)


def generate_rows(
    model_uri: str,
    output_uri: str,
    job: GenerateConfig = GenerateConfig(),  # noqa: B008 (settings only read, never assigned to)
    compute: ComputeConfig = ComputeConfig(),  # noqa: B008
    *,
    run_key: str | None = None,
    mode: Mode = "error",
    night: str | None = None,
    storage_options: dict | None = None,
    progress: Progress = print,
) -> Committed:
    """Sample z ~ N(0, I), decode, and commit `job.rows` rows in the training schema as one version
    of the Delta table at `output_uri`.

    Rows are cut into files of `job.rows_per_file`; file b draws from a generator seeded by
    (job.seed, b), `job.chunk_rows` rows per decoder pass, so the output depends on those settings,
    not on how many workers ran it. The checkpoint's codec turns x back into the training columns
    (output_schema). `job.sample_likelihood` draws x ~ p(x | z) instead of taking its mean; by default
    it does where the codec says so (`codec.sample_by_default`: tables, whose decoder mean holds category
    probabilities, decoded as the most likely category, so sampled rows follow the data instead).
    Rerunning with the same run key (default: a hash of the model and the settings) does nothing.
    """
    model_uri, output_uri = absolute(model_uri), absolute(output_uri)
    ckpt = load_checkpoint(model_uri, storage_options=storage_options)
    data = absolute(ckpt.config.data.uri)  # no synthetic rows where the next training reads
    check_output_place(
        output_uri, training_split=f"{data}/train", validation_split=f"{data}/{ckpt.config.train.val_split}"
    )
    sample = job.sample_likelihood if job.sample_likelihood is not None else ckpt.codec.sample_by_default
    per_file = job.rows_per_file
    blocks = [
        {"block": b, "start": start, "rows": min(per_file, job.rows - start)}
        for b, start in enumerate(range(0, job.rows, per_file))
    ]
    params = {
        "rows": job.rows,
        "seed": job.seed,
        "rows_per_file": per_file,
        "chunk_rows": job.chunk_rows,
        "sample": sample,
    }
    model = model_record(model_uri, ckpt, storage_options)
    run_key = run_key or fingerprint([], extra={"kind": "samples/2", "model": model["fingerprint"], **params})
    run = Run("generate", "samples", output_uri, run_key, mode, night, storage_options, progress)
    if (earlier := run.earlier()) is not None:
        return earlier

    out_schema = output_schema(ckpt)
    start_cluster(compute)
    actors = Actors(model_uri, output_uri, out_schema, run_key, compute, storage_options)
    ds = ray.data.from_items(blocks, override_num_blocks=len(blocks)).map_batches(
        _Generator, fn_constructor_args=(actors, job, sample), batch_size=1, **actors.pool()
    )
    progress(
        f"generating {job.rows:,} rows with {model_uri} in {len(blocks)} files "
        f"on {compute.num_workers} worker(s)"
    )
    return run.execute(ds, job.rows, out_schema, model, params)
