"""Error translation: a DataError raised in a Ray worker comes back as a DataError with its message."""

import pytest

from vae_core.distributed.errors import data_error_message, reraise_data_error
from vae_core.errors import DataError

MESSAGE = "s3://b/part-0.parquet: column 'image': NaN or inf in vector features (row 123)"


class _Wrapped(RuntimeError):
    """Like Ray Train V2's WorkerGroupError: the worker's exceptions by rank."""

    def __init__(self, failures: dict[int, BaseException]) -> None:
        super().__init__("training failed")
        self.worker_failures = failures


def test_the_message_is_found_in_a_cause_chain_and_in_worker_failures():
    try:
        try:
            raise DataError(MESSAGE)
        except DataError as inner:
            raise RuntimeError("ray task failed") from inner
    except RuntimeError as outer:
        assert data_error_message(outer) == MESSAGE
    assert data_error_message(_Wrapped({1: DataError(MESSAGE)})) == MESSAGE


def test_the_message_is_read_from_remote_traceback_text_when_the_type_is_lost():
    text = (
        f"ray.exceptions.RayTaskError(UserCodeException): ...\nvae_core.data.dataset.DataError: {MESSAGE}\n"
    )
    assert data_error_message(RuntimeError(text)) == MESSAGE
    assert data_error_message(RuntimeError("vae_core.dataset.Other: no")) is None


def test_reraise_raises_only_a_wrapped_data_error():
    with pytest.raises(DataError, match="row 123") as err:
        reraise_data_error(_Wrapped({0: DataError(MESSAGE)}))
    assert str(err.value) == MESSAGE
    reraise_data_error(RuntimeError("unrelated"))  # returns: the caller re-raises its own exception
