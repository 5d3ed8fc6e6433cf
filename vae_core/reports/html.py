"""One self-contained HTML page per report: captioned figures as base64 PNGs, the scalar metrics, the JSON."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from vae_core.data.storage import filesystem, join
from vae_core.reports.sections import Section

HTML_FILE = "report.html"

# Counts the <img> elements that decoded (complete with a natural width) once the page has loaded,
# so a headless browser's --dump-dom shows whether every plot rendered, and where the verdict sits
# against the window's height (above the fold or not).
_IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", String(ok));
  document.body.setAttribute("data-images-total", String(imgs.length));
  var verdict = document.getElementById("verdict");
  document.body.setAttribute("data-viewport-height", String(window.innerHeight));
  if (verdict) {
    document.body.setAttribute("data-verdict-top", String(verdict.getBoundingClientRect().top));
  }
});
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
#verdict li { margin: 0.3em 0; }
p.caption { color: #555; font-size: 0.9em; max-width: 60em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.75em; max-height: 30em; }
</style>"""


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves as ('a.b.c', value); lists, per-epoch history and per-pair tables are left out."""
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if key not in ("pairs", "history"):
                rows.extend(_flatten(value, f"{name}."))
        elif not isinstance(value, list):
            rows.append((name, value))
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def render_html(
    title: str,
    intro: str,
    sections: list[Section],
    metrics: Mapping[str, Any],
    verdict: list[str] | None = None,
) -> str:
    """One self-contained page: the verdict (sentences, first), figures as data URIs, a table of scalar
    metrics, the full JSON."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        _STYLE,
        "</head>",
        f'<body data-images-expected="{len(sections)}">',
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(intro)}</p>",
    ]
    if verdict:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in verdict)
        parts.append(f'<section id="verdict"><h2>Verdict</h2><ul>{items}</ul></section>')
    for s in sections:
        data = base64.b64encode(s.png).decode("ascii")
        parts += [
            f"<h2>{html.escape(s.heading)}</h2>",
            f'<p class="caption">{html.escape(s.caption)}</p>',
            f'<img alt="{html.escape(s.heading)}" src="data:image/png;base64,{data}">',
        ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th>{_cell(v)}</tr>" for k, v in _flatten(metrics))
    parts += [
        "<h2>Metrics</h2>",
        f"<table>{rows}</table>",
        "<h2>metrics.json</h2>",
        f"<pre>{html.escape(json.dumps(metrics, indent=1, default=str))}</pre>",
        _IMAGE_CHECK,
        "</body></html>",
    ]
    return "\n".join(parts)


def json_safe(value: Any) -> Any:
    """NaN and inf become null, numpy scalars Python numbers: what is written stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def write_page(out_uri: str, page: str, storage_options: dict[str, Any] | None = None) -> str:
    """Write `page` as out_uri/report.html and return that URI."""
    fs, root = filesystem(out_uri, storage_options)
    fs.makedirs(root, exist_ok=True)
    with fs.open(join(root, HTML_FILE), "w") as f:
        f.write(page)
    return join(out_uri, HTML_FILE)
