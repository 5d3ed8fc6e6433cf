"""The `vaeflow` command line's parser: its commands, their options and help texts."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from datetime import date
from typing import Any

from flows import commands
from vae_core.config import VaeflowConfig
from vae_core.data import maintenance
from vae_core.data.tables import MODES

DESCRIPTION = """\
vaeflow: train variational autoencoders on Parquet shards in object storage, embed corpora,
generate synthetic data.

`run` is the main job: the Prefect flow vae-nightly (train -> evaluate -> promote -> embed ->
generate) once, on MNIST in a local folder unless told otherwise; `serve` runs it on its schedule.
"""
DEBUG_HELP = "on a user error, also print the traceback (the exit code stays 2)"


def _config_args(p: argparse.ArgumentParser, example: str, required: bool = False) -> None:
    """--config FILE and `section.key=value` overrides: the one way every command reads a config."""
    default = "" if required else "; default: the defaults"
    p.add_argument("--config", required=required, help=f"JSON config file (see `vaeflow config`{default})")
    p.add_argument("overrides", nargs="*", help=f"config overrides, section.key=value (e.g. {example})")


def _setting(
    p: argparse.ArgumentParser, flag: str, key: str, text: str, default: str | None = None, **argument: Any
) -> None:
    """An option that sets the config value `key` ("section.key", its argparse dest; see commands.job_config),
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
    p.add_argument(
        "--root",
        default="data",
        help="where the night's data, runs, registry and outputs live: a local folder or an object-store "
        "URI such as s3://bucket/prefix (default: data)",
    )
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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


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
and parameters) does nothing; a crashed run's files stay unreferenced until its rerun commits them.
OUTPUT must be a new or empty folder or a Delta table. Uses the Ray cluster at RAY_ADDRESS if set,
else a local one."""


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

    p = _command(
        sub, "config", commands.config, "print a validated configuration as JSON; secrets shown as ***"
    )
    _config_args(p, "train.epochs=5 model.latent_dim=2")
    p.add_argument("--schema", action="store_true", help="print the JSON schema of the configuration")

    p = _command(sub, "train", commands.train, "train with Ray Train (DDP); checkpoints to train.runs_uri")
    _config_args(p, "train.epochs=5 compute.torch_threads=4", required=True)
    _compute_args(p, "Ray Train DDP workers")
    p.add_argument("--run-name", help="run name (default: the config's name)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run of this name from its latest checkpoint (same data/model/train settings)",
    )

    embed_notes = (JOB_SETTINGS.format(section="embed"), PUBLISH_NOTE)
    p = _command(sub, "embed", commands.embed, "Ray Data job: every row of a corpus -> z_mean", *embed_notes)
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
    p = _command(sub, "generate", commands.generate, generate_help, *generate_notes)
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
    scale_help = (
        "multiply the noise of every draw of z by this: above 1, rows further from the training rows (for a "
        "model trained at a small beta), below 1 more typical ones"
    )
    _setting(p, "--latent-scale", "generate.latent_scale", scale_help, type=float, metavar="F")
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

    p = _command(
        sub, "vacuum", commands.vacuum, "list or delete files no recent version of a Delta output needs"
    )
    p.add_argument("--table", required=True, help="Delta table URI")
    p.add_argument(
        "--retention-hours", type=int, default=168, help="keep what versions of this age need (default: 168)"
    )
    p.add_argument("--delete", action="store_true", help="delete the files (default: list them)")

    p = _command(
        sub,
        "maintain",
        commands.maintain,
        "compact, checkpoint and vacuum a Delta output (the nightly's step)",
    )
    p.add_argument("--table", required=True, help="Delta table URI")
    p.add_argument(
        "--keep-nights", type=int, default=maintenance.KEEP_NIGHTS, metavar="N",
        help=f"the versions of the last N vaeflow commits stay readable (default: {maintenance.KEEP_NIGHTS})",
    )  # fmt: skip
    p.add_argument(
        "--vacuum-every", type=int, default=maintenance.VACUUM_EVERY, metavar="N",
        help="VACUUM only when N vaeflow commits followed the last VACUUM (default: 0, always; the "
        "nightly's is pipeline.vacuum_every, 7)",
    )  # fmt: skip
    p.add_argument(
        "--keep-version", type=int, action="append", metavar="V",
        help="a version that stays readable too, e.g. the one the champion wrote (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--retention-hours", type=int, default=maintenance.RETENTION_HOURS,
        help=f"keep files removed within this many hours (default: {maintenance.RETENTION_HOURS})",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint-every", type=int, default=maintenance.CHECKPOINT_EVERY, metavar="N",
        help=f"a log checkpoint when N commits followed the last (default: {maintenance.CHECKPOINT_EVERY})",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="change nothing; list what VACUUM would delete")

    data = sub.add_parser("data", help="dataset tools (import, describe)")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = _command(
        data_sub, "import", commands.data_import, "a dataset as Parquet shards under OUTPUT/train/, test/"
    )
    p.add_argument("source", choices=["mnist", "adult", "parquet", "csv"], help="what to import")
    p.add_argument("--input", nargs="+", help="input files or folders (parquet/csv only)")
    p.add_argument("--output", required=True, help="dataset root URI (path, file://, s3://bucket/prefix)")
    p.add_argument(
        "--rows-per-file",
        type=int,
        metavar="N",
        help="rows per Parquet shard (default: mnist and adult by source; parquet/csv about 1/16 of the "
        "rows, 1,000 to 100,000, so that --workers N up to 16 has a file per worker)",
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

    p = _command(data_sub, "describe", commands.data_describe, "splits, rows and columns with their roles")
    p.add_argument("uri", help="dataset root URI with train/ (and test/)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.add_argument(
        "--model",
        help="a checkpoint trained on this dataset: describe with its fitted codec instead of fitting one "
        "(faster; shows what that model was trained on)",
    )
    _config_args(p, "data.exclude='[\"notes\"]' data.id_column=customer")

    p = _command(sub, "run", commands.run, "the main job: one vae-nightly on the local default (`make run`)")
    _nightly_args(p)
    p.add_argument(
        "--date", type=_iso_date, help="run date YYYY-MM-DD (default: today); names the night's outputs"
    )
    p.add_argument("--epochs", type=int, help="training epochs (default: 3)")

    p = _command(sub, "serve", commands.serve, "serve vae-nightly on its schedule from deploy/prefect.yaml")
    _nightly_args(p)
    p.add_argument("--prefect-file", help="the prefect.yaml with the schedule (default: deploy/prefect.yaml)")
    p.add_argument("--port", type=int, default=4200, help="port of the local Prefect server (default: 4200)")

    p = _command(
        sub, "report", commands.report, "evaluate a checkpoint: report.html (plots) and metrics.json"
    )
    p.add_argument("--model", required=True, help="checkpoint directory URI (path, file://, s3://)")
    p.add_argument("--input", help="dataset root URI with train/ and test/ (default: the config's data.uri)")
    p.add_argument("--output", help="output folder URI (default: MODEL/report)")
    p.add_argument("--iwae-k", type=int, default=1000, help="importance samples per example (default: 1000)")
    p.add_argument(
        "--max-rows",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="rows read per split: a larger split gives a uniform random sample of this many (seed 0; "
        "default: 10,000)",
    )
    p.add_argument("--all-rows", action="store_true", help="read every row of each split instead")
    p.add_argument(
        "--label",
        help="column that colours the latent scatter, and the ML-efficacy target unless --target names "
        "another (default: 'label' if present, else the last categorical column)",
    )
    p.add_argument(
        "--target",
        help="tabular ML-efficacy target, a categorical column (default: --label's column, else 'label' if "
        "present, else the last categorical column)",
    )
    p.add_argument(
        "--latent-scale",
        type=_positive_float,
        default=1.0,
        metavar="F",
        help="score rows sampled as `generate --latent-scale F` samples them (default: 1)",
    )

    p = _command(sub, "beta-study", commands.beta_study, "recon-only, KL-only and ELBO models side by side")
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
