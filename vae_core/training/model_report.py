"""The model report (metrics.json): what evaluating one model on held-out data found, typed, with its
writer (`save_model_report`) and reader (`load_model_report`).

vae_core.reports.report writes it; the registry's promotion gate (vae_core.operations.registry) and the
flows read it. The keys (nats per example throughout; elbo = -(recon + kl), so higher is better):
    model                 family, backbone, likelihood, latent_dim, checkpoint uri and epoch
    data                  dataset uri, rows read per split, label column used for the scatter
    test                  {"elbo", "recon", "kl", "n"}: one-sample ELBO terms on the test split
    iwae                  {"log_likelihood", "k", "n"}: importance-weighted bound on log p(x) with k
                          samples (log_likelihood is None for a deterministic AE)
    active_units          latent dims whose posterior mean varies across the test split (Cov > 0.01)
    aggregate_posterior   q(z) = mean_x q(z|x) against N(0, I): "mean" and "var" per dim, "mean_abs_mu",
                          "mean_var", "kl_moment_matched" (KL from N(mean, Cov) to N(0, I)),
                          "kl_moment_matched_diag", "mean_posterior_var", "n"
    synthetic_quality     data with table columns only: vae_core.reports.quality.synthetic_quality of
                          rows sampled from the model against the real train/test splits
    history               per-epoch training records from the checkpoint, when it has them

Every section is optional, so the metrics.json of earlier releases and hand-made ones read; keys this
release does not know (the nightly's "training" summary, ...) are kept and written back. The file is
strict JSON: a NaN or inf number is written as null, and a null ELBO term reads back as NaN.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from vae_core.data.objects import atomic_write_bytes
from vae_core.data.storage import filesystem, join
from vae_core.errors import ModelReportError
from vae_core.training.evaluation import EvalResult

METRICS_FILE = "metrics.json"


def _nan_for_null(terms: Any) -> Any:
    """A non-finite ELBO term was written as null: read it back as the NaN it was."""
    if isinstance(terms, dict):
        return {k: math.nan if v is None else v for k, v in terms.items()}
    return terms


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelInfo(_Section):
    uri: str | None = None  # the checkpoint evaluated
    family: str | None = None
    backbone: str | None = None
    likelihood: str | None = None
    latent_dim: int | None = None
    epoch: int | None = None


class DataInfo(_Section):
    uri: str | None = None
    test_rows: int | None = None  # rows of the test split evaluated
    test_rows_in_split: int | None = None  # rows the test split holds (a report reads a bounded sample)
    label_column: str | None = None
    train_rows: int | None = None  # rows of the train split read (synthetic quality only)
    train_rows_in_split: int | None = None
    sampling: dict[str, str] | None = None  # split -> how its rows were chosen (reports.splits.SplitData)


class IwaeBound(_Section):
    log_likelihood: float | None  # None for a deterministic AE
    k: int
    n: int


class ModelReport(_Section):
    """metrics.json of one model. Sections left unset are not written (an image model's report has
    no synthetic_quality), so what was read is written back with the same keys."""

    model: ModelInfo | None = None
    data: DataInfo | None = None
    test: Annotated[EvalResult | None, BeforeValidator(_nan_for_null)] = None
    iwae: IwaeBound | None = None
    active_units: int | None = None
    aggregate_posterior: dict[str, Any] | None = None  # vae_core.training.evaluation.aggregate_posterior
    synthetic_quality: dict[str, Any] | None = None  # vae_core.reports.quality.synthetic_quality
    history: list[dict[str, Any]] | None = None

    @property
    def heldout_elbo(self) -> float | None:
        """The test split's ELBO in nats per row (higher is better), what the promotion gate compares."""
        return None if self.test is None else self.test.elbo

    def to_dict(self) -> dict[str, Any]:
        """The set sections as plain Python values, non-finite numbers as they are."""
        return self.model_dump(exclude_unset=True)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_unset=True, indent=1, fallback=_python_scalar)

    def to_json_dict(self) -> dict[str, Any]:
        """What metrics.json holds, as Python values (non-finite numbers are None): for display."""
        return json.loads(self.to_json())

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = METRICS_FILE) -> ModelReport:
        """Validate a metrics object; a ModelReportError names the source and each wrong field."""
        try:
            return cls.model_validate(d)
        except ValidationError as e:
            wrong = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ModelReportError(f"{source}: not a model report ({wrong})") from None


def _python_scalar(value: Any) -> Any:
    """numpy scalars in the free-form sections (quality scores) as the Python numbers they hold."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def save_model_report(
    folder_uri: str, report: ModelReport, storage_options: dict[str, Any] | None = None
) -> str:
    """Write `report` as folder_uri/metrics.json in one step (readers see the old file or the new one);
    returns the file's URI."""
    uri = join(folder_uri, METRICS_FILE)
    atomic_write_bytes(uri, report.to_json().encode(), storage_options)
    return uri


def load_model_report(folder_uri: str, storage_options: dict[str, Any] | None = None) -> ModelReport:
    """The model report in folder_uri/metrics.json; a ModelReportError saying what is wrong when it is
    missing, not JSON, not an object or not a model report (an empty object is a report with no
    sections)."""
    uri = join(folder_uri, METRICS_FILE)
    fs, path = filesystem(uri, storage_options)
    fs.invalidate_cache(path)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise ModelReportError(f"{uri}: missing") from None
    try:
        d = json.loads(data)
    except ValueError as e:
        raise ModelReportError(f"{uri}: not JSON ({e})") from e
    if not isinstance(d, dict):
        raise ModelReportError(f"{uri}: not a JSON object but {type(d).__name__}")
    return ModelReport.from_dict(d, uri)
