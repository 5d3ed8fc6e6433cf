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
import os
import sys
import threading
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


# Ray Data's actor pools pass their map function to each actor through the object store (ray.put in
# ActorPoolMapOperator, held for the operator's lifetime) and allow restarts, and on each actor's
# creation the driver's C++ core worker prints a warning at error level to the process's stderr
# (core_worker.cc, ray-project/ray#53727) that the reference could go out of scope: it cannot here.
ACTOR_ARGS_WARNING = b"has constructor arguments in the object store and max_restarts > 0"
log = logging.getLogger(__name__)


@contextlib.contextmanager
def native_stderr_without(marker: bytes = ACTOR_ARGS_WARNING) -> Iterator[None]:
    """While the block runs, what this process writes to file descriptor 2 (Python and C++ alike) goes
    through a pipe: lines holding `marker` become one debug record of this module's logger, every other
    line reaches stderr unchanged. Actor restarts stay as Ray sets them; only the line goes."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward(line: bytes) -> None:
        if marker in line:
            log.debug("%s", line.decode(errors="replace").strip())
        else:
            os.write(saved, line)

    def pump() -> None:
        rest = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    forward(line + b"\n")
        if rest:
            forward(rest)

    thread = threading.Thread(target=pump, name="vaeflow-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the pump reads to its end and stops
        thread.join(timeout=2.0)
        if not thread.is_alive():  # else a child process holds the pipe: the pump keeps forwarding
            os.close(saved)


_LOGGING = "ray._private.ray_logging"


def drop_forwarded_lines(marker: bytes = ACTOR_ARGS_WARNING) -> None:
    """On a driver that joined a cluster (log_to_driver), drop the workers' forwarded log lines holding
    `marker` (a debug record instead): Ray Train's controller creates its own actors and prints the same
    warning, which the driver would print as its own. Wraps the handler ray.init added to Ray's
    stdstream dispatcher ("ray_print_logs"); once per process."""
    dispatcher = importlib.import_module(_LOGGING).global_worker_stdstream_dispatcher
    text = marker.decode()
    with dispatcher._lock:
        for i, (name, handler) in enumerate(dispatcher.handlers):
            if name != "ray_print_logs" or getattr(handler, "vaeflow_filtered", False):
                continue

            def filtered(data: dict[str, Any], handler: Callable[[dict[str, Any]], None] = handler) -> None:
                lines = data.get("lines") or []
                for line in lines:
                    if text in line:
                        log.debug("%s", line)
                kept = [line for line in lines if text not in line]
                if kept or not lines:
                    handler({**data, "lines": kept})

            filtered.vaeflow_filtered = True  # type: ignore[attr-defined]
            dispatcher.handlers[i] = (name, filtered)


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
    f"{_LOGGING}.global_worker_stdstream_dispatcher": lambda: hasattr(
        importlib.import_module(_LOGGING).global_worker_stdstream_dispatcher, "handlers"
    ),
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
