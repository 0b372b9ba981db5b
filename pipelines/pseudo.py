"""Pseudonymisation (methods.md "Pseudonymisation").

The person id of the restricted outputs is a keyed hash:

* the first 32 hex characters of HMAC-SHA256(key, canonical NHS number) where there is a
  valid NHS number;
* else HMAC-SHA256(key, ``"HESID:" + PSEUDO_HESID``), first 32 hex characters, where the
  episode has a ``PSEUDO_HESID``;
* else no id (None).

The key comes from configuration (:attr:`pipelines.config.Settings.effective_pseudo_key`),
never from the code. Asking for an id without a key raises :class:`MissingKeyError`. The
key, the NHS numbers and the HESIDs never appear in an exception message or a log line.
The same key gives the same ids run after run; another key gives unrelated ids.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable

import pandas as pd
import pyarrow as pa

from pipelines import nhs_number as nhsno

ID_HEX_CHARS = 32
HESID_PREFIX = "HESID:"


class MissingKeyError(RuntimeError):
    """No pseudonymisation key: restricted outputs must not be written."""

    def __init__(self, message: str | None = None):
        super().__init__(
            message
            or "no pseudonymisation key: set CAREDATA_PSEUDO_KEY or CAREDATA_PSEUDO_KEY_FILE "
            "(or CAREDATA_DEMO_MODE=1 for the labelled demo key); restricted outputs are not written"
        )


def _key_bytes(key: str | bytes | None) -> bytes:
    if key is None:
        raise MissingKeyError()
    if isinstance(key, str):
        if not key.strip():
            raise MissingKeyError()
        return key.encode("utf-8")  # used exactly as configured
    if isinstance(key, (bytes, bytearray)):
        if not key:
            raise MissingKeyError()
        return bytes(key)
    # Never echo the value: only its type.
    raise TypeError(f"pseudonymisation key must be str or bytes, not {type(key).__name__}")


def _digest(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()[:ID_HEX_CHARS]


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _valid_canonical(nhs_number: object) -> str | None:
    if _is_missing(nhs_number):
        return None
    text = nhsno.canonical(nhs_number)
    if text is None or not nhsno.is_valid(text):
        return None
    return text


def _hesid(pseudo_hesid: object) -> str | None:
    if _is_missing(pseudo_hesid):
        return None
    text = str(pseudo_hesid).strip()
    return text or None


def person_id(key: str | bytes | None, nhs_number: str | None, pseudo_hesid: str | None = None) -> str | None:
    """The person id of one record (32 lower-case hex characters), or None.

    ``nhs_number`` is used when it is a valid NHS number once spaces and hyphens are
    removed; otherwise ``pseudo_hesid`` (surrounding spaces removed) with the ``HESID:``
    prefix; otherwise None. Raises :class:`MissingKeyError` without a key, even when
    there is nothing to hash, so that a missing key is found on the first call.
    """
    kb = _key_bytes(key)
    canon = _valid_canonical(nhs_number)
    if canon is not None:
        return _digest(kb, canon)
    hesid = _hesid(pseudo_hesid)
    if hesid is not None:
        return _digest(kb, HESID_PREFIX + hesid)
    return None


def _to_list(values: object, n: int | None) -> list:
    if values is None:
        if n is None:
            raise ValueError("give nhs_numbers or pseudo_hesids")
        return [None] * n
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_pylist()
    if isinstance(values, pd.Series):
        return values.astype(object).where(values.notna(), None).tolist()
    return list(values)


def person_ids(
    key: str | bytes | None,
    nhs_numbers: pa.Array | pa.ChunkedArray | pd.Series | Iterable | None,
    pseudo_hesids: pa.Array | pa.ChunkedArray | pd.Series | Iterable | None = None,
) -> pa.Array:
    """Vectorised :func:`person_id` over Arrow arrays, pandas Series or lists of equal
    length (either may be None: all missing). Returns a ``pa.string()`` array.

    Each distinct value is hashed once (hospital data repeats the same patient often)."""
    kb = _key_bytes(key)
    n = None
    for values in (nhs_numbers, pseudo_hesids):
        if values is not None:
            n = len(values)
            break
    numbers = _to_list(nhs_numbers, n)
    hesids = _to_list(pseudo_hesids, len(numbers))
    if len(numbers) != len(hesids):
        raise ValueError("nhs_numbers and pseudo_hesids differ in length")
    cache: dict[str, str] = {}
    out: list[str | None] = []
    for number, hesid in zip(numbers, hesids):
        message = _valid_canonical(number)
        if message is None:
            h = _hesid(hesid)
            message = None if h is None else HESID_PREFIX + h
        if message is None:
            out.append(None)
            continue
        pid = cache.get(message)
        if pid is None:
            pid = cache[message] = _digest(kb, message)
        out.append(pid)
    return pa.array(out, type=pa.string())
