"""The private Ray APIs vaeflow relies on live in one module, and a Ray without them fails here, by name."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from vae_core.distributed import ray_internals

PACKAGE = Path(ray_internals.__file__).parents[1]


def test_this_ray_has_every_private_api_vaeflow_uses():
    moved = ray_internals.missing()
    assert moved == [], f"private Ray APIs this Ray lacks (update distributed/ray_internals.py): {moved}"


def test_a_ray_whose_internals_changed_is_named_api_by_api(monkeypatch):
    import ray._private.parameter as parameter

    def init_without_no_monitor(self, node_ip_address=None):  # a RayParams that lost the option
        pass

    monkeypatch.setattr(parameter.RayParams, "__init__", init_without_no_monitor)
    monkeypatch.setitem(sys.modules, "ray.train.v2._internal.callbacks.placement_group_callback", None)
    assert ray_internals.missing() == [
        "ray._private.parameter.RayParams(no_monitor=...)",
        "ray.train.v2._internal.callbacks.placement_group_callback.PlacementGroupCleanerCallback",
    ]


def test_only_ray_internals_reaches_into_ray_private_modules():
    users = sorted(
        str(p.relative_to(PACKAGE.parent))
        for p in PACKAGE.rglob("*.py")
        if re.search(r"ray\._private|_raylet|ray\.[\w.]*\._internal|_create_default_callbacks", p.read_text())
    )
    assert users == ["vae_core/distributed/ray_internals.py"]


def test_importing_the_library_leaves_the_environment_alone():
    # One interpreter imports each module in turn and reports what each import changed in os.environ.
    # Ray itself sets RAY_CLIENT_MODE when imported: the baseline is taken after Ray's imports.
    code = """
import importlib, json, os, ray, ray.data, ray.train.torch
changed = {}
for module in ("vae_core.distributed", "vae_core.distributed.trainer", "flows.cli"):
    before = dict(os.environ)
    importlib.import_module(module)
    changed[module] = {k: (before.get(k), os.environ.get(k)) for k in before.keys() | os.environ.keys()
                       if before.get(k) != os.environ.get(k)}
print(json.dumps(changed))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    changed = json.loads(out.stdout.strip().splitlines()[-1])
    assert changed == {"vae_core.distributed": {}, "vae_core.distributed.trainer": {}, "flows.cli": {}}


def test_ray_datas_log_of_a_reported_error_is_dropped_and_a_bugs_is_kept():
    """A user error from a Ray Data task reaches the CLI, which prints it in one line: Ray Data's own
    records of it (with exc_info, or logged inside the handling `except`) are dropped; a bug's stay."""
    import logging

    from vae_core.errors import DataError, UserError

    keep = ray_internals.WithoutReported(UserError).filter

    def record(error: BaseException | None) -> logging.LogRecord:
        exc_info = (type(error), error, None) if error else None
        return logging.LogRecord("ray.data.exceptions", logging.ERROR, __file__, 1, "failed", (), exc_info)

    assert not keep(record(DataError("x.parquet: bad row")))
    assert keep(record(ValueError("inside numpy")))
    assert keep(record(None))  # no exception at all: an ordinary line
    try:
        raise DataError("x.parquet: bad row")
    except DataError:
        assert not keep(record(None))
    try:
        raise TypeError("inside torch")
    except TypeError:
        assert keep(record(None))
