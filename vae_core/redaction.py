"""Secrets in storage options shown as "***" wherever a config leaves the process as text."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
# Key names that hold credentials in fsspec, botocore and delta-rs options (key, secret, token,
# aws_secret_access_key, AWS_SESSION_TOKEN, password, credentials, ...). endpoint_url, region_name
# and the like stay visible.
SECRET_KEY = re.compile(r"secret|passw|token|key|credential", re.IGNORECASE)


def redact(value: Any) -> Any:
    """A copy of `value` with every non-empty value under a secret-looking key replaced by "***",
    at any depth of nested dicts and lists."""
    if isinstance(value, dict):
        return {
            k: REDACTED if SECRET_KEY.search(str(k)) and value[k] not in (None, "") else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def holds_redacted(value: Any) -> bool:
    """True when `value` (storage options) has a "***" anywhere: it came from a written config."""
    if isinstance(value, dict):
        return any(holds_redacted(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(holds_redacted(v) for v in value)
    return value == REDACTED
