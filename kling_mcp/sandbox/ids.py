"""Request ids in the gateway's ``{apiId}_{UUIDv7}`` shape. Python 3.11 has no ``uuid.uuid7``."""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ["request_id", "uuid7"]

_lock = threading.Lock()
_last_ms = 0
_last_seq = 0
_SEQ_MASK = 0xFFF


def uuid7() -> uuid.UUID:
    """RFC 9562 UUIDv7: 48-bit Unix milliseconds, then 74 random bits.

    The 12-bit ``rand_a`` field is a counter within one millisecond (method 1 of RFC 9562 §6.2), so ids made by
    one process sort in creation order, as the gateway's do.
    """
    global _last_ms, _last_seq
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms  # the wall clock stepped back or did not move: keep order
            _last_seq += 1
            if _last_seq > _SEQ_MASK:
                ms += 1  # counter exhausted: borrow the next millisecond
                _last_seq = 0
        else:
            _last_seq = int.from_bytes(os.urandom(2)) & 0x3FF  # random start, headroom for the counter
        _last_ms = ms
        seq = _last_seq
    rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


def request_id(api_id: str) -> str:
    return f"{api_id}_{uuid7()}"
