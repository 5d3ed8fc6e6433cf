"""How vaeflow's Adult settings (bench/adult_vs_tvae.py's VAEFLOW) are chosen: on Adult *train* only.

Adult test scores the benchmark, so nothing may be chosen on it, and `data import adult` makes it the
split that training validates on. This script holds out a fifth of Adult train instead (a fixed
permutation, seed 1234), fits the codec on the other four fifths, trains each candidate setting there
with the training loop the Ray workers run (`training.loop.fit`, the same optimizer, KL schedule and
batches of 500), fits the latent mixture as the final checkpoint does, generates as many rows as it
trained on, and scores them on the held-out fifth:
  - the held-out ELBO (the first criterion: model selection by validation ELBO),
  - F1 of '>50K' for LR, DT(max_depth 20) and MLP(50) trained on the generated rows (the benchmark's
    own classifiers, adult_vs_tvae.efficacy), per generation seed.
A setting is chosen by its held-out ELBO (mean over training seeds), and only when its held-out F1 is
not lower: the rows are for classifiers, and a better density model is not always better for them
(train.lr_schedule=cosine with lr 2e-3 scored -6.24 nats against -7.33 and an F1 of 0.624 against
0.632, so it was not taken). From one training seed to the next the held-out F1 moves by about 0.02,
too much to choose by alone.

Run: python -m bench.adult_selection SETTING_JSON [SEED ...], SETTING_JSON overriding VAEFLOW's model
and train settings by name: '{}' 0 1 2 tries the benchmark's own, '{"latent_dim": 32}' 0 1 2 a smaller
latent space, '{"weight_decay": 0, "warmup_epochs": 0}' 0 1 2 the settings before the warm-up and the
weight decay, '{"hidden": [256, 256]}' 0 1 2 a wider network (held-out F1 0.633 against 0.632, ELBO
-7.79 against -7.33: not taken).
`--priors DATASET SETTING_JSON [SEED ...]` (adult or compas: the COMPAS benchmark's training split,
bench.adult_vs_peers.compas) trains the setting once per seed on the dataset's four fifths and scores
rows drawn from each train.latent_prior fit on the held-out fifth (compare_priors): the detector of
adult_vs_peers, QualityReport, F1 and the distance to the closest training row. Seed 0, beta 0.5:
posterior was detected least on both (its figures are in the note of the change that made it the
default), with distances to training rows as unseen rows'; at beta 0.1 its Adult rows were
near-copies at generate.latent_scale 1.
`--scales DATASET SETTING_JSON [SEED ...]` does the same for the setting's own prior drawn at each
generate.latent_scale of SCALES: '{"beta": 0.1}' 0 1 2 at scale 2 scored a higher held-out F1 than
the benchmark's beta 0.5 at scale 1 on Adult and COMPAS, with distances to training rows about those
of unseen rows on Adult; the benchmark itself then gave it a QualityReport below 0.98 (bench.adult_vs_tvae
GENERATE).
The decoder: '{"decoder": "autoregressive", "beta": 1.0}' (each column given z and the columns before
it) against the factorised decoder at beta 0.5, the posterior prior, seeds 0-1 on both datasets
(`--priors`' posterior rows): a higher mean F1 and a lower detection AUC on Adult and on COMPAS, with
distances to training rows as unseen rows'; at beta 0.5 it scored a lower F1 than the factorised
decoder on Adult, and beta 2 no higher than beta 1. The benchmark itself then gave it no higher F1 on
Adult test and a QualityReport below 0.98 on one of two seeds (bench.adult_vs_tvae VAEFLOW: not taken;
figures in the note of the change that tried it).
`--samplers SETTING_JSON [SEED ...]` trains the setting once per seed and generates from each model
with every sampler of SAMPLERS (mixture sizes, the rows its fit encodes, the prior), so the
samplers are compared on the same models: on the benchmark's setting, seeds 0-2, the default mixture
scored 0.632, a mixture of 10 0.624, of 60 (or 20) 0.629, of 30 fitted to all rows 0.630, of 120 (or 40:
chosen every time) fitted to all rows 0.634, the prior 0.615; none differs from the default by more than
the seeds move it (the best, +0.002 on average, was -0.003 on seed 2), so the default stays.
Generated rows are kept as `vaeflow generate --match-shares income` keeps them (bench.adult_vs_tvae.GENERATE):
on the benchmark's setting, seeds 0-2, generation seeds 0-1 (a one-off variant of this script, each
model drawing 1.5x its rows once), the mean F1 was 0.629 with the first n draws, 0.637 with the label's
training share matched (higher in 6 of 6 pairs: chosen), 0.632 with every categorical column matched
(higher in 4 of 6).
One JSON line per (training seed, generation seed[, sampler]); it writes no result file (it is not a
benchmark: its figures are quoted where a setting was changed).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from bench import adult_vs_peers as peers
from bench.adult_vs_tvae import EPOCHS, GENERATE, POSITIVE, TARGET, VAEFLOW, _frame, column_kinds, efficacy
from vae_core.config import DataConfig, ModelConfig, TrainConfig
from vae_core.data.importers import read_adult
from vae_core.data.tabular import TabularTransformer
from vae_core.distributed.generate import MATCH_DRAWS
from vae_core.models.families import DataShape, build_model
from vae_core.models.sampler import (
    COMPONENTS,
    MAX_ROWS,
    LatentMixture,
    fit_latent_clusters,
    fit_latent_mixture,
    fit_latent_posterior,
)
from vae_core.reports.quality import Frames, privacy, sdmetrics_reports
from vae_core.training.evaluation import evaluate
from vae_core.training.inference import generate
from vae_core.training.loop import KLSchedule, LRSchedule, fit, make_optimizer

HOLDOUT, SPLIT_SEED, GENERATION_SEEDS = 0.2, 1234, (0, 1)


def split(dataset: str = "adult") -> tuple[pa.Table, pa.Table, list[str], list[str]]:
    """Adult train (or the COMPAS benchmark's training split) cut into four fifths to train on and a
    fifth to choose on (the test splits unread)."""
    if dataset == "compas":
        with tempfile.TemporaryDirectory() as tmp:
            data = peers.compas(Path(tmp))
        full, continuous, categorical = data.train, data.continuous, data.categorical
    else:
        full = read_adult("train")
        continuous, categorical = column_kinds(full)
    order = np.random.default_rng(SPLIT_SEED).permutation(full.num_rows)
    cut = int((1 - HOLDOUT) * full.num_rows)
    columns = continuous + categorical
    train, held = full.take(order[:cut]).select(columns), full.take(order[cut:]).select(columns)
    return train, held, continuous, categorical


def train_model(
    setting: dict[str, Any], seed: int, epochs: int = EPOCHS, dataset: str = "adult"
) -> dict[str, Any]:
    """One candidate trained on the four fifths with the workers' loop: the model, its codec, the
    rows (as codes), its held-out ELBO and training seconds."""
    train, held, continuous, categorical = split(dataset)
    data_keys = {k: v for k, v in setting.items() if k in DataConfig.model_fields}
    model_keys = {k: v for k, v in setting.items() if k in ModelConfig.model_fields}
    train_keys = {k: v for k, v in setting.items() if k not in model_keys and k not in data_keys}
    data_cfg = DataConfig(**data_keys)
    model_cfg = ModelConfig(**{**VAEFLOW["model"], **model_keys})
    train_cfg = TrainConfig(**{**VAEFLOW["train"], **train_keys, "epochs": epochs, "seed": seed})
    codec = TabularTransformer.fit(
        [train],
        continuous,
        categorical,
        train.schema,
        bins=data_cfg.continuous_bins,
        dependencies=data_cfg.dependencies,
        seed=0,
    )
    x = torch.as_tensor(codec.transform(train), dtype=torch.float32)
    x_held = torch.as_tensor(codec.transform(held), dtype=torch.float32)
    torch.manual_seed(seed)
    model = build_model(model_cfg, DataShape(codec.dim, None, codec.layout, "tabular"))
    shuffle = torch.Generator().manual_seed(seed)

    def batches(epoch: int):
        order = torch.randperm(len(x), generator=shuffle)
        for i in range(0, len(x), train_cfg.batch_size):
            yield x[order[i : i + train_cfg.batch_size]]

    t0 = time.perf_counter()
    fit(
        model,
        batches,
        epochs=epochs,
        optimizer=make_optimizer(model, train_cfg.lr, train_cfg.weight_decay),
        schedule=KLSchedule(train_cfg.beta, train_cfg.warmup_epochs, train_cfg.warmup_steps),
        lr_schedule=LRSchedule(train_cfg.lr, train_cfg.lr_schedule, epochs),
    )
    return {
        "model": model,
        "codec": codec,
        "x": x,
        "train": train,
        "held": held,
        "continuous": continuous,
        "categorical": categorical,
        "components": train_cfg.latent_mixture,
        "prior": train_cfg.latent_prior,
        "heldout_elbo": evaluate(model, [x_held], seed=seed).elbo,
        "train_s": time.perf_counter() - t0,
    }


def draw_rows(
    trained: dict[str, Any], sampler: LatentMixture | None, seed: int, match: list[str], scale: float
) -> pa.Table:
    """As many rows as the model trained on, drawn with `sampler` (None: the prior) at `scale` and
    generation seed `seed`, and kept as `vaeflow generate --match-shares` `match` keeps them."""
    codec, n = trained["codec"], len(trained["x"])
    drawn = math.ceil(MATCH_DRAWS * n) if match else n
    x_gen = generate(
        trained["model"], drawn, seed=seed, sample_likelihood=True, sampler=sampler, latent_scale=scale
    ).numpy()
    if match:
        x_gen = x_gen[codec.match_shares(x_gen, n, match, np.random.default_rng([seed, 1]))]
    return codec.inverse(x_gen)


def score(
    trained: dict[str, Any],
    mixture: LatentMixture | None,
    match: list[str] = GENERATE["match_shares"],
    scale: float = GENERATE["latent_scale"],
) -> list[dict[str, Any]]:
    """As many rows as the model trained on, per generation seed, drawn with `mixture` (None: the
    prior) and kept as `generate --match-shares` `match` keeps them (bench.adult_vs_tvae.GENERATE),
    scored on the held-out fifth."""
    train = trained["train"]
    records = []
    for g in GENERATION_SEEDS:
        rows = draw_rows(trained, mixture, g, match, scale)
        f1 = efficacy(
            _frame(rows, train.column_names),
            _frame(trained["held"], train.column_names),
            trained["continuous"],
        )
        labels = rows.column(TARGET).to_pylist()
        records.append(
            {
                "generation_seed": g,
                "f1": f1,
                "mean_f1": statistics.mean(f1.values()),
                "positive_share": labels.count(POSITIVE) / len(labels),
            }
        )
    return records


def latent_fit(trained: dict[str, Any], prior: str, seed: int) -> LatentMixture | None:
    """The final checkpoint's fit for train.latent_prior `prior` (distributed.worker)."""
    model, x = trained["model"], trained["x"]
    if prior == "posterior":
        return fit_latent_posterior(model, x, seed=seed)
    if prior == "clusters":
        return fit_latent_clusters(model, x, seed=seed)
    return fit_latent_mixture(model, x, seed=seed, components=trained["components"])


def run(setting: dict[str, Any], seed: int, epochs: int = EPOCHS) -> list[dict[str, Any]]:
    """A setting: trained once per seed, generated with the latent mixture as the final checkpoint
    fits it."""
    trained = train_model(setting, seed, epochs)
    mixture = latent_fit(trained, trained["prior"], seed)
    head = {"setting": setting, "train_seed": seed, "heldout_elbo": trained["heldout_elbo"]}
    return [{**head, **r, "train_s": trained["train_s"]} for r in score(trained, mixture)]


# The samplers compared on the same models (--samplers): components asked for (the mixture is that or a
# third of it, by the held-out likelihood of training codes) and the training rows encoded for the fit.
SAMPLERS: dict[str, tuple[int, int] | None] = {
    "mixture (the default)": (COMPONENTS, MAX_ROWS),
    "mixture of 10 or 3": (10, MAX_ROWS),
    "mixture of 60 or 20": (60, MAX_ROWS),
    "mixture of 30 or 10, all rows": (COMPONENTS, 10**9),
    "mixture of 120 or 40, all rows": (120, 10**9),
    "prior": None,
}


def compare_samplers(setting: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One model per seed, every sampler of SAMPLERS on it: the training seed's noise is shared, so
    the samplers' differences are paired."""
    trained = train_model(setting, seed)
    records = []
    for name, spec in SAMPLERS.items():
        mixture = (
            None
            if spec is None
            else fit_latent_mixture(
                trained["model"], trained["x"], seed=seed, components=spec[0], max_rows=spec[1]
            )
        )
        head = {
            "sampler": name,
            "train_seed": seed,
            "components": None if mixture is None else len(mixture.weights),
            "heldout_code_loglik": None if mixture is None else mixture.heldout,
        }
        records += [{**head, **r} for r in score(trained, mixture)]
    return records


PRIORS = ("posterior", "clusters", "mixture")  # train.latent_prior's choices
SCALES = (1.0, 2.0, 2.5, 3.0)  # generate.latent_scale's tried by --scales (on the setting's own prior)
LABELS = {"adult": (TARGET, POSITIVE), "compas": ("two_year_recid", "yes")}


def compare_priors(
    dataset: str,
    setting: dict[str, Any],
    seed: int,
    priors: tuple[str, ...] | None = PRIORS,
    scales: tuple[float, ...] = (1.0,),
) -> list[dict[str, Any]]:
    """One model per seed on `dataset`'s four fifths, rows drawn from each train.latent_prior fit of
    `priors` (None: the setting's own) at each generate.latent_scale of `scales` as `generate
    --match-shares <label>` keeps them, scored on the held-out fifth as adult_vs_peers scores the test
    rows: the detector (HGB, ordinal categories, 5 folds; the held-out rows as the real ones),
    QualityReport, F1, and the median distance to the closest training row over the held-out rows'
    own (dcr_ratio: well below 1 means near-copies)."""
    trained = train_model(setting, seed, dataset=dataset)
    train, held = trained["train"], trained["held"]
    continuous, categorical = trained["continuous"], trained["categorical"]
    target, positive = LABELS[dataset]
    real = peers.Dataset(dataset, held, held, continuous, categorical, target, positive, [])
    frames = lambda synth: Frames.of(train, held, synth, continuous, categorical)  # noqa: E731
    records = []
    for prior in priors or (trained["prior"],):  # None: the setting's own
        t0 = time.perf_counter()
        sampler = latent_fit(trained, prior, seed)
        fit_s = time.perf_counter() - t0
        for scale in scales:
            rows = draw_rows(trained, sampler, 0, [target], scale).select(train.column_names)
            f1 = efficacy(
                _frame(rows, train.column_names),
                _frame(held, train.column_names),
                continuous,
                target,
                positive,
            )
            dcr = privacy(frames(rows), seed=seed)
            records.append(
                {
                    "dataset": dataset,
                    "latent_prior": prior,
                    "latent_scale": scale,
                    "setting": setting,
                    "train_seed": seed,
                    "detection_auc": peers.detection(real, rows, seed)["auc"],
                    "quality": sdmetrics_reports(frames(rows))["quality"]["score"],
                    "f1": f1,
                    "mean_f1": statistics.mean(f1.values()),
                    "dcr_ratio": dcr["dcr_synthetic_median"] / dcr["dcr_holdout_median"],
                    "exact_copy_share": dcr["exact_copy_share"],
                    "fit_s": fit_s,
                }
            )
    return records


def main(argv: list[str]) -> None:
    if argv[:1] in (["--priors"], ["--scales"]):  # --priors|--scales DATASET SETTING_JSON [SEED ...]
        priors, scales = (None, SCALES) if argv[0] == "--scales" else (PRIORS, (1.0,))
        for seed in [int(s) for s in argv[3:]] or [0]:
            for record in compare_priors(argv[1], json.loads(argv[2]), seed, priors, scales):
                print(json.dumps(record), flush=True)
        return
    samplers = argv[:1] == ["--samplers"]
    argv = argv[1:] if samplers else argv
    setting = json.loads(argv[0]) if argv else {}
    for seed in [int(s) for s in argv[1:]] or [0]:
        for record in (compare_samplers if samplers else run)(setting, seed):
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
