"""The hash chain's canonical encoding is exactly the JSON the README describes, so anyone
can recompute a chain from the history route's output."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from loyalty.ledger import chain
from tests.support import PLAIN_ADJUSTMENT

_text = st.text(max_size=40) | st.none()


@given(
    reason=_text,
    reference=_text,
    metadata=st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=10)) | st.none(),
    delta=st.integers(min_value=-(10**11), max_value=10**11).filter(bool),
)
def test_canonical_is_sorted_compact_json(
    reason: str | None, reference: str | None, metadata: dict[str, str] | None, delta: int
) -> None:
    fields = chain.api_fields(
        **{
            **PLAIN_ADJUSTMENT,
            "delta_hundredths": delta,
            "reason": reason,
            "reference": reference,
            "metadata": metadata,
        }
    )
    assert set(fields) == set(chain.HASHED_FIELDS)
    expected = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert chain.canonical(fields) == expected.encode()
    previous = "ab" * 32
    digest = hashlib.sha256(previous.encode() + expected.encode()).hexdigest()
    assert chain.link(previous, fields) == digest
    assert (
        chain.link(None, fields) == hashlib.sha256((chain.GENESIS + expected).encode()).hexdigest()
    )
