"""The docs against the tree: relative links (and their headings) resolve, every config key is described."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LINK = re.compile(r"\]\(([^)\s]+)\)")


def _docs() -> list[Path]:
    return [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(doc: Path) -> set[str]:
    """GitHub's anchors for the headings of `doc`: lower case, punctuation dropped, spaces as '-'."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", doc.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for doc in _docs():
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            path, _, anchor = target.partition("#")
            file = doc.parent / path if path else doc
            if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, f"links to files or headings that do not exist: {broken}"


def test_docs_config_names_every_config_key():
    from vae_core.config import VaeflowConfig
    from vae_core.operations.pipeline import PipelineConfig

    keys = [
        f"{section}.{key}"
        for section, field in VaeflowConfig.model_fields.items()
        if hasattr(field.annotation, "model_fields")
        for key in field.annotation.model_fields
    ]
    keys += [f"pipeline.{key}" for key in PipelineConfig.model_fields]
    text = (ROOT / "docs" / "config.md").read_text()
    missing = [key for key in keys if f"`{key}`" not in text]
    assert not missing, f"docs/config.md does not describe {missing}"
