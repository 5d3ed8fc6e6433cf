"""The generate job: draws of z decoded through the model and the codec to rows, one Delta commit.

z comes from the prior N(0, I) or, where the checkpoint holds one, from the Gaussian mixture fitted to
the aggregate posterior after training (`generate.sampler`, vae_core.models.sampler).

Conditional generation (`generate.where`, `--where COL=VALUE`) keeps only the decoded rows that carry
every given value: rejection sampling from the model's own joint distribution, so the kept rows follow
the model's conditional p(x | x_c = v) exactly. Each output file draws rounds of rows, sized by the
acceptance seen so far, until it holds its rows; the commit records the draws it took.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vae_core.config import ComputeConfig, GenerateConfig
from vae_core.data.codecs.table import TabularCodec
from vae_core.data.objects import fingerprint
from vae_core.data.storage import absolute
from vae_core.data.tables import Committed, Mode, NewIds, next_id, read_table
from vae_core.errors import ConfigError, DataError
from vae_core.progress import Progress
from vae_core.training.checkpoints import SAMPLER_FILE, Checkpoint, load_checkpoint
from vae_core.training.inference import generate

from .jobs import Actors, Run, check_output_place, keep_out_of, mapped, model_record, runs_here

MAX_FILES = 100_000  # files one job writes and commits: the commit lists each, the driver its summary


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


# Conditional generation gives up on a file after this many draws per row it must hold, or earlier,
# when GIVE_UP_ROUNDS rounds have matched no row at all: the condition is one the model (nearly)
# never produces, and the message says so.
MAX_DRAWS_PER_ROW = 1000
GIVE_UP_ROUNDS = 10
MIN_ROUND, MAX_ROUND = 1024, 100_000  # rows decoded in one round: at least, at most (memory)
# generate.match_shares draws this many times the rows it keeps (TabularTransformer.match_shares).
MATCH_DRAWS = 1.5


def shares_to_match(ckpt: Checkpoint, job: GenerateConfig) -> list[str]:
    """generate.match_shares checked against this checkpoint: categorical columns of a tabular codec that
    recorded their training shares; anything else is a ConfigError naming the column."""
    if not job.match_shares:
        return []
    codec = ckpt.codec
    if not isinstance(codec, TabularCodec):
        raise ConfigError(
            "generate.match_shares (--match-shares): category shares need a tabular model; this one "
            f"generates a {codec.kind} vector"
        )
    if job.where:
        raise ConfigError(
            "generate.match_shares (--match-shares) and generate.where (--where) exclude each other"
        )
    codec.check_match_shares(job.match_shares)
    return list(job.match_shares)


def conditions(ckpt: Checkpoint, schema: pa.Schema, where: dict[str, str]) -> dict[str, pa.Scalar]:
    """`where`'s values in their columns' output types, checked against what the model can produce: a
    column it generates, a value of that column's type, a category it was trained on, a number within
    the training range. A ConfigError names the column and the value otherwise."""
    if not where:
        return {}
    if not isinstance(ckpt.codec, TabularCodec):
        raise ConfigError(
            "generate.where (--where): conditions need a tabular model; this one generates "
            f"a {ckpt.codec.kind} vector"
        )
    typed: dict[str, pa.Scalar] = {}
    for name, text in where.items():
        if name not in ckpt.codec.columns:
            raise ConfigError(
                f"generate.where (--where): {name!r} is not a column this model generates; its columns: "
                f"{', '.join(ckpt.codec.columns)}"
            )
        typ = schema.field(name).type
        try:
            value = pa.array([text]).cast(typ)[0]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ConfigError(f"generate.where (--where): {name}={text!r} is not a {typ} value ({e})") from e
        ckpt.codec.check_condition(name, value, text)
        typed[name] = value
    return typed


def sampler_of(ckpt: Checkpoint, sampler: str, model_uri: str) -> str:
    """generate.sampler resolved for this checkpoint: "prior" or "mixture" (auto: the mixture when the
    checkpoint holds one); asking for a mixture it does not hold is a ConfigError."""
    if sampler == "auto":
        return "mixture" if ckpt.sampler is not None else "prior"
    if sampler == "mixture" and ckpt.sampler is None:
        raise ConfigError(
            f"--sampler mixture: {model_uri} holds no latent mixture ({SAMPLER_FILE}); training fits one "
            "for VAEs with train.latent_mixture > 0 when the train split fits train.cache_mb"
        )
    return sampler


def _matching(table: pa.Table, where: dict[str, pa.Scalar]) -> pa.Array:
    """A boolean mask of the rows that carry every value in `where` (nulls never match)."""
    mask = None
    for name, value in where.items():
        hit = pc.fill_null(pc.equal(table.column(name), value), False)
        mask = hit if mask is None else pc.and_(mask, hit)
    return mask


def _ids(start: int, n: int, id_type: pa.DataType) -> pa.Array:
    """Row ids start, ..., start + n - 1 in the training id type (string ids as their decimal text)."""
    ids = np.arange(start, start + n)
    if pa.types.is_string(id_type) or pa.types.is_large_string(id_type):
        return pa.array([str(i) for i in ids], type=id_type)
    return pa.array(ids, type=id_type)


class _Generator:
    """Loads the checkpoint once per actor; turns one file description (index, first row, rows) into
    one Parquet file of decoded rows."""

    def __init__(
        self,
        actors: Actors,
        job: GenerateConfig,
        sample_likelihood: bool,
        mixture: bool,
        where: dict[str, pa.Scalar],
        match: list[str] | None = None,
    ) -> None:
        """`sample_likelihood`, `mixture` (z from the checkpoint's latent mixture), `where` (typed
        conditions) and `match` (generate.match_shares) as the driver resolved and checked them."""
        ckpt, self.writer = actors.load()
        self.model, self.codec = ckpt.model, ckpt.codec
        id_column = ckpt.config.data.id_column
        self.id_field = actors.schema.field(id_column) if id_column else None
        self.job, self.sample, self.where = job, sample_likelihood, where
        self.sampler = ckpt.sampler if mixture else None
        self.match = match or []

    def _draws(self, n: int) -> int:
        """Rows decoded for n rows without conditions: with generate.match_shares, MATCH_DRAWS times n."""
        return math.ceil(MATCH_DRAWS * n) if self.match else n

    def _decoded(self, seed: int, n: int) -> pa.Table:
        """n rows drawn with `seed`; with generate.match_shares, n kept of self._draws(n)."""
        drawn = self._draws(n)
        x = generate(
            self.model, drawn, seed, self.sample, self.job.chunk_rows, self.sampler, self.job.latent_scale
        )  # (drawn, D)
        x = x.float().cpu().numpy()
        if self.match:
            x = x[self.codec.match_shares(x, n, self.match, np.random.default_rng([seed, 1]))]
        return self.codec.decode(x)

    def _conditioned(self, block: int, n: int) -> tuple[pa.Table, int]:
        """n rows that match `where`, and the draws it took: rounds seeded (block seed, round), each
        sized from the acceptance so far, until n matched or the draws run out."""
        seed, kept, found, draws, rnd, size = block_seed(self.job.seed, block), [], 0, 0, 0, 0
        while found < n:
            budget = MAX_DRAWS_PER_ROW * n - draws
            if budget <= 0 or (rnd >= GIVE_UP_ROUNDS and found == 0):
                wanted = ", ".join(f"{k}={v.as_py()!r}" for k, v in self.where.items())
                raise DataError(
                    f"generate.where (--where): {found:,} of {draws:,} draws matched {wanted}; the model "
                    f"rarely or never generates such rows (gave up after {draws:,} draws for {n:,} rows)"
                )
            if rnd == 0:
                size = n
            elif found:  # what the acceptance so far says the rest needs, and a fifth more
                size = math.ceil(1.2 * (n - found) * draws / found)
            else:
                size = 4 * size
            size = min(budget, MAX_ROUND, max(MIN_ROUND, size))
            table = self._decoded(block_seed(seed, rnd), size)
            match = table.filter(_matching(table, self.where))
            kept.append(match.slice(0, n - found))
            found, draws, rnd = found + kept[-1].num_rows, draws + size, rnd + 1
        return pa.concat_tables(kept), draws

    def _rows(self, block: int, start: int, n: int) -> tuple[pa.Table, int]:
        if self.where:
            table, draws = self._conditioned(block, n)
        else:
            table, draws = self._decoded(block_seed(self.job.seed, block), n), self._draws(n)
        if self.id_field is not None:
            table = table.add_column(0, self.id_field, _ids(start, n, self.id_field.type))
        return table, draws

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        summaries = []
        for block, start, n in zip(batch["block"], batch["start"], batch["rows"], strict=True):
            table, draws = self._rows(int(block), int(start), int(n))
            summaries.append(self.writer.write(table, f"{int(block):06d}") | {"draws": draws})
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
    """Sample z (N(0, I), or the checkpoint's latent mixture: `job.sampler`), decode, and commit
    `job.rows` rows in the training schema as one version of the Delta table at `output_uri`.

    Rows are cut into files of `job.rows_per_file`; file b draws from a generator seeded by
    (job.seed, b), `job.chunk_rows` rows per decoder pass, so the output depends on those settings,
    not on how many workers ran it. The checkpoint's codec turns x back into the training columns
    (output_schema). `job.sample_likelihood` draws x ~ p(x | z) instead of taking its mean; by default
    it does where the codec says so (`codec.sample_by_default`: tables, whose decoder mean holds category
    probabilities, decoded as the most likely category, so sampled rows follow the data instead).
    `job.where` keeps only rows carrying the given column values (rejection sampling, module
    docstring); the commit's `stats.draws` says how many rows were decoded for them.
    Rerunning with the same run key (default: a hash of the model and the settings) does nothing.
    """
    model_uri, output_uri = absolute(model_uri), absolute(output_uri)
    ckpt = load_checkpoint(model_uri, storage_options=storage_options)
    check_output_place(output_uri, **keep_out_of(model_uri, ckpt))  # no rows where the next training reads
    sample = job.sample_likelihood if job.sample_likelihood is not None else ckpt.codec.sample_by_default
    per_file = job.rows_per_file
    files = -(-job.rows // per_file)
    if files > MAX_FILES:  # the job is one Delta commit listing every file: plan and commit stay bounded
        raise ConfigError(
            f"generate.rows={job.rows:,} at generate.rows_per_file={per_file:,} is {files:,} files in one "
            f"commit; at most {MAX_FILES:,}: raise rows_per_file, or generate in several appends (--mode "
            "append continues the ids)"
        )
    # Ids count from 0, or on append from after the table's largest id (checked again at the commit).
    id_column, first, new_ids = ckpt.config.data.id_column, 0, None
    if mode == "append" and id_column:
        base, first = next_id(output_uri, id_column, storage_options)
        new_ids = NewIds(id_column, range(first, first + job.rows), base)
    blocks = [
        {"block": b, "start": first + start, "rows": min(per_file, job.rows - start)}
        for b, start in enumerate(range(0, job.rows, per_file))
    ]
    params = {
        "rows": job.rows,
        "seed": job.seed,
        "rows_per_file": per_file,
        "chunk_rows": job.chunk_rows,
        "sample": sample,
    }
    mixture = sampler_of(ckpt, job.sampler, model_uri) == "mixture"
    if mixture:  # prior runs keep their earlier run keys
        params["sampler"] = "mixture"
    if job.latent_scale != 1.0:  # part of the run's identity only when given
        params["latent_scale"] = job.latent_scale
    out_schema = output_schema(ckpt)
    where = conditions(ckpt, out_schema, job.where)  # checked before anything starts
    if where:  # part of the run's identity only when given
        params["where"] = dict(job.where)
    match = shares_to_match(ckpt, job)  # checked before anything starts
    if match:  # part of the run's identity only when given
        params["match_shares"] = match
    model = model_record(model_uri, ckpt, storage_options)
    run_key = run_key or fingerprint([], extra={"kind": "samples/2", "model": model["fingerprint"], **params})
    run = Run("generate", "samples", output_uri, run_key, mode, night, storage_options, progress)
    if (earlier := run.earlier(out_schema)) is not None:
        return earlier

    here = runs_here(job.rows, job.local_rows, compute)
    actors = Actors(model_uri, output_uri, out_schema, run_key, compute, storage_options, in_process=here)
    args = (actors, job, sample, mixture, where, match)
    ds, where_to = mapped(_Generator, args, blocks, actors, f"generate.local_rows={job.local_rows:,}")
    wanted = " where " + ", ".join(f"{k}={v!r}" for k, v in job.where.items()) if job.where else ""
    if match:
        wanted = f" with {', '.join(match)} at the training shares ({MATCH_DRAWS:g}x draws)"
    progress(f"generating {job.rows:,} rows{wanted} with {model_uri} in {len(blocks)} files {where_to}")
    committed = run.execute(ds, job.rows, out_schema, model, params, stats=_stats, new_ids=new_ids)
    if match:
        table = read_table(
            output_uri, version=committed.version, columns=match, storage_options=storage_options
        )
        progress(f"achieved shares against the training shares: {ckpt.codec.shares_gap(table, match)}")
    if job.where:
        draws = committed.record.stats["draws"]
        progress(
            f"conditional: {job.rows:,} rows kept of {draws:,} draws "
            f"({100 * job.rows / draws:.1f}% acceptance; the commit's stats.draws)"
        )
    return committed


def _stats(summaries: list[dict]) -> dict[str, int]:
    """The commit's stats: how many rows were decoded to keep the committed ones (= rows without
    conditions)."""
    return {"draws": sum(int(s["draws"]) for s in summaries)}
