"""Prefixed ULIDs that sort strictly after their predecessor, and the timestamp format."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID as ReferenceUlid

from loyalty import ids, timestamps
from loyalty.ids import new_id, next_id_after

ULID = re.compile(r"^adj_[0-9A-HJKMNP-TV-Z]{26}$")
ms = st.integers(min_value=0, max_value=253_402_300_799_999)  # through 9999-12-31


@given(ms)
def test_ids_have_the_prefix_and_a_ulid(timestamp_ms: int) -> None:
    """`adj_` then 26 Crockford base32 characters."""
    assert ULID.match(new_id("adj", timestamp_ms))


@given(ms, st.integers(min_value=1, max_value=50))
def test_ids_in_one_millisecond_strictly_increase(timestamp_ms: int, count: int) -> None:
    """Many adjustments in the same millisecond still get strictly increasing ids."""
    previous = None
    for _ in range(count):
        current = next_id_after("adj", timestamp_ms, previous)
        assert previous is None or current > previous
        previous = current


@given(ms, st.integers(min_value=0, max_value=2**80 - 1))
def test_ids_agree_with_the_reference_ulid_library(timestamp_ms: int, randomness: int) -> None:
    """Our base32 shortcut writes and reads exactly what python-ulid does."""
    value = (timestamp_ms << 80) | randomness
    reference = str(ReferenceUlid.from_int(value))
    assert ids._encode(timestamp_ms, randomness) == reference
    assert ids._decode(reference) == value


def test_a_later_millisecond_sorts_after() -> None:
    """Ids follow time: an id of a later millisecond sorts after every earlier one."""
    assert new_id("adj", 1_700_000_000_001) > new_id("adj", 1_700_000_000_000)


def test_timestamps_render_with_milliseconds_and_z() -> None:
    """UTC ISO 8601 with milliseconds and Z."""
    assert timestamps.render(1_771_418_096_789) == "2026-02-18T12:34:56.789Z"
    assert timestamps.render(0) == "1970-01-01T00:00:00.000Z"


@given(ms)
def test_parse_reads_what_render_writes(value: int) -> None:
    """The filters accept our own timestamps back, to the millisecond."""
    assert timestamps.parse(timestamps.render(value)) == value


def test_parse_accepts_offsets_and_dates() -> None:
    """Offsets are converted to UTC; a date alone is its midnight UTC."""
    assert timestamps.parse("2026-02-18T14:34:56.789+02:00") == 1_771_418_096_789
    assert timestamps.parse("2026-02-18") == 1_771_372_800_000
