"""JSON with exact points: Decimals are written as JSON numbers digit for digit, and every
amount the service sends (delta, balance, points...) is read back as a Decimal, never a float.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

# The fields whose values are amounts of points, in every object the service sends.
POINT_FIELDS = frozenset(
    {"delta", "balance", "balance_after", "points", "pending", "reversed_points"}
)
_DEPTH_MAX = 32

Amount = Decimal | int | str


def to_decimal(value: Amount, name: str = "delta") -> Decimal:
    """An amount as an exact Decimal. Floats are refused: 0.1 + 0.2 is not 0.3 in binary."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise TypeError(f"{name} must be a Decimal, an int or a numeric string, not {value!r}")
    try:
        decimal = value if isinstance(value, Decimal) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if not decimal.is_finite():
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return decimal


def dumps(value: Any) -> bytes:
    """Compact JSON of dicts, lists, strings, ints, Decimals, booleans and None."""
    parts: list[str] = []
    _write(value, parts, 0)
    return "".join(parts).encode()


def _write(value: Any, parts: list[str], depth: int) -> None:
    if depth > _DEPTH_MAX:
        raise ValueError("the value is nested too deeply to send")
    if value is None or isinstance(value, bool | int | str):
        parts.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, Decimal):
        parts.append(format(to_decimal(value), "f"))
    elif isinstance(value, Mapping):
        parts.append("{")
        for i, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {key!r}")
            parts.append("," if i else "")
            parts.append(json.dumps(key, ensure_ascii=False))
            parts.append(":")
            _write(item, parts, depth + 1)
        parts.append("}")
    elif isinstance(value, Sequence):
        parts.append("[")
        for i, item in enumerate(value):
            parts.append("," if i else "")
            _write(item, parts, depth + 1)
        parts.append("]")
    elif isinstance(value, float):
        raise TypeError("floats are not sent: use Decimal or str for points")
    else:
        raise TypeError(f"cannot send {type(value).__name__} as JSON")


def loads(text: str | bytes) -> Any:
    """JSON with fractional numbers as Decimals and every amount of points a Decimal."""
    return _amounts(json.loads(text, parse_float=Decimal))


def _amounts(value: Any) -> Any:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in POINT_FIELDS and isinstance(item, int) and not isinstance(item, bool):
                value[key] = Decimal(item)
            else:
                _amounts(item)
    elif isinstance(value, list):
        for item in value:
            _amounts(item)
    return value
