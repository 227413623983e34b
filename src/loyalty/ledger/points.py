"""Exact points: parsing JSON numbers, the integer unit, rendering. Pure, no I/O.

Points are held as integers of hundredths (0.01 is the smallest unit), so every sum is exact
on PostgreSQL and on SQLite alike, and no binary float ever touches a balance.
"""

from __future__ import annotations

import re

HUNDREDTHS_PER_POINT = 100
DELTA_MAX_HUNDREDTHS = 1_000_000_000 * HUNDREDTHS_PER_POINT
# Far below the 64-bit integer limit of both databases, so a balance never overflows.
BALANCE_MAX_HUNDREDTHS = 10**15 * HUNDREDTHS_PER_POINT
# A JSON number as RFC 8259 defines it, nothing else (no NaN, Infinity, strings, booleans).
_JSON_NUMBER = re.compile(rb"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")
_NUMBER_TEXT_MAX = 64
_EXPONENT_MAX = 64
# A double printed in full has up to 17 significant digits, so a rounding error shows as a
# long tail of decimals: 0.1 + 0.2 is 0.30000000000000004, 100 - 0.01 - 0.0... is 99.99000000000001.
_FLOAT_DIGITS = 10
_FLOAT_HINT = " (a binary float's rounding, as 0.1 + 0.2 gives in JavaScript?)"


class PointsError(ValueError):
    """The value is not an exact amount of points; the message, put after the field's name,
    says precisely why on its own (Medusa's SDK shows a client nothing else)."""


class PointsTooLarge(PointsError):
    """A JSON number whose exponent alone puts it beyond any amount of points; the caller
    words it with its own limit."""


# What a JSON value that is not a number is, by its first character.
_NOT_A_NUMBER = {
    ord('"'): "a string",
    ord("t"): "a boolean",
    ord("f"): "a boolean",
    # JavaScript's JSON.stringify writes NaN and Infinity as null: say so, as the sender
    # usually computed a number that was not finite.
    ord("n"): "null (JSON.stringify sends NaN and Infinity as null)",
    ord("{"): "an object",
    ord("["): "an array",
}


def parse_json_number(raw: bytes) -> int:
    """The hundredths of points that a raw JSON number stands for, computed exactly.

    Raises PointsError for anything that is not a JSON number or has more than 2 decimal
    places, PointsTooLarge for an exponent beyond any amount. The magnitude check is the
    caller's (deltas and balances have different limits).
    """
    match = _JSON_NUMBER.fullmatch(raw)
    if match is None:
        kind = _NOT_A_NUMBER.get(raw[0]) if raw else None
        raise PointsError(f"must be a number, not {kind}" if kind else "must be a JSON number")
    if len(raw) > _NUMBER_TEXT_MAX:
        raise PointsError(f"must be a number written in at most {_NUMBER_TEXT_MAX} characters")
    sign, whole, fraction, exponent_text = match.groups()
    fraction = fraction or b""
    digits = whole + fraction
    significant = digits.rstrip(b"0")
    if not significant.lstrip(b"0"):
        return 0  # zero in any spelling (0e999 included); the caller decides if it may be
    exponent = int(exponent_text) if exponent_text else 0
    # Decimal places of the exact value: its digits after the point, less trailing zeros.
    places = len(fraction) - exponent - (len(digits) - len(significant))
    if places > 2:
        looks_like_a_float = not exponent_text and _FLOAT_DIGITS <= places <= 2 * _FLOAT_DIGITS
        hint = _FLOAT_HINT if looks_like_a_float else ""
        raise PointsError(f"must have at most 2 decimal places; {raw.decode()} has {places}{hint}")
    if exponent > _EXPONENT_MAX:
        raise PointsTooLarge(f"{raw.decode()} is too large")
    # The value is int(digits) * 10**scale, then converted to hundredths; `places` <= 2, so
    # this is a whole number of hundredths.
    scale = exponent - len(fraction) + 2
    mantissa = int(digits)
    hundredths = mantissa * 10**scale if scale >= 0 else mantissa // 10**-scale
    result: int = -hundredths if sign else hundredths
    return result


def render(hundredths: int) -> bytes:
    """The shortest exact JSON number for an amount: 150, 100.01, 0.3, -2.5."""
    sign = "-" if hundredths < 0 else ""
    whole, cents = divmod(abs(hundredths), HUNDREDTHS_PER_POINT)
    if cents == 0:
        text = f"{sign}{whole}"
    elif cents % 10 == 0:
        text = f"{sign}{whole}.{cents // 10}"
    else:
        text = f"{sign}{whole}.{cents:02d}"
    return text.encode()
