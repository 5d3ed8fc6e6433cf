"""The HTML report renders in headless Chromium: a non-blank page on which every plot's image loaded."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from tests.report_fixtures import mnist_checkpoint
from vae_core.reports.report import write_report

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found is None:
        pytest.fail("headless Chromium is missing: run `make test`, which installs Debian's chromium package")
    return found


def _browse(tmp: Path, name: str, *args: str) -> str:
    profile = tmp / f"profile-{name}"  # a fresh profile per launch: no state shared between runs
    done = subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


@pytest.mark.timeout(300)
def test_report_renders_non_blank_with_every_plot_loaded(tmp_path):
    _, ckpt = mnist_checkpoint(tmp_path, n_train=500, n_test=200, epochs=1)
    result = write_report(ckpt, str(tmp_path / "report"), iwae_k=5)
    page = Path(result.html_uri)
    n_images = len(re.findall(r"<img ", page.read_text()))
    assert n_images == 6

    dom = _browse(tmp_path, "dom", "--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None, dom[:500]
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    assert loaded is not None, f"the page's load script did not run: {body.group(0)}"
    assert int(loaded.group(1)) == n_images

    shot = tmp_path / "shot.png"
    _browse(tmp_path, "shot", f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    pixels = imread(shot)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[:2] == (2400, 1280)
    # Text and plots: many distinct shades, not one flat colour.
    assert pixels.std() > 0.05
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


@pytest.mark.timeout(300)
def test_a_table_models_report_opens_with_its_verdict_above_the_fold(tmp_path):
    """A tabular model's page in Chromium at 1280x800: the verdict section is in the DOM, holds the
    detection AUC and the rules, and its top edge sits inside the first screen (read by the page's
    load script from the laid-out page)."""
    from tests.report_fixtures import adult_checkpoint

    _, ckpt = adult_checkpoint(tmp_path)
    page = Path(write_report(ckpt, str(tmp_path / "report"), iwae_k=5).html_uri)
    dom = _browse(
        tmp_path, "dom", "--window-size=1280,800", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()
    )
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None, dom[:500]
    top = re.search(r'data-verdict-top="([\d.]+)"', body.group(0))
    height = re.search(r'data-viewport-height="(\d+)"', body.group(0))
    assert top is not None and height is not None, body.group(0)
    assert 0 < float(top.group(1)) < int(height.group(1)) and int(height.group(1)) > 500  # the first screen
    verdict = re.search(r'<section id="verdict">(.*?)</section>', dom, re.S)
    assert verdict is not None
    assert "Detection ROC AUC" in verdict.group(
        1
    ) and "Columns that give the rows away most" in verdict.group(1)
    assert "Rules that hold in every real row" in verdict.group(
        1
    ) or "rules mined from the real rows hold" in verdict.group(1)

    shot = tmp_path / "verdict.png"
    _browse(tmp_path, "shot", f"--screenshot={shot}", "--window-size=1280,800", page.as_uri())
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (800, 1280) and pixels.std() > 0.05  # the first screen is not blank
