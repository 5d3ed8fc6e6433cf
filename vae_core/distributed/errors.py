"""Ray's wrapped worker exceptions turned back into the library's own errors (a DataError names its file)."""

from __future__ import annotations

import re

from vae_core.errors import DataError

# The remote traceback text names the class by its module path, e.g. "vae_core.data.dataset.DataError: ...".
_DATA_ERROR_LINE = re.compile(rf"{re.escape(DataError.__module__)}\.DataError: (.+)")


def data_error_message(e: BaseException) -> str | None:
    """The message of a DataError raised in a Ray worker or actor, from inside Ray's wrappers; None if
    `e` does not hold one.

    Ray re-raises user errors as RayTaskError(UserCodeException) (Ray Data) or TrainingFailedError (Ray
    Train) whose cause chain does not always keep the original type across processes; the remote
    traceback text always names it.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        # Ray's wrapper class RayTaskError(DataError) is a DataError too, but its text is the coloured
        # remote traceback: keep looking for the original below it.
        if isinstance(err, DataError) and not str(err).lstrip().startswith("\x1b"):
            return str(err).strip().splitlines()[-1]
        todo += [err.__cause__, err.__context__, getattr(err, "cause", None)]
        todo += list(getattr(err, "worker_failures", {}).values())  # Ray Train V2: rank -> exception
    found = _DATA_ERROR_LINE.findall(str(e))
    return found[-1].strip() if found else None


def reraise_data_error(e: BaseException) -> None:
    """Raise the DataError `e` wraps (from `e`); return if it wraps none (the caller re-raises `e`)."""
    message = data_error_message(e)
    if message is not None:
        raise DataError(message) from e
