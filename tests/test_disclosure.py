"""Disclosure control: small numbers, rates from few records, identifier scan, checks."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines import schemas
from pipelines.disclosure import (
    DisclosureError,
    apply_small_numbers,
    check_public,
    check_restricted,
    describe,
    scan_for_identifiers,
)
from pipelines.nhs_number import is_valid, with_check_digit
from pipelines.schemas import F_COMMISSIONER, PERIOD, Dataset, cols, f, i, s

# A small public dataset of the usual shape: a code, a count, a rate from it, an
# organisation count that is never suppressed.
TOY = Dataset(
    name="toy",
    zone="public",
    grain="period, area",
    description="A toy dataset for the tests.",
    columns=cols(
        PERIOD,
        s("area_level", "national or commissioner.", codes=("national", "commissioner")),
        s("area_code", "ENG or a CCG code.", codes=("ENG",), format=F_COMMISSIONER),
        i("practices", "Organisations: never suppressed."),
        i("episodes", "A count of patients' events.", suppress="count"),
        i("episodes_linked", "Of those, linked.", suppress="count"),
        f("pct_linked", "100 x episodes_linked / episodes.", unit="percent", suppress="rate",
          denominator="episodes"),
    ),
)

VALID_NHS = "9990000018"  # a generated number from the 999 test range
assert is_valid(VALID_NHS)
BAD_CHECK = "9990000017"  # same first nine digits, wrong check digit
assert not is_valid(BAD_CHECK)


def toy(episodes, linked=None, level="commissioner", code="00L", practices=None):
    n = len(episodes)
    linked = linked if linked is not None else episodes
    return pa.table({
        "period": ["2014-01"] * n,
        "area_level": [level] * n if isinstance(level, str) else level,
        "area_code": [code] * n if isinstance(code, str) else code,
        "practices": practices or [3] * n,
        "episodes": pa.array(episodes, pa.int64()),
        "episodes_linked": pa.array(linked, pa.int64()),
        "pct_linked": pa.array([None if e in (None, 0) else 50.0 for e in episodes], pa.float64()),
    })


# --------------------------------------------------------------------------- small numbers


def test_counts_1_to_7_are_blanked_and_flagged_0_and_8_kept():
    out = apply_small_numbers(TOY, toy([0, 1, 2, 3, 4, 5, 6, 7, 8, 120, None]))
    assert out.column("episodes").to_pylist() == [0] + [None] * 7 + [8, 120, None]
    assert out.column("episodes_suppressed").to_pylist() == [False] + [True] * 7 + [False, False, False]
    # organisation counts are never touched
    assert out.column("practices").to_pylist() == [3] * 11


def test_national_rows_are_not_suppressed():
    t = toy([3, 3, 3, 3], level=["national", "commissioner", "commissioner", "national"],
            code=["ENG", "00L", "ENG", "XXX"])
    out = apply_small_numbers(TOY, t)
    # by area_level, and by area_code ENG
    assert out.column("episodes").to_pylist() == [3, None, 3, 3]
    assert out.column("episodes_suppressed").to_pylist() == [False, True, False, False]
    assert out.column("pct_linked").to_pylist() == [50.0, None, 50.0, 50.0]


def test_fft_level_and_org_code_mark_national_rows():
    ds = Dataset("toy_fft", "public", "org", "toy", cols(
        s("level", "level"), s("org_code", "code"), i("n", "count", suppress="count")))
    t = pa.table({"level": ["national", "provider", "provider"], "org_code": ["X", "RXH", "ENG"],
                  "n": [2, 2, 2]})
    assert apply_small_numbers(ds, t).column("n").to_pylist() == [2, None, 2]


def test_national_col_names_the_marker():
    t = toy([2, 2]).append_column("is_national", pa.array([True, False]))
    out = apply_small_numbers(TOY, t, national_col="is_national")
    assert out.column("episodes").to_pylist() == [2, None]


def test_rate_from_7_records_blanked_from_8_kept():
    out = apply_small_numbers(TOY, toy([7, 8, 0, None, 100], linked=[7, 8, 0, None, 100]))
    assert out.column("pct_linked").to_pylist() == [None, 50.0, None, None, 50.0]


def test_rate_blanked_when_denominator_blank_only_below_national():
    t = toy([None, None], level=["commissioner", "national"], code=["00L", "ENG"])
    t = t.set_column(t.schema.get_field_index("pct_linked"), "pct_linked", pa.array([10.0, 10.0]))
    out = apply_small_numbers(TOY, t)
    assert out.column("pct_linked").to_pylist() == [None, 10.0]


def test_published_columns_order_types_and_descriptions():
    out = apply_small_numbers(TOY, toy([1, 9]))
    assert out.column_names == [c.name for c in TOY.published_columns()]
    assert out.schema.field("episodes_suppressed").type == pa.bool_()
    assert out.schema.field("pct_linked").metadata[b"unit"] == b"percent"


def test_idempotent():
    once = apply_small_numbers(TOY, toy([0, 3, 8]))
    assert apply_small_numbers(TOY, once).equals(once)


def test_dataset_without_suppressible_columns_passes_through():
    ds = schemas.get("linkage_coverage_summary")
    t = pa.table({
        "period": ["2014-01"], "area_level": ["commissioner"], "area_code": ["00L"],
        "practices": [3], "practices_providing_extract": [2], "pct_practices_providing_extract": [66.7],
        "practices_linked": [1], "pct_practices_linked": [33.3], "providers": [2],
        "providers_meeting_nhs_number_standard": [1], "pct_providers_meeting_nhs_number_standard": [50.0],
    })
    out = apply_small_numbers(ds, t)
    assert out.column("practices_linked").to_pylist() == [1]
    assert check_public(ds, out) == []


def test_consultant_outcomes_blank_only_deaths_and_readmissions():
    ds = schemas.get("consultant_outcomes")
    suppressed = {c.name for c in ds.columns if c.suppress}
    assert suppressed == {"deaths_30d", "readmissions_30d"}
    row = {c.name: None for c in ds.columns}
    row.update(period="2014-12", window_start="2012-01", window_end="2014-12", specialty="vascular surgery",
               provider_code="RXH", consultant_code="C1234567", procedures=5, deaths_30d=1,
               crude_mortality_pct=20.0, readmissions_30d=0, readmission_pct=0.0)
    out = apply_small_numbers(ds, pa.Table.from_pylist([row]))
    assert out.column("deaths_30d").to_pylist() == [None]
    assert out.column("deaths_30d_suppressed").to_pylist() == [True]
    assert out.column("procedures").to_pylist() == [5]  # published for every consultant
    assert out.column("crude_mortality_pct").to_pylist() == [20.0]  # the deliberate exception
    assert out.column("readmissions_30d").to_pylist() == [0]


# --------------------------------------------------------------------------- identifier scan


def test_scanner_finds_nhs_number_in_free_text_and_not_bad_check_digit():
    spaced = f"{VALID_NHS[:3]} {VALID_NHS[3:6]} {VALID_NHS[6:]}"
    t = pa.table({
        "held_reason": ["all fine", f"row 12 has patient {spaced} twice", f"ref {BAD_CHECK}.",
                        "12345678901234", None],
        "count": [1, 2, 3, 4, 5],
    })
    found = scan_for_identifiers(t, dataset="toy")
    assert [(x.column, x.kind, x.count) for x in found] == [("held_reason", "nhs_number", 1)]
    # the finding names dataset and column, never the value
    assert VALID_NHS not in str(found[0]) and spaced not in str(found[0])
    assert "toy" in str(found[0]) and "held_reason" in str(found[0])


def test_scanner_ignores_longer_numbers_and_bad_check_digits_but_not_letters_around_a_number():
    digest = "ab" + VALID_NHS + "cdef" * 13  # a hex digest that happens to hold the digits
    t = pa.table({"file_name": [f"APC_RXH_201401_{BAD_CHECK}_BULK.csv", "1" + VALID_NHS],
                  "n": pa.array([int(BAD_CHECK), 7], pa.int64())})
    assert scan_for_identifiers(t) == []
    # public reading: a number touching letters is still a number (W9990000018)
    digests = pa.table({"sha256": [digest]})
    assert [(x.kind, x.count) for x in scan_for_identifiers(digests)] == [("nhs_number", 1)]
    # restricted reading: record keys such as RGT0000012345 are data, a number must stand alone
    assert scan_for_identifiers(digests, strict=False) == []
    # a digest column is declared opaque: check_public does not block on its digits
    assert check_public(schemas.get("submissions"), pa.table({"sha256": [digest]})) == []


def test_scanner_finds_postcode_in_code_column_with_or_without_space_any_case():
    t = pa.table({"practice_code": ["A81001", "ls1 4ap", "B82005", "SW1A1AA", "A81002"]})
    found = scan_for_identifiers(t, dataset="toy")
    assert [(x.column, x.kind, x.count) for x in found] == [("practice_code", "postcode", 2)]


def test_scanner_lists_integer_nhs_numbers_and_date_of_birth_columns():
    nine = "401023213"
    other = with_check_digit(nine)
    t = pa.table({
        "value": pa.array([int(VALID_NHS), int(other), int(BAD_CHECK), 7], pa.int64()),
        "date_of_birth": pa.array([None, None, None, None], pa.date32()),
        "diagnoses": pa.array([["I21"], [VALID_NHS], None, []], pa.list_(pa.string())),
    })
    kinds = {(x.column, x.kind): x.count for x in scan_for_identifiers(t)}
    assert kinds == {("value", "nhs_number"): 2, ("date_of_birth", "date_of_birth"): 0,
                     ("diagnoses", "nhs_number"): 1}


# --------------------------------------------------------------------------- checks


def check_public_rules(ds, table):
    return {(v.rule, v.column) for v in check_public(ds, table)}


def test_check_public_passes_suppressed_table_and_flags_raw_one():
    raw = toy([0, 3, 8, 40])
    assert check_public(TOY, apply_small_numbers(TOY, raw)) == []
    with_flags = raw.append_column("episodes_suppressed", pa.array([False] * 4)).append_column(
        "episodes_linked_suppressed", pa.array([False] * 4))
    rules = {(v.rule, v.column) for v in check_public(TOY, with_flags)}
    assert ("small_count", "episodes") in rules
    assert ("rate_small_denominator", "pct_linked") in rules
    assert ("not_suppressed", "episodes") in check_public_rules(TOY, raw)


def test_check_public_uses_configured_thresholds():
    out = apply_small_numbers(TOY, toy([9, 20]))
    assert check_public(TOY, out) == []
    strict = {"disclosure": {"small_count_max": 10, "min_denominator": 8}}
    assert ("small_count", "episodes") in {(v.rule, v.column) for v in check_public(TOY, out, strict)}


def test_check_public_refuses_identifier_columns_and_values():
    t = apply_small_numbers(TOY, toy([10, 20]))
    t = t.append_column("person_id", pa.array(["a" * 32, "b" * 32]))
    t = t.set_column(t.schema.get_field_index("area_code"), "area_code", pa.array(["00L", "LS1 4AP"]))
    vs = check_public(TOY, t)
    rules = {(v.rule, v.column) for v in vs}
    assert ("forbidden_column", "person_id") in rules
    assert ("identifier:postcode", "area_code") in rules
    message = describe("toy", vs)
    assert "LS1 4AP" not in message and "person_id" in message
    assert "LS1 4AP" not in str(DisclosureError("toy", vs))


def test_check_public_fft_rule_1():
    ds = schemas.get("fft_scores")
    base = {c.name: None for c in ds.columns}
    rows = [
        {**base, "period": "2014-01", "setting": "IP", "level": "ward", "org_code": "RXH01/W1",
         "parent_code": "RXH01", "responses": 3, "suppressed": False},
        {**base, "period": "2014-01", "setting": "IP", "level": "ward", "org_code": "RXH01/W2",
         "parent_code": "RXH01", "suppressed": True, "pct_recommend": 80.0},
        {**base, "period": "2014-01", "setting": "IP", "level": "national", "org_code": "ENG",
         "responses": 2, "suppressed": False},
    ]
    rules = {(v.rule, v.column, v.count) for v in check_public(ds, pa.Table.from_pylist(rows))}
    assert rules == {("fft_small_responses", "responses", 1),
                     ("fft_flag_inconsistent", "pct_recommend", 1)}


def test_check_restricted():
    ds = schemas.get("linked_spells")
    row = {c.name: None for c in ds.columns}
    row.update(period="2014-01", person_id="f" * 32, provider_code="RXH", spell_id="0" * 32)
    ok = pa.Table.from_pylist([row])
    assert check_restricted(ds, ok) == []
    # spell_id is a keyed pseudonym: a supplier's key, let alone an NHS number, is refused
    leaked = pa.Table.from_pylist([{**row, "spell_id": VALID_NHS}])
    assert sorted((v.rule, v.column) for v in check_restricted(ds, leaked)) == [
        ("format", "spell_id"), ("identifier:nhs_number", "spell_id")]
    with_pc = ok.append_column("postcode", pa.array([None], pa.string()))
    assert ("forbidden_column", "postcode") in {(v.rule, v.column) for v in check_restricted(ds, with_pc)}


@pytest.mark.parametrize("name", ["nhs_number", "date_of_birth", "dob"])
def test_check_restricted_refuses_identifier_columns(name):
    ds = schemas.get("linked_spells")
    t = pa.table({"person_id": ["x"], name: pa.array([None], pa.string())})
    assert any(v.column == name for v in check_restricted(ds, t))


# --------------------------------------------------------------------------- scan: Arrow = Python
# scan_for_identifiers runs the rules column-wise with RE2 (pyarrow); every verdict must be
# what the Python rules (_contains_nhs_number, _contains_postcode) give value by value.

import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

from pipelines import disclosure  # noqa: E402

NUMBERS = [n for n in (with_check_digit(f"999{i:06d}") for i in range(200, 230)) if n]
ALL_CHARS = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)


def _bad(v: str) -> str:
    return v[:9] + str((int(v[9]) + 1) % 10)


def reference_scan(table: pa.Table, strict: bool = True) -> list[tuple]:
    """The scan, value by value in Python (the rules of disclosure.identifiers_in)."""
    out = []
    for name in table.column_names:
        col = table.column(name)
        if disclosure._DOB_NAME_RE.search(name):
            out.append((name, "date_of_birth", len(col) - col.null_count))
        typ = col.type
        if pa.types.is_dictionary(typ):
            typ = typ.value_type
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            cells = [[v] for v in col.to_pylist()]
        elif pa.types.is_list(typ):
            cells = [v or [] for v in col.to_pylist()]
        else:
            continue
        for kind in disclosure.KINDS:
            n = sum(any(v is not None and kind in disclosure.identifiers_in(v, strict=strict) for v in cell)
                    for cell in cells)
            if n:
                out.append((name, kind, n))
    return out


def scanned(table: pa.Table) -> list[tuple]:
    return [(x.column, x.kind, x.count) for x in scan_for_identifiers(table)]


def tricky_texts() -> list:
    v, w = NUMBERS[0], NUMBERS[1]
    spaced, hyph = f"{v[:3]} {v[3:6]} {v[6:]}", f"{v[:3]}-{v[3:6]}-{v[6:]}"
    return [
        None, "", " ", v, w, spaced, hyph, f"{v[:3]}-{v[3:6]} {v[6:]}", f"{v[:3]}  {v[3:]}",
        f"{v[:3]}\t{v[3:]}", f"{v[:3]}\u00a0{v[3:]}", f"{v[:3]}--{v[3:]}", f"{v[:6]}-{v[6:]}",
        _bad(v), f"ref {_bad(v)}.", v[:9], v + "1", "1" + v, "a" + v, v + "b", "ab" + v + "cdef",
        "_" + v, v + "_", "\u00e9" + v, v + "\u00e9", f"x\n{v}\ny", f"({v})", f"#{v}#", f"{v}/{w}",
        f"{_bad(v)} {w}", f"{_bad(v)}{w}", f"{v[:5]} {v[5:]}",
        # Python's \d takes other digits: they bound a match (not [0-9A-Za-z]) or are
        # consumed by an invalid match that hides a valid one (then: no NHS number)
        "\u0669" + v, v + "\u0669", "\u0669" * 10, "\u0669" + v[1:], "".join(chr(0xFF10 + int(c)) for c in v),
        f"333\u0669{v[:6]} {v[6:]}", f"878\u0669{v[:6]}-{v[6:]}", f"\u0669\u0669\u0669 {v}",
        f"123 {v}", f"12 {v}", "\uff11" + v,
        # postcodes, any case, with or without the space, bounded or not
        "LS1 4AP", "ls14ap", "SW1A 1AA", "sw1a1aa", "GIR 0AA", "gir0aa", "W1A 0AX", "EC1A 1BB",
        "M1 1AE", "B33 8TH", "CR2 6XH", "DN55 1PT", "ls1 4ap.", "(LS1 4AP)", "xLS1 4AP", "LS1 4APx",
        "1LS1 4AP", "LS1 4AP1", "LS1  4AP", "LS1 4CP", "QS1 4AP", "LI1 4AP", "A81001", "B82005",
        "E01000001", "9ab12de3f4", "ab12de", "\u00e9LS1 4AP\u00e9", "LS1\u00a04AP", "LS1\t4AP",
        # Python's IGNORECASE folds U+017F to S, U+212A to K, U+0130/U+0131 to I
        "\u017fW1A 1AA", "\u212aT1 1AA", "G\u0130R 0AA", "g\u0131r 0aa", "LS1 4A\u017f",
        "\u017fLS1 4AP", "LS1 4AP\u212a", "\u0130LS1 4AP", "LS1 4AP\u0131", "\uff2c\uff33\uff11 4AP",
        f"patient {spaced} at LS1 4AP", f"{hyph}\nGIR 0AA",
    ]


def _verdicts(texts, strict):
    return {k: [t is not None and k in disclosure.identifiers_in(t, strict=strict) for t in texts]
            for k in disclosure.KINDS}


@pytest.mark.parametrize("strict", [True, False])
def test_identifier_hits_equal_python_rules_on_tricky_texts(strict):
    texts = tricky_texts()
    hits = disclosure._identifier_hits(pa.array(texts, pa.string()), strict=strict)
    want = _verdicts(texts, strict)
    for kind in disclosure.KINDS:
        assert hits[kind].tolist() == want[kind], kind
    # the list has both verdicts, including the cases only NFKC and digit mapping find
    v = NUMBERS[0]
    assert disclosure._contains_nhs_number("".join(chr(0x0660 + int(c)) for c in v))
    assert disclosure._contains_nhs_number("".join(chr(0xFF10 + int(c)) for c in v))
    assert disclosure._contains_nhs_number("a" + v) and not disclosure._contains_nhs_number("a" + v, bounded=True)
    assert not disclosure._contains_nhs_number("1" + v) and not disclosure._contains_nhs_number(_bad(v))
    assert disclosure._contains_postcode("\uff2c\uff33\uff11 4AP") and not disclosure._contains_postcode("xLS1 4AP")
    n = len(texts)
    assert 10 < sum(want["nhs_number"]) < n - 10 and 10 < sum(want["postcode"]) < n - 10


def _random_text(rng: random.Random) -> str:
    v = rng.choice(NUMBERS)
    pieces = [
        v, _bad(v), v[:9], f"{v[:3]} {v[3:6]} {v[6:]}", f"{v[:3]}-{v[3:6]}-{v[6:]}",
        rng.choice(["LS1 4AP", "ls14ap", "SW1A1AA", "GIR 0AA", "\u017fW1A 1AA", "\u212aT1 1AA", "QS1 4AP"]),
        "".join(rng.choice("0123456789 -") for _ in range(rng.randrange(1, 6))),
        rng.choice([" ", "-", "\t", "\n", "\u00a0", "\u0669", "\uff15", "a", "Z", "_", ".", "\u00e9", "\u0131"]),
    ]
    return "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 5)))


@pytest.mark.parametrize("strict", [True, False])
def test_identifier_hits_equal_python_rules_on_random_texts(strict):
    rng = random.Random(201401)
    texts = [_random_text(rng) for _ in range(4000)] + [None] * 5
    hits = disclosure._identifier_hits(pa.array(texts, pa.string()), strict=strict)
    want = _verdicts(texts, strict)
    for kind in disclosure.KINDS:
        assert hits[kind].tolist() == want[kind], kind
    assert sum(want["nhs_number"]) > 300 and sum(want["postcode"]) > 100


def test_scan_equals_value_by_value_scan_over_column_kinds():
    rng = random.Random(7)
    texts = tricky_texts() + [_random_text(rng) for _ in range(600)]
    n = len(texts)
    lists = [None if i % 11 == 0 else [texts[(i * 7 + k) % n] for k in range(i % 4)] for i in range(n)]
    table = pa.table({
        "free_text": pa.array(texts, pa.string()),
        "large": pa.array(texts, pa.large_string()),
        "coded": pa.array(texts, pa.string()).dictionary_encode(),
        "codes": pa.array(lists, pa.list_(pa.string())),
        "short": pa.array([t[:4] if t else t for t in texts], pa.string()),
        "clean": pa.array(["A81001"] * n, pa.string()),
    })
    want = reference_scan(table)
    assert scanned(table) == want
    assert {k for _, k, _ in want} == {"nhs_number", "postcode"}
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=97))
    assert scanned(chunked) == want
    sliced = table.slice(40, 300)
    assert scanned(sliced) == reference_scan(sliced)


@pytest.fixture(scope="module")
def chars():
    return pa.array(list(ALL_CHARS), pa.string())


def test_every_non_ascii_value_is_decided_by_the_python_rules(chars):
    # the RE2 pre-selection reads ASCII only; any other character sends a value to Python
    picked = disclosure._candidates(pa.array([c + "xxxx" for c in ALL_CHARS[128:5000]]))
    assert picked.all()


def test_nhs_boundary_and_digit_classes_in_re2_are_ascii_as_in_python(chars):
    for token in (disclosure._NOT_ALNUM, "[0-9]"):
        python = set(re.findall(token, ALL_CHARS))
        got = set(chars.filter(pc.match_substring_regex(chars, "^" + token + "$")).to_pylist())
        assert got == python, token


def test_a_percentage_whose_numerator_is_blanked_is_blanked_too():
    """linkage_coverage_provider: 3 of 40 episodes linked. The denominator (40) is at least
    8, so the 1-to-7 rule alone would publish pct_linked 7.5 beside a blanked
    episodes_linked: 7.5 x 40 / 100 = 3 gives the count back. The rate is blanked with it;
    rows whose numerator is 0 or over 7 keep their rate."""
    import pyarrow as pa

    from pipelines import schemas
    from pipelines.disclosure import apply_small_numbers, check_public

    ds = schemas.get("linkage_coverage_provider")
    staged = ds.arrow_schema(include_partition=True, staged=True)
    values = {n: [None] * 3 for n in staged.names}
    values.update(period=["2014-01"] * 3, provider_code=["RA1", "RA2", "RA3"], episodes=[40, 40, 40],
                  episodes_linked=[3, 0, 20], pct_linked=[7.5, 0.0, 50.0])
    table = pa.table({n: pa.array(values[n], staged.field(n).type) for n in staged.names})
    out = apply_small_numbers(ds, table).to_pydict()
    assert out["episodes_linked"] == [None, 0, 20] and out["episodes_linked_suppressed"] == [True, False, False]
    assert out["pct_linked"] == [None, 0.0, 50.0]
    assert not [v for v in check_public(ds, apply_small_numbers(ds, table)) if v.column == "pct_linked"]
    # A table that shows the rate beside the blanked count is refused.
    published = apply_small_numbers(ds, table)
    leaked = published.set_column(published.schema.get_field_index("pct_linked"), "pct_linked",
                                  pa.array([7.5, 0.0, 50.0], published.schema.field("pct_linked").type))
    assert "rate_reveals_suppressed_count" in {v.rule for v in check_public(ds, leaked)}
