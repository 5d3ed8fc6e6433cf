"""Every error vaeflow raises: a user's mistake (exit 2, one line) or anything else (a bug: exit 1).

The CLI prints a `UserError` as one line naming the culprit (file, column, option, URI) and exits 2;
every other exception, a builtin `ValueError` from inside numpy or torch included, is a bug and keeps
its traceback. Each class pickles with its message and fields (`__reduce__`), so an error raised in a
Ray worker reaches the driver as the same type, as Ray's own exceptions do; nobody parses its text.
"""

from __future__ import annotations

import copy
from typing import Any


class VaeflowError(Exception):
    """The base of vaeflow's errors. Subclasses that take more than a message keep them as attributes
    named like their `__init__` parameters, so `__reduce__` rebuilds them in another process."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))

    def __str__(self) -> str:
        return getattr(self, "message", None) or super().__str__()


def _rebuild(cls: type[VaeflowError], message: str, state: dict[str, Any]) -> VaeflowError:
    error = cls.__new__(cls)
    VaeflowError.__init__(error, message)
    error.__dict__.update(state)
    return error


class UserError(VaeflowError):
    """The user's input is wrong: the CLI prints the message as one line and exits 2."""


class ConfigError(UserError):
    """A config file, flow parameter or command-line option is invalid; the message names it."""


class RunNameError(ConfigError):
    """The run name belongs to a stored run that this launch may not continue."""


class ClusterResourceError(ConfigError):
    """The cluster cannot fit the training workers plus the data budget the config asks for."""


class DataError(UserError):
    """Bad input data; the message names the file and column."""


class PackageDataError(DataError):
    """A bundled dataset's package, or one of its files, is not installed."""


class StorageError(UserError):
    """A URI cannot be read or written as asked: missing, not a folder, no permission, no bucket."""


class CredentialsError(StorageError):
    """The object store refused for want of credentials (none in the environment or options)."""


class ObjectStoreBusy(StorageError):
    """The object store kept answering "slow down" or "unavailable" (503) past every retry: a transient
    state, not the user's input, but nothing the command can fix; the nightly's tasks retry it."""


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete or not in the safetensors + JSON format."""


class ModelReportError(UserError):
    """A metrics.json that is missing, not JSON, not an object, or not a model report."""


class TableError(UserError):
    """An output table cannot be written as asked (exists, wrong mode, missing files)."""


class TableConflict(TableError):
    """Another writer committed to the table while this job ran; this job committed nothing."""


class RegistryError(UserError):
    """A model version is missing, incomplete, or would be overwritten by a different model."""


class ChampionConflict(RegistryError):
    """A promotion lost its compare-and-swap: the champion moved after the promoter read it."""

    def __init__(self, message: str, candidate: str, expected: Any, current: Any) -> None:
        super().__init__(message)
        self.candidate, self.expected, self.current = candidate, expected, current


class TrainingError(VaeflowError):
    """The Ray Train run failed after its allowed restarts (not the user's input: exit 1)."""


class NonFiniteLossError(ConfigError):
    """The loss became NaN or inf: the settings make the training diverge (inputs with NaN are refused
    before training). The message names the epoch, step, each loss term and train.lr to lower."""


class InternalError(VaeflowError):
    """A vaeflow function was called with arguments it does not take: a bug in its caller, never the
    user's input (exit 1 with its traceback)."""


class NoExamplesError(InternalError):
    """A training epoch or an evaluation got no rows; callers check their data first."""


def raise_found(error: BaseException, kind: type[VaeflowError]) -> None:
    """Raise (a copy of) the `kind` that `error` wraps, from `error`; return if it wraps none (the
    caller then raises its own). A bad row's DataError leaves Ray's wrappers this way."""
    found = find_error(error, kind)
    if found is not None:
        raise copy.copy(found) from error


def find_error(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first `kind` along `error`'s causes and contexts, and inside the wrappers of Ray (`cause`,
    Ray Train's `worker_failures` by rank); None if there is none."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # Ray's RayTaskError: the worker's exception, unpickled
        if isinstance(e, kind) and not isinstance(cause, kind):  # (Ray's wrapper may subclass `kind`)
            return e
        todo += [cause, e.__cause__, e.__context__]
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            todo += list(failures.values())
    return None
