"""Settings as users type them: `section.key=value` overrides, and pydantic's errors as one line.

Kept apart from vae_core.config (the settings themselves): what a mistyped key or value says back,
with the key it probably meant (did you mean) and, for a list, how one is written on a command line.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from pydantic import BaseModel, ValidationError

from vae_core.errors import ConfigError


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"


def apply_overrides(model: type[BaseModel], data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`data` (model's fields as a dict) with `section.key=value` overrides set in place: each value as
    its field reads it (_parse_value). An unknown section or key is a ConfigError naming the override
    and the closest known name."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        node, fields = data, model
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                known = [k for k, v in node.items() if isinstance(v, dict)]
                raise ConfigError(f"override {item!r}: unknown section {part!r}{_did_you_mean(part, known)}")
            node, fields = node[part], fields.model_fields[part].annotation
        if leaf not in node:
            raise ConfigError(f"override {item!r}: unknown key {leaf!r}{_did_you_mean(leaf, list(node))}")
        field = fields.model_fields.get(leaf)
        node[leaf] = _parse_value(field.annotation if field else None, raw)
    return data


def _parse_value(annotation: Any, raw: str) -> Any:
    """An override's text as its field's type reads it: a text field keeps the text as given
    (name=2024 is the name "2024"; null clears an optional one); other values are parsed as JSON
    (numbers, true/false, lists, objects), else kept as text for pydantic to judge."""
    if annotation is str or (_is_optional_str(annotation) and raw != "null"):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _is_optional_str(annotation: Any) -> bool:
    args = getattr(annotation, "__args__", ())
    return set(args) == {str, type(None)}


def validation_message(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """A pydantic error in one line: `section.key: what is wrong (got value)`, up to three of them; a
    misspelt key with the closest key of `model` (the one validated), a list given as text with how a
    list is written."""
    parts = []
    for err in error.errors()[:3]:
        where = ".".join(str(part) for part in err["loc"]) or "config"
        got = err.get("input")
        quiet = got is None or isinstance(got, dict) or err["type"] == "json_invalid"
        shown = "" if quiet else f" (got {got!r})"
        if err["type"] == "list_type" and isinstance(got, str):
            items = ",".join(json.dumps(v.strip()) for v in got.split(",") if v.strip())
            shown += f"; a list is JSON: {where}='[{items}]'"
        if err["type"] == "extra_forbidden" and model is not None:
            shown = _known_fields(model, err["loc"])
        parts.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(parts)


def _known_fields(model: Any, loc: tuple) -> str:
    """'; did you mean ...' for an extra key at `loc` of `model`."""
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", {})
        model = fields[part].annotation if part in fields else None
    known = list(getattr(model, "model_fields", {}))
    return _did_you_mean(str(loc[-1]), known) if known else ""
