"""Regular expressions that pandas runs in pyarrow (RE2) instead of Python's ``re``.

pandas hands a string column's regex to pyarrow unless the pattern holds something RE2
reads differently; ``\\s`` is one (RE2's misses some of Python's whitespace), and then
pandas calls Python once per value: for a national month's 63 million GP rows that is
minutes. ``SPACE_CHARS`` spells out exactly the characters Python's ``\\s`` matches in a
``str`` pattern (``tests/test_text.py`` checks every code point), so a pattern written
with it means the same to both engines.
"""

from __future__ import annotations

import re

SPACE_CHARS = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
SPACE = f"[{SPACE_CHARS}]"
NOT_SPACE = f"[^{SPACE_CHARS}]"
WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if re.fullmatch(SPACE, c))
"""The characters of ``SPACE``, one by one: what ``str.strip()`` removes, for
``pyarrow.compute.utf8_trim(characters=...)`` (several times faster than a pattern)."""

_CLASS_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\([sS])")


def re2_friendly(pattern: str) -> str:
    """``pattern`` with ``\\s`` and ``\\S`` outside character classes spelled out."""
    if "[" in pattern.replace("\\[", ""):
        # \s inside a class ([.\s-]) would need the class merged: leave such patterns.
        inside = re.findall(r"(?<!\\)\[[^\]]*\\[sS][^\]]*\]", pattern)
        if inside:
            return pattern
    return _CLASS_ESCAPE.sub(lambda m: m.group(1) + (SPACE if m.group(2) == "s" else NOT_SPACE), pattern)
