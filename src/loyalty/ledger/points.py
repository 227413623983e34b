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


class PointsError(ValueError):
    """The value is not an exact amount of points; the message says why."""


def parse_json_number(raw: bytes) -> int:
    """The hundredths of points that a raw JSON number stands for, computed exactly.

    Raises PointsError for anything that is not a JSON number or has more than 2 fractional
    digits. The magnitude check is the caller's (deltas and balances have different limits).
    """
    if len(raw) > _NUMBER_TEXT_MAX:
        raise PointsError("must be a number of at most 64 characters")
    match = _JSON_NUMBER.fullmatch(raw)
    if match is None:
        raise PointsError("must be a number")
    sign, whole, fraction, exponent_text = match.groups()
    digits = whole + (fraction or b"")
    # The value is int(digits) * 10**scale, then converted to hundredths.
    exponent = int(exponent_text) if exponent_text else 0
    if abs(exponent) > _EXPONENT_MAX:
        raise PointsError("is out of range")
    scale = exponent - len(fraction or b"") + 2
    mantissa = int(digits)
    if scale >= 0:
        hundredths = mantissa * 10**scale
    else:
        hundredths, remainder = divmod(mantissa, 10**-scale)
        if remainder:
            raise PointsError("must have at most 2 decimal places")
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
