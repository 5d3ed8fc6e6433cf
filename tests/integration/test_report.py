"""Reports: metrics.json keys and values, a self-contained HTML page, the CLI commands."""

import base64
import json
import re

import fsspec
import pytest

from flows.cli import main
from tests.report_fixtures import adult_checkpoint, mnist_checkpoint
from vae_core.errors import DataError
from vae_core.reports.report import write_report
from vae_core.training.checkpoints import load_checkpoint
from vae_core.training.model_report import load_model_report


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    return mnist_checkpoint(tmp_path_factory.mktemp("mnist"))


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)]


def test_image_report_has_the_metrics_and_embeds_every_plot(mnist):
    _, ckpt = mnist
    out = "memory://reports/mnist"  # any URI: the report goes through fsspec
    lines = []
    result = write_report(ckpt, out, iwae_k=20, max_eval_rows=200, progress=lines.append)
    r = result.report
    assert result.html_uri == f"{out}/report.html" and result.metrics_uri == f"{out}/metrics.json"
    assert r.test.n == 200 and r.heldout_elbo == pytest.approx(-(r.test.recon + r.test.kl))
    assert r.iwae.k == 20 and r.iwae.n == 200
    # The IWAE bound is tighter than the one-sample ELBO estimate, up to its noise.
    assert r.iwae.log_likelihood > r.test.elbo - 1.0
    assert 0 <= r.active_units <= 3 and r.model.latent_dim == 3 and r.model.epoch == 2
    agg = r.aggregate_posterior
    assert len(agg["mean"]) == len(agg["var"]) == 3 and agg["kl_moment_matched"] >= 0
    assert r.data.label_column == "label" and len(r.history) == 2
    assert r.synthetic_quality is None and any("test rows" in line for line in lines)
    with fsspec.open(result.metrics_uri, "r") as f:
        written = json.load(f)
    assert written["test"] == {"elbo": r.test.elbo, "recon": r.test.recon, "kl": r.test.kl, "n": 200}
    assert "synthetic_quality" not in written and "train_rows" not in written["data"]
    assert load_model_report(out) == r
    with fsspec.open(result.html_uri, "r") as f:
        page = f.read()
    images = _images(page)
    # training curves, latent scatter, aggregate posterior, samples, reconstructions, interpolation
    assert len(images) == 6 and f'data-images-expected="{len(images)}"' in page
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") and len(img) > 2_000 for img in images)
    assert not re.search(r'(src|href)="(http|//)', page)  # nothing fetched from elsewhere


def test_missing_data_uri_is_a_clear_error(tmp_path, mnist):
    _, ckpt = mnist
    with pytest.raises(DataError, match="no such dataset"):
        write_report(ckpt, str(tmp_path / "out"), str(tmp_path / "nowhere"), iwae_k=2)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_tabular_report_scores_synthetic_rows(tmp_path):
    _, ckpt = adult_checkpoint(tmp_path)
    result = write_report(ckpt, str(tmp_path / "report"), iwae_k=5)
    r = result.report
    assert r.test.n == 400 and r.data.train_rows == 800
    q = r.synthetic_quality
    assert set(q) >= {"quality", "diagnostic", "column_shapes", "column_pair_trends", "ml_efficacy"}
    assert len(q["column_shapes"]["columns"]) == 15 and 0 < q["column_shapes"]["mean"] <= 1
    # SDMetrics' overall scores, and validity for every column (DiagnosticReport).
    assert 0 < q["quality"]["score"] <= 1 and 0 < q["diagnostic"]["score"] <= 1
    assert len(q["diagnostic"]["validity"]) == 15
    eff = q["ml_efficacy"]
    assert eff["target"] == "income" and eff["positive"] == ">50K"
    assert set(eff["synthetic"]) == {"logistic_regression", "decision_tree", "gradient_boosting"}
    assert eff["real_mean"] > 0.4 and 0.5 <= q["detection"]["auc"] <= 1.0
    assert q["privacy"]["rows"] == 800 and q["privacy"]["dcr_holdout_median"] > 0
    assert load_model_report(str(tmp_path / "report")).synthetic_quality == json.loads(json.dumps(q))
    page = (tmp_path / "report" / "report.html").read_text()
    # latent scatter, aggregate posterior, column shapes, pair trends, detection by column,
    # correlations side by side, marginals (of every column)
    assert len(_images(page)) == 7
    assert "QualityReport score" in page and "DiagnosticReport score" in page
    by_column = q["detection"]["by_column"]
    assert len(by_column) == 15 and list(by_column.values()) == sorted(by_column.values(), reverse=True)
    assert "Detection: real against synthetic rows" in page and "gradient boosting" in page

    # --latent-scale: the rows scored are drawn as `generate --latent-scale` draws them (other rows,
    # the same real ones), and the progress says so.
    lines: list[str] = []
    wide = write_report(ckpt, str(tmp_path / "wide"), iwae_k=5, latent_scale=3.0, progress=lines.append)
    assert any("at latent scale 3)" in line for line in lines), lines
    far, near = wide.report.synthetic_quality["privacy"], q["privacy"]
    assert far["dcr_holdout_median"] == near["dcr_holdout_median"], (far, near)
    assert far["dcr_synthetic_median"] != near["dcr_synthetic_median"], (far, near)


def test_report_command_prints_where_it_wrote(mnist, tmp_path, capsys):
    _, ckpt = mnist
    out = tmp_path / "cli-report"
    assert main(["report", "--model", ckpt, "--output", str(out), "--iwae-k", "5", "--max-rows", "100"]) == 0
    printed = capsys.readouterr().out
    assert "test: ELBO" in printed and str(out / "report.html") in printed
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] == 100


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_beta_study_command_writes_three_models_and_their_report(mnist, tmp_path, capsys):
    data, _ = mnist
    out = tmp_path / "study"
    argv = ["beta-study", "--input", data, "--output", str(out), "--epochs", "1", "--hidden", "16"]
    assert main([*argv, "--max-train-rows", "500", "--max-test-rows", "100", "train.batch_size=50"]) == 0
    printed = capsys.readouterr().out
    assert "KL only" in printed and str(out / "report.html") in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["arms"]) == ["recon only (beta=0)", "KL only", "ELBO (beta=1)"]
    assert metrics["data"]["train_rows"] == 500 and metrics["data"]["label_column"] == "label"
    for name, uri in metrics["checkpoints"].items():
        ck = load_checkpoint(uri)
        assert ck.config.model.latent_dim == 2 and ck.config.data.vector_column == "image"
        assert ck.config.train.beta == metrics["arms"][name]["beta"]
    # scatters, aggregate posterior, curves, samples, reconstructions, interpolation
    assert len(_images((out / "report.html").read_text())) == 6


def test_a_report_reads_a_uniform_sample_of_a_sorted_split(tmp_path):
    """Shards of 1,000, 3,000 and 6,000 rows whose ids are sorted (small row groups), 1,000 rows asked:
    a seeded uniform sample over the whole split, not each file's first rows: its quantiles are the
    split's within 5%, every file gives rows in proportion, and the same seed draws the same rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vae_core.config import DataConfig
    from vae_core.data.codecs.vector import VectorCodec
    from vae_core.reports.splits import EVAL_ROWS, read_split

    (tmp_path / "test").mkdir()
    start = 0
    for i, n in enumerate([1000, 3000, 6000]):
        x = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * 4, np.float32)), 4)
        ids = pa.array(np.arange(start, start + n))
        pq.write_table(
            pa.table({"id": ids, "x": x}), tmp_path / "test" / f"part-{i}.parquet", row_group_size=500
        )
        start += n
    codec, data = VectorCodec("x", 4, "float"), DataConfig(uri=str(tmp_path), vector_column="x")
    split = read_split(data, "test", codec, "id", max_rows=1000)
    assert split.rows_in_split == 10_000 and len(split.x) == 1000
    ids = split.labels
    assert len(np.unique(ids)) == 1000 and (np.diff(ids) > 0).all()  # distinct rows, in file order
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(np.quantile(ids, q) - np.quantile(np.arange(10_000), q)) <= 0.05 * 10_000, q
    assert 50 <= (ids < 1000).sum() <= 150 and 500 <= (ids >= 4000).sum() <= 700
    assert split.sampling == "a uniform random sample of 1,000 of 10,000 rows (seed 0)"
    assert (read_split(data, "test", codec, "id", max_rows=1000).labels == ids).all()
    assert not (read_split(data, "test", codec, "id", max_rows=1000, seed=1).labels == ids).all()
    every = read_split(data, "test", codec, "id", max_rows=None)
    assert every.labels.tolist() == list(range(10_000)) and every.sampling == "all 10,000 rows"
    assert EVAL_ROWS == 10_000 and len(read_split(data, "test", codec).x) == 10_000  # not above the bound
