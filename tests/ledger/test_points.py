"""Exact points: parsing JSON numbers to hundredths and rendering them back. Pure, no I/O."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty.ledger.points import PointsError, parse_json_number, render

hundredths = st.integers(min_value=-(10**17), max_value=10**17)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"0", 0),
        (b"150", 15000),
        (b"100.01", 10001),
        (b"0.3", 30),
        (b"-50", -5000),
        (b"1e2", 10000),
        (b"1E+2", 10000),
        (b"2.5e-1", 25),
        (b"1.50", 150),
        (b"123.4500", 12345),
        (b"-0", 0),
    ],
)
def test_parses_json_numbers_exactly(text: bytes, expected: int) -> None:
    """Every form of JSON number that names whole hundredths is read exactly."""
    assert parse_json_number(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        b"0.001",
        b"1e-3",
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"true",
        b'"5"',
        b"null",
        b"01",
        b"1.",
        b".5",
        b"+1",
        b"0x10",
        b"1e999",
        b"1" * 65,
        b"",
    ],
)
def test_rejects_what_is_not_an_exact_amount(text: bytes) -> None:
    """Non-numbers, over-precise numbers and absurd exponents are errors, never rounded."""
    with pytest.raises(PointsError):
        parse_json_number(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [(15000, b"150"), (10001, b"100.01"), (30, b"0.3"), (-250, b"-2.5"), (-5, b"-0.05"), (0, b"0")],
)
def test_renders_the_shortest_exact_number(value: int, text: bytes) -> None:
    """No 150.0, no 0.30000000000000004, no exponent."""
    assert render(value) == text


@given(hundredths)
def test_render_then_parse_is_the_identity(value: int) -> None:
    """Whatever we write, we read back exactly."""
    assert parse_json_number(render(value)) == value


@given(hundredths)
def test_render_agrees_with_decimal(value: int) -> None:
    """The rendered text is the exact decimal value, without trailing zeros."""
    text = render(value).decode()
    assert Decimal(text) == Decimal(value) / 100
    assert "e" not in text.lower()
    assert not ("." in text and text.endswith("0"))


@given(st.lists(st.decimals(min_value=-(10**6), max_value=10**6, places=2), max_size=20))
def test_sums_of_parsed_values_are_exact(values: list[Decimal]) -> None:
    """0.1 + 0.2 is 0.3: integer hundredths add up exactly, unlike binary floats."""
    total = sum(parse_json_number(str(v).encode()) for v in values)
    assert Decimal(render(total).decode()) == sum(values, Decimal(0))
