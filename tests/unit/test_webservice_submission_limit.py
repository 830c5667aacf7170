"""The submission limit's setting: sizes with units, bounds, and the submit body cap."""

from __future__ import annotations

import pytest

from webservice.api.submit import is_submit_path
from webservice.limits import (
    MAX_SUBMISSION_BYTES,
    MAX_SUBMISSION_CEILING,
    Limits,
    MiB,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10485760", 10 * MiB),
        ("10MiB", 10 * MiB),
        ("10mib", 10 * MiB),
        ("10MB", 10_000_000),
        ("10M", 10_000_000),
        ("512KiB", 512 * 1024),
        ("1k", 1000),
        ("7b", 7),
        (" 5 MiB ", 5 * MiB),
    ],
)
def test_sizes_with_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "x", "-1", "1.5MB", "10XB", "10ib", "MiB"])
def test_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_the_default_is_the_documented_10_mib() -> None:
    assert Limits().max_submission_bytes == MAX_SUBMISSION_BYTES == 10 * MiB


@pytest.mark.parametrize("size", [0, -1, MAX_SUBMISSION_CEILING + 1])
def test_out_of_bounds_limits_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="max_submission_bytes must be between 1 and"):
        Limits(max_submission_bytes=size)


@pytest.mark.parametrize("size", [1, MiB, 10 * MiB, MAX_SUBMISSION_CEILING])
def test_the_submit_body_cap_leaves_room_for_the_json(size: int) -> None:
    cap = Limits(max_submission_bytes=size).submit_body_bytes
    # The SDK's JSON adds ~1.3% (escaped newlines of its base64); the cap allows far more.
    assert size * 1.1 < cap <= size * 1.125 + 256 * 1024


@pytest.mark.parametrize(
    ("path", "submit"),
    [
        ("/v3/endpoints/4b116d3c-1703-4f8f-9f6f-39921e5864df/submit", True),
        ("/v3/endpoints/x/submit", True),
        ("/v3/endpoints/x/submit/more", False),
        ("/v3/endpoints/x/y/submit", False),
        ("/v3/functions", False),
        ("/v3/endpoints", False),
    ],
)
def test_which_paths_get_the_submit_cap(path: str, submit: bool) -> None:
    assert is_submit_path(path) is submit
