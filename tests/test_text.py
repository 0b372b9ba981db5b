"""pipelines/text.py: Python's \\s spelled out for pyarrow's RE2."""

import re
import sys

import pandas as pd

from expectations.rules import OPCS4_RE, POSTCODE_RE
from pipelines.text import SPACE, WHITESPACE, re2_friendly


def test_space_is_pythons_whitespace_at_every_code_point():
    chars = "".join(map(chr, range(sys.maxunicode + 1)))
    python = set(re.findall(r"\s", chars))
    ours = set(re.findall(SPACE, chars))
    assert python == ours and len(python) == 29


def test_whitespace_is_what_str_strip_removes():
    import pyarrow as pa
    import pyarrow.compute as pc

    chars = "".join(map(chr, range(sys.maxunicode + 1)))
    assert set(WHITESPACE) == {c for c in chars if c.isspace()} and len(WHITESPACE) == 29
    values = [f"{c}x{c}y{c}" for c in chars[:0x3100]] + ["", None, "\x1c\u3000 \x85"]
    assert pc.utf8_trim(pa.array(values), characters=WHITESPACE).to_pylist() == \
        [None if v is None else v.strip() for v in values]


def test_rewritten_patterns_match_the_same_values_and_run_in_pyarrow():
    values = pd.Series(["SW1A 1AA", "sw1a\t1aa", " SW1A1AA ", "SW1A\x0b1AA", "SW1A\u30001AA", "SW1A-1AA",
                        "K01A", "K01A  ", "-", "-   ", "- x", "", None], dtype="string")
    for pattern in (POSTCODE_RE, OPCS4_RE, r"a\Sb", r"\\s"):
        fast = re2_friendly(pattern)
        assert fast != pattern or pattern == r"\\s"
        assert not values.array._needs_python_regex(fast)
        assert values.str.contains(fast).tolist() == values.str.contains(pattern).tolist(), pattern
    assert re2_friendly(r"[.\s-]") == r"[.\s-]"  # inside a class: left as written
