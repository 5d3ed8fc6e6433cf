"""The model report (metrics.json): typed fields, a key-for-key round trip, old files read, strict errors."""

import json
import math

import numpy as np
import pytest

from vae_core.errors import ModelReportError
from vae_core.training.evaluation import EvalResult
from vae_core.training.model_report import (
    DataInfo,
    IwaeBound,
    ModelInfo,
    ModelReport,
    load_model_report,
    save_model_report,
)

# metrics.json as write_report wrote it before the report was typed, plus the nightly's "training".
OLD_METRICS = {
    "model": {
        "uri": "s3://b/runs/r1/epoch_0002",
        "family": "vae",
        "backbone": "mlp",
        "likelihood": "bernoulli",
        "latent_dim": 3,
        "epoch": 2,
    },
    "data": {"uri": "s3://b/mnist", "test_rows": 200, "label_column": "label"},
    "test": {"elbo": -181.5, "recon": 170.25, "kl": 11.25, "n": 200},
    "iwae": {"log_likelihood": -176.0, "k": 20, "n": 200},
    "active_units": 3,
    "aggregate_posterior": {
        "mean": [0.1, -0.2, 0.0],
        "var": [0.9, 1.1, 1.0],
        "kl_moment_matched": 0.02,
        "n": 200,
    },
    "history": [{"epoch": 1, "recon": 200.0, "kl": 9.0, "elbo": -209.0}],
    "training": {"epochs": 2, "val_elbo": -182.0, "val_elbo_best": -182.0, "val_elbo_untrained": -543.0},
}


def test_an_old_metrics_file_reads_typed_and_writes_back_with_the_same_keys(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(OLD_METRICS))
    report = load_model_report(str(tmp_path))
    assert report.heldout_elbo == -181.5 and report.test == EvalResult(-181.5, 170.25, 11.25, 200)
    assert report.model.latent_dim == 3 and report.data.label_column == "label"
    assert report.iwae.log_likelihood == -176.0 and report.active_units == 3
    assert report.synthetic_quality is None and report.data.train_rows is None  # absent, not invented
    assert report.to_dict() == OLD_METRICS  # the nightly's "training" is kept
    uri = save_model_report(str(tmp_path / "copy"), report)
    assert uri == str(tmp_path / "copy" / "metrics.json")
    assert json.loads((tmp_path / "copy" / "metrics.json").read_text()) == OLD_METRICS


def test_a_report_built_in_code_round_trips_through_its_file(tmp_path):
    report = ModelReport(
        model=ModelInfo(uri="m", family="ae", latent_dim=2, epoch=1),
        data=DataInfo(uri="d", test_rows=10, label_column=None, train_rows=20),
        test=EvalResult(-12.0, 12.0, 0.0, 10),
        iwae=IwaeBound(log_likelihood=None, k=5, n=0),  # a deterministic AE has no bound
        active_units=2,
        synthetic_quality={"rows": {"real_train": np.int64(20)}, "column_shapes": {"mean": np.float64(0.75)}},
    )
    save_model_report(f"memory://{tmp_path.name}/r", report)
    back = load_model_report(f"memory://{tmp_path.name}/r")
    assert back == ModelReport.from_dict(report.to_dict())
    assert back.synthetic_quality == {"rows": {"real_train": 20}, "column_shapes": {"mean": 0.75}}
    assert back.data.label_column is None and back.iwae.log_likelihood is None
    assert "history" not in back.to_dict()  # unset sections stay out of the file


def test_non_finite_terms_are_null_on_disk_and_nan_when_read(tmp_path):
    report = ModelReport(test=EvalResult(float("nan"), 1.0, float("inf"), 5))
    save_model_report(str(tmp_path), report)
    text = (tmp_path / "metrics.json").read_text()
    assert json.loads(text)["test"] == {"elbo": None, "recon": 1.0, "kl": None, "n": 5}  # strict JSON
    back = load_model_report(str(tmp_path))
    assert math.isnan(back.test.elbo) and math.isnan(back.test.kl) and back.test.recon == 1.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "metrics.json: missing"),
        ("{not json", "metrics.json: not JSON"),
        ("[1, 2]", "metrics.json: not a JSON object but list"),
        ('{"test": "x"}', "metrics.json: not a model report (test: Input should be a dictionary"),
        (
            '{"test": {"elbo": -1.0}}',
            "not a model report (test.recon: Field required; test.kl: Field required",
        ),
        (
            '{"iwae": {"k": "many", "n": 1, "log_likelihood": null}}',
            "(iwae.k: Input should be a valid integer",
        ),
    ],
)
def test_a_file_that_is_not_a_model_report_is_an_error_naming_it_and_the_field(tmp_path, content, message):
    if content is not None:
        (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(ModelReportError) as e:
        load_model_report(str(tmp_path))
    assert str(e.value).startswith(str(tmp_path)) and message in str(e.value)


def test_an_empty_object_is_a_report_without_a_held_out_elbo(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    report = load_model_report(str(tmp_path))
    assert report.heldout_elbo is None and report.to_dict() == {}
