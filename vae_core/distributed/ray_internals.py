"""Every private Ray API vaeflow touches (Ray 2.60), in one module, each with the reason it is needed.

A Ray upgrade that moves one of them breaks here first: `missing()` names each API this Ray lacks and
tests/unit/test_ray_internals.py fails with those names, instead of a local cluster that quietly
listens on a metrics port again or a log full of failed State API queries.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import ray.train.torch

# Driver-side Ray Data lines that repeat what vaeflow's own progress says (one "Dataset ... execution
# finished" per job, "Progress bars disabled" once): quiet on our drivers, whatever the cluster.
QUIET_LOGGERS = {
    "ray.data._internal.progress": logging.ERROR,
    "ray.data._internal.execution.streaming_executor": logging.WARNING,
}
# The V1 Parquet datasource logs its sampled encoding ratio and batch size at INFO, twice per dataset.
PARQUET_V1_LOGGER = "ray.data._internal.datasource.parquet_datasource"
# Where Ray Data logs a failed task's exception, traceback and all, on its way to the driver's caller
# (who reports it again): the executor when the task fails, the Dataset's API when it re-raises.
TASK_ERROR_LOGGERS = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions")


class WithoutReported(logging.Filter):
    """Drops the records of TASK_ERROR_LOGGERS logged about an exception the caller reports itself
    (for the CLI a user error: one line, exit 2); any other exception, a bug, keeps Ray's traceback.
    Some of those records carry no exc_info: they are logged inside the `except` that handles it."""

    def __init__(self, reported: type[BaseException]) -> None:
        super().__init__()
        self.reported = reported

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return not isinstance(error, self.reported)


_PARAMETER = "ray._private.parameter"
_CLEANER = "ray.train.v2._internal.callbacks.placement_group_callback"


@contextlib.contextmanager
def without_autoscaler_monitor() -> Iterator[None]:
    """Start the head without Ray's autoscaler monitor (`ray start --no-monitor`).

    Ray turns a loopback node address into the machine's external one, so every process of a local
    cluster listens beyond 127.0.0.1. Token auth guards the gRPC servers, but the monitor also serves
    Prometheus metrics over plain HTTP on 0.0.0.0:44217, answering anyone. A fixed local cluster has
    nothing to autoscale; ray.init has no option for this, so the head's parameters get `no_monitor`
    for the duration of this call.
    """
    parameter = importlib.import_module(_PARAMETER)
    original = parameter.RayParams.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.no_monitor = True

    parameter.RayParams.__init__ = init
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original


def reload_auth_settings() -> None:
    """Ray caches RAY_AUTH_MODE and the token when ray is first imported; re-read them from the
    environment, as ray.init does itself when it turns token auth on (and as Ray's own tests do)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


class TorchTrainer(ray.train.torch.TorchTrainer):
    """TorchTrainer that, with `local` set (our own local cluster), starts no PlacementGroupCleaner:
    that actor asks the State API once a second whether the controller is alive, the State API needs
    the dashboard, which a local cluster here runs without, so every query failed and logged "Failed
    to query Ray Train Controller actor state", a line a second. Its job, removing the workers'
    placement group should the controller die, is done on a local cluster by the cluster's shutdown."""

    local = False

    def _create_default_callbacks(self) -> list[Any]:
        callbacks = super()._create_default_callbacks()
        if not self.local:
            return callbacks
        cleaner = importlib.import_module(_CLEANER).PlacementGroupCleanerCallback
        return [c for c in callbacks if not isinstance(c, cleaner)]


def _has(module: str, attribute: str = "") -> Callable[[], bool]:
    def check() -> bool:
        if importlib.util.find_spec(module) is None:
            return False
        return not attribute or hasattr(importlib.import_module(module), attribute)

    return check


def _ray_params_take_no_monitor() -> bool:
    params = importlib.import_module(_PARAMETER).RayParams
    return "no_monitor" in inspect.signature(params.__init__).parameters


def _auth_cache_resets() -> bool:
    from ray import _raylet

    loader = getattr(_raylet, "AuthenticationTokenLoader", None)
    config = getattr(_raylet, "Config", None)
    return loader is not None and hasattr(loader, "instance") and hasattr(config, "initialize")


# What each use above needs from Ray, by the name an error should give.
REQUIRED: dict[str, Callable[[], bool]] = {
    f"{_PARAMETER}.RayParams(no_monitor=...)": _ray_params_take_no_monitor,
    "ray._raylet.AuthenticationTokenLoader.instance / ray._raylet.Config.initialize": _auth_cache_resets,
    "ray.train.torch.TorchTrainer._create_default_callbacks": lambda: hasattr(
        ray.train.torch.TorchTrainer, "_create_default_callbacks"
    ),
    f"{_CLEANER}.PlacementGroupCleanerCallback": _has(_CLEANER, "PlacementGroupCleanerCallback"),
    **{f"logger {name}": _has(name) for name in [*QUIET_LOGGERS, PARQUET_V1_LOGGER, *TASK_ERROR_LOGGERS]},
}


def missing() -> list[str]:
    """The private APIs this module uses that the installed Ray lacks, by name; [] on Ray 2.60."""
    out = []
    for name, present in REQUIRED.items():
        try:
            ok = present()
        except Exception:  # an import that fails is a missing API too
            ok = False
        if not ok:
            out.append(name)
    return out
