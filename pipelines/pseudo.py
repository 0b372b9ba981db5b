"""Pseudonymisation (methods.md "Pseudonymisation").

The person id of the restricted outputs is a keyed hash:

* the first 32 hex characters of HMAC-SHA256(key, canonical NHS number) where there is a
  valid NHS number;
* else HMAC-SHA256(key, ``"HESID:" + PSEUDO_HESID``), first 32 hex characters, where the
  episode has a ``PSEUDO_HESID``;
* else no id (None).

Record keys (``susrecid``, ``spell_id`` of the restricted zone) are keyed pseudonyms too:
HMAC-SHA256(key, ``"SUSRECID:" + provider + ":" + SUSRECID``), or ``"SPELL:"``, first 32
hex characters (:func:`record_key_ids`).

The key comes from configuration (:attr:`pipelines.config.Settings.effective_pseudo_key`),
never from the code. Asking for an id without a key raises :class:`MissingKeyError`. The
key, the NHS numbers and the HESIDs never appear in an exception message or a log line.
The same key gives the same ids run after run; another key gives unrelated ids.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import nhs_number as nhsno
from pipelines.nhs_number import is_missing

ID_HEX_CHARS = 32
HESID_PREFIX = "HESID:"
# outputs.md "Keys": a key shorter than this (after stripping surrounding whitespace) is a
# configuration error (pipelines.config checks it before any work starts).
MIN_KEY_BYTES = 32
# What manifests say about the key: an HMAC of this fixed label under the key, never a
# plain hash of the key (a plain hash would let anyone test guesses of the key offline).
KEY_LABEL_MESSAGE = b"caredata key label v1"
KEY_LABEL_HEX_CHARS = 16


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


def key_label_digest(key: str | bytes) -> str:
    """The first 16 hex characters of HMAC-SHA256(key, "caredata key label v1"): tells two
    keys apart in a manifest without being a hash of the key itself."""
    kb = _key_bytes(key)
    return hmac.new(kb, KEY_LABEL_MESSAGE, hashlib.sha256).hexdigest()[:KEY_LABEL_HEX_CHARS]


def _digest(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()[:ID_HEX_CHARS]


def _valid_canonical(nhs_number: object) -> str | None:
    if is_missing(nhs_number):
        return None
    text = nhsno.canonical(nhs_number)
    if text is None or not nhsno.is_valid(text):
        return None
    return text


def _hesid(pseudo_hesid: object) -> str | None:
    if is_missing(pseudo_hesid):
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


def _person_ids_loop(kb: bytes, numbers: list, hesids: list) -> pa.Array:
    """:func:`person_id` value by value (the reference, and the fallback for inputs the
    vectorised path does not take, e.g. strings Arrow cannot hold)."""
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


# Exactly the characters str.strip() removes (str.isspace(); none lies above U+3000:
# tests/test_pseudo.py checks every code point).
_STRIP_CHARS = "".join(ch for ch in map(chr, range(0x3001)) if ch.isspace())
_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string)


class _NotVectorisable(Exception):
    pass


def _text_array(values: object, n: int | None) -> pa.Array:
    """``values`` as a string array: null where :func:`pipelines.nhs_number.is_missing`, else ``str(value)``,
    exactly as :func:`_to_list` and the scalar functions read them."""
    if values is None:
        if n is None:
            raise ValueError("give nhs_numbers or pseudo_hesids")
        return pa.nulls(n, pa.string())
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        t = arr.type
        if pa.types.is_string_view(t):
            arr = arr.cast(pa.large_string())
        elif pa.types.is_null(t):
            arr = pa.nulls(len(arr), pa.string())
        elif pa.types.is_integer(t):
            arr = arr.cast(pa.string())  # Arrow's decimal text is Python's str(int)
        if any(test(arr.type) for test in _TEXT_TYPES):
            return arr
        return _generic_text(values.to_pylist())
    if isinstance(values, pd.Series):
        if isinstance(values.dtype, pd.StringDtype) or (
            values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty")
        ):
            try:
                arr = pa.array(values, type=pa.string(), from_pandas=True)
            except (pa.ArrowException, TypeError, ValueError):
                arr = None
            if arr is not None and np.array_equal(
                    arr.is_null().to_numpy(zero_copy_only=False), values.isna().to_numpy()):
                return arr
        return _generic_text(values.astype(object).where(values.notna(), None).tolist())
    return _generic_text(list(values))


def _generic_text(values: list) -> pa.Array:
    try:
        return pa.array([None if is_missing(v) else str(v) for v in values], type=pa.string())
    except (pa.ArrowException, UnicodeError):
        raise _NotVectorisable() from None  # e.g. lone surrogates: the loop decides


def _messages(numbers: pa.Array, hesids: pa.Array) -> pa.Array:
    """The message hashed for each record (as :func:`person_id`), null for none.

    The NHS number is made canonical as everywhere (:mod:`pipelines.nhs_number`:
    whitespace and hyphens removed), then must be exactly ten ASCII digits passing
    Modulus 11."""
    numbers, hesids = numbers.cast(pa.large_string()), hesids.cast(pa.large_string())
    canon = nhsno.canonical_arrow(numbers)
    shaped = pc.fill_null(pc.match_substring_regex(canon, "^[0-9]{10}$"), False)
    valid = shaped.to_numpy(zero_copy_only=False).astype(bool)
    if valid.any():
        # ten ASCII digits each: nhs_number.valid_series reads them as is (its wider
        # canonical form changes nothing here)
        idx = np.nonzero(valid)[0]
        digits = canon.take(pa.array(idx)).cast(pa.string())
        ok = nhsno.valid_series(pd.Series(digits.to_pandas(types_mapper=pd.ArrowDtype))).to_numpy(dtype=bool)
        valid[idx[~ok]] = False
    hesid = pc.utf8_trim(hesids, characters=_STRIP_CHARS)
    hesid = pc.if_else(pc.equal(pc.binary_length(hesid), 0), pa.scalar(None, hesid.type), hesid)
    from_hesid = pc.binary_join_element_wise(pa.scalar(HESID_PREFIX, pa.large_string()), hesid,
                                             pa.scalar("", pa.large_string()))
    return pc.if_else(pa.array(valid, pa.bool_()), canon, from_hesid)


def _hmac_hex(key: bytes, messages: list[bytes]) -> list[str]:
    """``_digest`` of each message (bytes): one HMAC-SHA256 object keyed once, copied per
    message (:meth:`hmac.HMAC.copy`), instead of ``hmac.new`` per message."""
    base = hmac.new(key, digestmod=hashlib.sha256)
    out = []
    append = out.append
    for m in messages:
        h = base.copy()
        h.update(m)
        append(h.hexdigest()[:ID_HEX_CHARS])
    return out


def person_ids(
    key: str | bytes | None,
    nhs_numbers: pa.Array | pa.ChunkedArray | pd.Series | Iterable | None,
    pseudo_hesids: pa.Array | pa.ChunkedArray | pd.Series | Iterable | None = None,
) -> pa.Array:
    """Vectorised :func:`person_id` over Arrow arrays, pandas Series or lists of equal
    length (either may be None: all missing). Returns a ``pa.string()`` array.

    Validity and messages are computed column-wise in Arrow; each distinct message is
    hashed once (hospital data repeats the same patient often)."""
    kb = _key_bytes(key)
    n = None
    for values in (nhs_numbers, pseudo_hesids):
        if values is not None:
            n = len(values)
            break
    try:
        numbers = _text_array(nhs_numbers, n)
        hesids = _text_array(pseudo_hesids, len(numbers))
    except _NotVectorisable:
        numbers = _to_list(nhs_numbers, n)
        hesids = _to_list(pseudo_hesids, len(numbers))
        if len(numbers) != len(hesids):
            raise ValueError("nhs_numbers and pseudo_hesids differ in length") from None
        return _person_ids_loop(kb, numbers, hesids)
    if len(numbers) != len(hesids):
        raise ValueError("nhs_numbers and pseudo_hesids differ in length")
    if len(numbers) == 0:
        return pa.array([], type=pa.string())
    encoded = pc.dictionary_encode(_messages(numbers, hesids))
    distinct = encoded.dictionary.cast(pa.large_binary()).to_pylist()
    ids = pa.array(_hmac_hex(kb, distinct), type=pa.string())
    return ids.take(encoded.indices)


# --------------------------------------------------------------------------- record keys
# A supplier's record key is free text (a supplier may build SUSRECID from an NHS number),
# so no format check can make it safe to publish. The restricted zone publishes it as a
# keyed pseudonym, scoped by kind and provider so that equal keys of two providers, or an
# episode key equal to a spell key, give unrelated pseudonyms.
SUSRECID_KIND = "SUSRECID"
SPELL_KIND = "SPELL"
RECORD_KINDS = (SUSRECID_KIND, SPELL_KIND)


def record_key_ids(
    key: str | bytes | None,
    kind: str,
    providers: pa.Array | pa.ChunkedArray,
    values: pa.Array | pa.ChunkedArray,
) -> pa.Array:
    """The keyed pseudonym of each record key: the first 32 hex characters of
    HMAC-SHA256(key, ``kind + ":" + provider + ":" + value``) (``kind``: ``SUSRECID`` or
    ``SPELL``), null where the value is null or empty. The one function used for
    ``linked_episodes`` and ``linked_spells``, so that their ``spell_id`` still join.
    Raises :class:`MissingKeyError` without a key."""
    kb = _key_bytes(key)
    if kind not in RECORD_KINDS:
        raise ValueError(f"unknown record key kind {kind!r}")

    def text(a: pa.Array | pa.ChunkedArray) -> pa.Array:
        a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
        if pa.types.is_dictionary(a.type):
            a = a.dictionary_decode()
        return a.cast(pa.large_string())

    vals, provs = text(values), text(providers)
    if len(vals) != len(provs):
        raise ValueError("providers and values differ in length")
    if len(vals) == 0:
        return pa.array([], type=pa.string())
    present = pc.fill_null(pc.greater(pc.binary_length(vals), 0), False)
    vals = pc.if_else(present, vals, pa.scalar(None, pa.large_string()))
    messages = pc.binary_join_element_wise(
        pa.scalar(kind, pa.large_string()), pc.fill_null(provs, ""), vals, pa.scalar(":", pa.large_string()))
    encoded = pc.dictionary_encode(messages)
    distinct = encoded.dictionary.cast(pa.large_binary()).to_pylist()
    ids = pa.array(_hmac_hex(kb, distinct), type=pa.string())
    return ids.take(encoded.indices)


def record_key_id(key: str | bytes | None, kind: str, provider: str, value: str | None) -> str | None:
    """:func:`record_key_ids` of one record key (for tests and readers of the docs)."""
    if value is None or value == "":
        _key_bytes(key)
        return None
    return _digest(_key_bytes(key), f"{kind}:{provider}:{value}")
