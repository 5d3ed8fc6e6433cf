"""The typed records of a training run: what rank 0 sends, what meta.json keeps, what readers get back."""

import json

from vae_core.training.evaluation import EvalResult
from vae_core.training.loop import EpochStats
from vae_core.training.records import EpochRecord, RunStart

STATS = EpochStats(
    epoch=2,
    loss=101.5,
    recon=95.0,
    kl=6.5,
    elbo=-101.5,
    kl_weight=1.0,
    samples=500,
    seconds=0.5,
    step=40,
    wait_seconds=0.1,
)


def test_an_epoch_of_two_workers_counts_the_groups_samples_and_keeps_validation_only_when_run():
    validated = EpochRecord.of(
        STATS, epochs=5, world=2, val=EvalResult(-110.0, 104.0, 6.0, 100), val_seconds=0.2
    )
    assert (validated.samples, validated.samples_per_s) == (1000, 2000.0)
    assert validated.metrics() == {
        "loss": 101.5,
        "elbo": -101.5,
        "recon": 95.0,
        "kl": 6.5,
        "val_elbo": -110.0,
        "val_recon": 104.0,
        "val_kl": 6.0,
        "samples_per_s": 2000.0,
        "seconds": 0.5,
    }
    plain = EpochRecord.of(STATS, epochs=5)
    assert "val_elbo" not in plain.to_dict() and "val_elbo" not in plain.metrics()
    assert plain.line() == "epoch 2/5  loss 101.50  recon 95.00  kl 6.50  1,000 samples/s"
    assert validated.line().endswith("kl 6.50  val ELBO -110.00  2,000 samples/s")


def test_records_round_trip_through_json_and_older_histories_read():
    record = EpochRecord.of(STATS, epochs=5, val=EvalResult(-110.0, 104.0, 6.0, 100))
    assert EpochRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    old = EpochRecord.from_dict({**STATS.to_dict(), "val_elbo": -120.0})  # before records were typed
    assert (old.epoch, old.epochs, old.val_elbo, old.samples_per_s) == (2, 2, -120.0, 1000.0)


def test_the_start_line_names_the_group_and_the_untrained_elbo():
    start = RunStart(
        epochs=3, world=2, nodes=["a", "a"], gradients="shared memory", val_elbo_init=-543.21, warm=False
    )
    assert start.line() == "2 worker(s), gradients shared memory; untrained val ELBO -543.21"
