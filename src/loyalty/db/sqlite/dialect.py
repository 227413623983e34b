"""PostgreSQL's dialect, in which repositories write their SQL, turned into SQLite's."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

_PARAMETER = re.compile(r"\$(\d+)")
_ANY = re.compile(r"= ANY\(\$(\d+)\)")


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """`$1` → `?1`; `= ANY($1)` with a list → membership in the list passed as a JSON array;
    row locks are implied by BEGIN IMMEDIATE."""
    sql = _ANY.sub(r"IN (SELECT value FROM json_each($\1))", sql)
    return _PARAMETER.sub(r"?\1", sql).replace(" FOR UPDATE", "")


def bind(args: Sequence[Any]) -> tuple[Any, ...]:
    # Lists are the arrays of `= ANY($n)`: SQLite receives them as JSON arrays.
    return tuple(json.dumps(arg) if isinstance(arg, list) else arg for arg in args)
