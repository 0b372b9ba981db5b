"""File names and reading landing files into strings (pipelines.landing). No validation."""

from __future__ import annotations

import gzip
from datetime import datetime, timezone

import pandas as pd
import pytest

from pipelines.landing import FileRejected, ParsedName, Rejection, parse_name, read_csv
from pipelines.nhs_number import with_check_digit
from pipelines.storage import Store

SUS_HEADER = "PROCODE3,SUSRECID,EPISTART,EPIEND,ADMIDATE,ADMIMETH,DISMETH,SEX"


def _store(tmp_path, files: dict[str, bytes | str]) -> Store:
    for rel, content in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return Store(tmp_path)


# ----------------------------------------------------------------------------- names
@pytest.mark.parametrize("path, source, submitter, period, protocol", [
    ("gp/GP_A81001_20240131.csv", "gp", "A81001", "2024-01", None),
    ("gp/GP_A81001_20240229.csv.gz", "gp", "A81001", "2024-02", None),
    ("sus_apc/APC_RGT_202401_20240205120000_BULK.csv", "sus_apc", "RGT", "2024-01", "BULK"),
    ("sus_apc/APC_R1H_202312_20240105235959_NET.csv.gz", "sus_apc", "R1H", "2023-12", "NET"),
    ("fft/FFT_RGT_202401_20240210080000.csv", "fft", "RGT", "2024-01", None),
    ("hes_apc/artificial_hes_apc_0102.csv", "hes_apc", None, None, None),
    ("reference/epraccur.csv", "reference", None, None, None),
    ("reference/sites.csv.gz", "reference", None, None, None),
])
def test_good_names(path, source, submitter, period, protocol):
    p = parse_name(path)
    assert isinstance(p, ParsedName)
    assert (p.source, p.submitter_code, p.reporting_period, p.protocol) == (source, submitter, period, protocol)
    assert p.file_name == path
    assert p.submission_id == path.split("/")[-1].split(".")[0]


def test_submission_time_from_name():
    p = parse_name("sus_apc/APC_RGT_202401_20240205120034_NET.csv")
    assert p.submitted_at == datetime(2024, 2, 5, 12, 0, 34, tzinfo=timezone.utc)
    g = parse_name("gp/GP_A81001_20240131.csv")
    assert g.extract_date.isoformat() == "2024-01-31"
    assert g.submitted_at == datetime(2024, 1, 31, tzinfo=timezone.utc)


@pytest.mark.parametrize("path, words", [
    ("sus_apc/APC_RGT_2024_BULK.csv",
     "file name does not follow APC_<provider>_<YYYYMM>_<YYYYMMDDHHMMSS>_<BULK|NET>.csv"),
    ("sus_apc/APC_RGT_202401_20240205120000_FULL.csv", "does not follow APC_"),
    ("sus_apc/apc_RGT_202401_20240205120000_BULK.csv", "does not follow APC_"),
    ("sus_apc/APC_RGT_202413_20240205120000_BULK.csv", "reporting period 202413 in the file name is not a real month"),
    ("sus_apc/APC_RGT_202401_20240230120000_BULK.csv", "submission time 20240230120000"),
    ("sus_apc/APC_RGT_202401_20240205250000_NET.csv", "is not a real date and time"),
    ("gp/GP_A81001_20230229.csv", "extract date 20230229 in the file name is not a real date"),
    ("gp/GP_A8100_20240131.csv", "does not follow GP_<practice>_<YYYYMMDD>.csv"),
    ("gp/GP_A81001_20240131.txt", "only .csv or .csv.gz"),
    ("fft/FFT_RGT_202401.csv", "does not follow FFT_<provider>_<YYYYMM>_<YYYYMMDDHHMMSS>.csv"),
    ("reference/practices.csv", "epraccur.csv, providers.csv or sites.csv"),
    ("elsewhere/APC_RGT_202401_20240205120000_BULK.csv", "not in a landing folder"),
    ("sus_apc/old/APC_RGT_202401_20240205120000_BULK.csv", "subfolder"),
])
def test_bad_names_rejected_in_plain_words(path, words):
    r = parse_name(path)
    assert isinstance(r, Rejection)
    assert words in r.reason
    assert r.reason.startswith(path)


# ----------------------------------------------------------------------------- reading
def test_gzip_bom_pipe_delimiter_and_leading_zeros(tmp_path):
    text = ("\ufeff" + SUS_HEADER.replace(",", "|") + "|NHSNOIND|EXTRA_COL\n"
            "RGT|0012|2024-01-01|2024-01-03|2024-01-01|01|1|0|01|x\n"
            "RGT|0013|2024-01-02|2024-01-03|2024-01-02|2A|9|2||\n")
    store = _store(tmp_path, {"sus_apc/APC_RGT_202401_20240205120000_BULK.csv.gz": gzip.compress(text.encode())})
    frame, info = read_csv(store, "sus_apc/APC_RGT_202401_20240205120000_BULK.csv.gz", "sus_apc")
    assert info.compressed and info.bom and info.delimiter == "|"
    assert list(frame.columns[:1]) == ["PROCODE3"]  # the BOM is not part of the first name
    assert frame["SUSRECID"].tolist() == ["0012", "0013"]
    assert frame["ADMIMETH"].tolist() == ["01", "2A"]
    assert frame["SEX"].tolist() == ["0", "2"]
    assert frame["NHSNOIND"].tolist()[0] == "01"
    assert frame["EXTRA_COL"].isna().tolist() == [False, True]  # extra column kept; empty = <NA>
    assert info.extra_columns == ["EXTRA_COL"]
    assert all(str(frame[c].dtype) == "string" for c in frame.columns if c != "_line")
    assert frame["_line"].tolist() == [2, 3]


def test_gzip_detected_by_magic_bytes_and_crlf(tmp_path):
    text = SUS_HEADER + "\r\nRGT,1,2024-01-01,2024-01-03,2024-01-01,11,1,1\r\n\r\nRGT,2,2024-01-01,2024-01-03,2024-01-01,11,1,1\r\n"
    store = _store(tmp_path, {"sus_apc/x.csv": gzip.compress(text.encode())})
    frame, info = read_csv(store, "sus_apc/x.csv", "sus_apc")
    assert info.compressed
    assert frame["SUSRECID"].tolist() == ["1", "2"]
    assert frame["SEX"].tolist() == ["1", "1"]  # no stray carriage return
    assert frame["_line"].tolist() == [2, 4]  # the blank line 3 is skipped, line numbers kept


def test_gp_file_is_comma_only(tmp_path):
    store = _store(tmp_path, {"gp/GP_A81001_20240131.csv":
                              "NHS_NUMBER|DATE_OF_BIRTH|SEX|REGISTRATION_DATE\n1|2|3|4\n"})
    with pytest.raises(FileRejected, match="lacks required column"):
        read_csv(store, "gp/GP_A81001_20240131.csv", "gp")


def test_hes_placeholders_kept_raw(tmp_path):
    text = SUS_HEADER + ",EPIKEY,OPERTN_4_01,OPERTN_4_02,DIAG_4_01\nRGT,,2001-01-01,2001-01-02,2001-01-01,11,1,1,77,A818,-   ,-\n"
    store = _store(tmp_path, {"hes_apc/h.csv": text})
    frame, _ = read_csv(store, "hes_apc/h.csv", "hes_apc")
    assert frame["OPERTN_4_02"].tolist() == ["-   "]
    assert frame["DIAG_4_01"].tolist() == ["-"]
    assert frame["SUSRECID"].isna().all()


def test_missing_required_column_names_file_and_column(tmp_path):
    store = _store(tmp_path, {"sus_apc/a.csv": "PROCODE3,SUSRECID,EPISTART,EPIEND,ADMIDATE,ADMIMETH,SEX\nRGT,1,,,,,\n"})
    with pytest.raises(FileRejected) as exc:
        read_csv(store, "sus_apc/a.csv", "sus_apc")
    assert exc.value.reason == "sus_apc/a.csv: the header lacks required column(s) DISMETH"


def test_hes_needs_susrecid_or_epikey(tmp_path):
    header = SUS_HEADER.replace("SUSRECID,", "")
    store = _store(tmp_path, {"hes_apc/h.csv": header + "\nRGT,2001-01-01,2001-01-02,2001-01-01,11,1,1\n"})
    with pytest.raises(FileRejected, match="neither SUSRECID nor EPIKEY"):
        read_csv(store, "hes_apc/h.csv", "hes_apc")


def test_ragged_row_names_the_line_and_never_the_content(tmp_path):
    secret = next(n for n in (with_check_digit(f"999{i:06d}") for i in range(123456, 123600)) if n)
    rows = "".join(f"RGT,{i},2024-01-01,2024-01-03,2024-01-01,11,1,1\n" for i in range(55))
    text = SUS_HEADER + ",NEWNHSNO\n" + rows.replace(",1\n", f",1,{secret}\n") + f"RGT,{secret}\n"
    store = _store(tmp_path, {"sus_apc/a.csv": text})
    with pytest.raises(FileRejected) as exc:
        read_csv(store, "sus_apc/a.csv", "sus_apc")
    assert exc.value.reason == "sus_apc/a.csv: line 57: expected 9 fields, found 2"
    assert secret not in str(exc.value)


def test_broken_quoting_rejected(tmp_path):
    text = SUS_HEADER + '\nRGT,"1,2024-01-01,2024-01-03,2024-01-01,11,1,1\nRGT,2,2024-01-01,2024-01-03,2024-01-01,11,1,1\n'
    store = _store(tmp_path, {"sus_apc/a.csv": text})
    with pytest.raises(FileRejected, match=r"sus_apc/a.csv: line 2: broken quoting"):
        read_csv(store, "sus_apc/a.csv", "sus_apc")


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "line 1: not UTF-8 text"),  # the first problem by position
    (b"PROCODE3,SUSRECID\nRGT,\x00\x01\n", "line 2: binary content"),
    (b"PROCODE3,SUSRECID\n\xff\xfe\xfa\n", "line 2: not UTF-8 text"),
    (b"", "the file is empty"),
    (b"\x1f\x8b\x08\x00garbage", "gzip data is damaged"),
])
def test_unreadable_files_rejected(tmp_path, content, words):
    store = _store(tmp_path, {"sus_apc/a.csv": content})
    with pytest.raises(FileRejected, match=words):
        read_csv(store, "sus_apc/a.csv", "sus_apc")


def _epraccur_row(code: str, width: int = 27) -> str:
    cols = [""] * 27
    cols[0], cols[1], cols[9], cols[10], cols[12], cols[14], cols[25] = (
        code, "THE SURGERY", "TS1 1AA", "19740401", "A", "00K", "4")
    return ",".join(cols[:width])


def test_epraccur_headerless_27_columns(tmp_path):
    store = _store(tmp_path, {"reference/epraccur.csv": _epraccur_row("A81001") + "\n" + _epraccur_row("A81002") + "\n"})
    frame, _ = read_csv(store, "reference/epraccur.csv", "epraccur")
    assert frame["ORG_CODE"].tolist() == ["A81001", "A81002"]
    assert frame["OPEN_DATE"].tolist() == ["19740401"] * 2
    assert frame["COMMISSIONER_CODE"].tolist() == ["00K"] * 2
    assert frame["PRESCRIBING_SETTING"].tolist() == ["4"] * 2
    assert frame["_line"].tolist() == [1, 2]  # no header: the first row is line 1
    bad = _store(tmp_path / "b", {"reference/epraccur.csv": _epraccur_row("A81001", 12) + "\n"})
    with pytest.raises(FileRejected, match="expected 27 fields"):
        read_csv(bad, "reference/epraccur.csv", "epraccur")


def test_gp_type1_rows_dropped_as_read_and_counted(tmp_path):
    t1 = with_check_digit("999000011")
    text = ("NHS_NUMBER,DATE_OF_BIRTH,SEX,REGISTRATION_DATE,OBJECTION\n"
            f"{with_check_digit('999000020')},1970-01-01,1,2000-01-01,\n"
            f"{t1},1970-01-01,2,2000-01-01,9Nu0\n"
            f"{with_check_digit('999000038')},1970-01-01,2,2000-01-01,9Nu4\n"
            f"{t1[:3]} {t1[3:6]} {t1[6:]},1970-01-01,2,2000-01-01, 9nu0 \n")
    store = _store(tmp_path, {"gp/GP_A81001_20240131.csv": text})
    frame, info = read_csv(store, "gp/GP_A81001_20240131.csv", "gp")
    assert info.type1_objections == 2
    assert len(frame) == 2 and info.rows == 2
    assert frame["_line"].tolist() == [2, 4]
    assert not frame.astype(str).apply(lambda c: c.str.replace(" ", "").str.contains(t1)).any().any()


def test_empty_values_are_missing_and_whitespace_kept_raw(tmp_path):
    store = _store(tmp_path, {"sus_apc/a.csv": SUS_HEADER + '\nRGT,"",2024-01-01, 2024-01-03 ,2024-01-01,11,1,\n'})
    frame, _ = read_csv(store, "sus_apc/a.csv", "sus_apc")
    assert pd.isna(frame.at[0, "SUSRECID"]) and pd.isna(frame.at[0, "SEX"])
    assert frame.at[0, "EPIEND"] == " 2024-01-03 "


GP_HEADER = "NHS_NUMBER,DATE_OF_BIRTH,SEX,REGISTRATION_DATE,OBJECTION"


def _gp_rows(values: list[str], start: int = 100) -> str:
    """GP rows with generated NHS numbers, one per OBJECTION value."""
    out, k = [], start
    for v in values:
        n = None
        while not n:
            n = with_check_digit(f"999{k:06d}")
            k += 1
        out.append(f"{n},1970-01-01,1,2000-01-01,{v}")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- scan
def _lines(data: bytes, header: bool = True, chunk: int | None = None):
    """Start lines of the data records found by the scan, the text fed in pieces of
    ``chunk`` bytes (None: whole)."""
    from pipelines.landing import Limits, _Scan, _scan

    scan = _Scan("t.csv", ",", Limits(2000, 1 << 20, 100, 1 << 30), header)
    pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    _scan(iter(pieces), scan)
    return (scan.header_raw, [int(x) for a in scan.starts for x in a])


def test_record_start_lines_with_quoted_line_breaks_any_chunking():
    """Generated records (quoted commas, quoted line breaks, "" escapes, CRLF, blank
    lines): the scan gives the physical line where each record starts, whatever the
    size of the pieces the text arrives in."""
    import random

    rnd = random.Random(7)
    values = ["a", "", '"x,y"', '"two\nlines"', '"q""uote"', '"\r\n"', "b c", '"three\n\nlines"']
    for _ in range(200):
        text, line, want = "H1,H2\n", 2, []
        for _ in range(rnd.randrange(0, 8)):
            if rnd.random() < 0.2:
                text += rnd.choice(["\n", "\r\n"])
                line += 1
                continue
            row = ",".join(rnd.choice(values) for _ in range(2))
            want.append(line)
            text += row + rnd.choice(["\n", "\r\n"])
            line += row.count("\n") + 1
        data = text.encode()
        for chunk in (None, 1, 2, 3, 5, 64):
            assert _lines(data, chunk=chunk) == (b"H1,H2", want), (data, chunk)


def test_scan_fuzz_only_ever_rejects_and_does_not_depend_on_chunks():
    """Random bytes: the scan either rejects the text (FileRejected) or gives lines, the
    same however the text is cut."""
    import random

    rnd = random.Random(5)
    for _ in range(1500):
        data = bytes(rnd.choice(b'\n\r\ra,,"x') for _ in range(rnd.randrange(0, 24)))
        for header in (False, True):
            outs = []
            for chunk in (None, 1, 2, 7):
                try:
                    outs.append(_lines(data, header=header, chunk=chunk))
                except FileRejected as exc:
                    outs.append(exc.reason)
            assert all(o == outs[0] for o in outs), (data, header)


def test_quoted_comma_and_line_break_are_values_and_lines_stay_right(tmp_path):
    text = (SUS_HEADER + ",NOTE\n"
            'RGT,1,2024-01-01,2024-01-03,2024-01-01,11,1,1,"a, b"\n'
            'RGT,2,2024-01-01,2024-01-03,2024-01-01,11,1,1,"first\nsecond\r\nthird"\n'
            "\n"
            'RGT,3,2024-01-01,2024-01-03,2024-01-01,11,1,1,"say ""hi"""\n'
            "RGT,4,2024-01-01,2024-01-03,2024-01-01,11,1,1,\n")
    store = _store(tmp_path, {"sus_apc/a.csv": text})
    frame, _ = read_csv(store, "sus_apc/a.csv", "sus_apc")
    assert frame["NOTE"].tolist()[:3] == ["a, b", "first\nsecond\r\nthird", 'say "hi"']
    assert frame["SUSRECID"].tolist() == ["1", "2", "3", "4"]
    # The record of line 3 spans lines 3-5; line 6 is blank; line 7 and 8 follow.
    assert frame["_line"].tolist() == [2, 3, 7, 8]


def test_unclosed_quote_is_broken_quoting_with_its_line(tmp_path):
    text = SUS_HEADER + '\nRGT,1,2024-01-01,2024-01-03,2024-01-01,11,1,1\nRGT,"2,2024-01-01,2024-01-03,2024-01-01,11,1,1\n'
    store = _store(tmp_path, {"sus_apc/a.csv": text})
    with pytest.raises(FileRejected) as exc:
        read_csv(store, "sus_apc/a.csv", "sus_apc")
    assert exc.value.reason == "sus_apc/a.csv: line 3: broken quoting (a quoted value is never closed)"


def test_field_over_the_limit_says_so(tmp_path):
    from pipelines.landing import Limits

    big = "x" * 2000
    text = SUS_HEADER + ",NOTE\nRGT,1,2024-01-01,2024-01-03,2024-01-01,11,1,1,ok\n" \
        f'RGT,2,2024-01-01,2024-01-03,2024-01-01,11,1,1,"{big}"\n'
    store = _store(tmp_path, {"sus_apc/a.csv": text})
    with pytest.raises(FileRejected) as exc:
        read_csv(store, "sus_apc/a.csv", "sus_apc", Limits(2000, 1024, 100, 1 << 30))
    assert exc.value.reason == ("sus_apc/a.csv: line 3: a value longer than the limit of 1 KiB "
                                "(limits.max_field_bytes)")
    frame, _ = read_csv(store, "sus_apc/a.csv", "sus_apc", Limits(2000, 4096, 100, 1 << 30))
    assert frame["NOTE"].tolist() == ["ok", big]


def test_limits_come_from_the_settings_passed_in():
    from pipelines.config import Settings
    from pipelines.landing import Limits

    assert Limits.from_settings(Settings()) == Limits(2000, 1 << 20, 100.0, 20 << 30)
    s = Settings.load(env={"CAREDATA_LIMITS__MAX_COLUMNS": "12"})
    assert Limits.from_settings(s).max_columns == 12


# ----------------------------------------------------------------------------- headers
def test_header_names_matched_trimmed_and_ignoring_case(tmp_path):
    text = " nhs_number ,Date_Of_Birth,sex,Registration_Date, Objection,My Extra \n" + \
        _gp_rows(["", "9Nu4"]).replace(",\n", ",,x\n").replace(",9Nu4\n", ",9Nu4,y\n")
    store = _store(tmp_path, {"gp/GP_A81001_20240131.csv": text})
    frame, info = read_csv(store, "gp/GP_A81001_20240131.csv", "gp")
    assert list(frame.columns) == ["NHS_NUMBER", "DATE_OF_BIRTH", "SEX", "REGISTRATION_DATE", "OBJECTION",
                                   "My Extra", "_line"]
    assert info.extra_columns == ["My Extra"]
    assert frame["My Extra"].tolist() == ["x", "y"]


@pytest.mark.parametrize("header", [
    "NHS_NUMBER,DATE_OF_BIRTH,SEX,REGISTRATION_DATE,OBJECTION,objection",
    "NHS_NUMBER,DATE_OF_BIRTH,SEX,REGISTRATION_DATE,OBJECTION, nhs_number",
])
def test_header_naming_a_column_twice_is_rejected(tmp_path, header):
    store = _store(tmp_path, {"gp/GP_A81001_20240131.csv": header + "\n" + _gp_rows([""]).replace("\n", ",\n")})
    with pytest.raises(FileRejected, match=r"line 1: the header names the same column more than once"):
        read_csv(store, "gp/GP_A81001_20240131.csv", "gp")


def test_a_data_row_read_as_header_is_never_quoted_back(tmp_path):
    """An extract without its header: its first row's values repeat (two dates); the
    reason names positions, never the values."""
    row = _gp_rows([""]).strip().rstrip(",").replace(",1,", ",1970-01-01,")
    store = _store(tmp_path, {"gp/GP_A81001_20240131.csv": row + "\n" + row + "\n"})
    with pytest.raises(FileRejected) as exc:
        read_csv(store, "gp/GP_A81001_20240131.csv", "gp")
    assert exc.value.reason.endswith("ignoring case): columns 2 and 3")
    assert "1970" not in exc.value.reason and row.split(",")[0] not in exc.value.reason


def test_gp_header_without_objection_is_rejected_even_if_no_one_objects(tmp_path):
    text = "NHS_NUMBER,DATE_OF_BIRTH,SEX,REGISTRATION_DATE\n" + _gp_rows([""]).replace(",\n", "\n")
    store = _store(tmp_path, {"gp/GP_A81001_20240131.csv": text})
    with pytest.raises(FileRejected) as exc:
        read_csv(store, "gp/GP_A81001_20240131.csv", "gp")
    assert exc.value.reason == ("gp/GP_A81001_20240131.csv: the header lacks the column OBJECTION, which must "
                                "be present even where every value is empty: an extract without it cannot "
                                "prove that no patient objected")


def test_mixed_case_objection_header_still_drops_type1_rows(tmp_path):
    """The attack: a header spelling `Objection` used to be an unknown extra column, and
    every type 1 objector's row was stored."""
    text = "NHS_NUMBER,DATE_OF_BIRTH,SEX,REGISTRATION_DATE,Objection\n" + _gp_rows(["", "9Nu0", "9Nu0", ""])
    t1 = [r.split(",")[0] for r in text.splitlines()[1:] if r.endswith("9Nu0")]
    store = _store(tmp_path, {"gp/GP_A81001_20240131.csv": text})
    frame, info = read_csv(store, "gp/GP_A81001_20240131.csv", "gp")
    assert info.type1_objections == 2 and len(frame) == 2
    assert frame["_line"].tolist() == [2, 5]
    assert not set(t1) & set(frame["NHS_NUMBER"])


# ----------------------------------------------------------------------------- objections
@pytest.mark.parametrize("value, kind", [
    ("", None), (" ", None), ("\u200b", None),
    ("9Nu0", "type1"), (" 9nu0 ", "type1"), ("9NU0", "type1"),
    ("9Nu4", "type2"), ("9nu4\t", "type2"),
    ("9NuO", "unrecognised"), ("9Nu0.", "unrecognised"), ("9Nu0\u200b", "unrecognised"),
    ("\uff19Nu0", "unrecognised"), ("9Nu\uff14", "unrecognised"), ("9N u4", "unrecognised"),
    ("yes", "unrecognised"), ("9Nu", "unrecognised"),
])
def test_objection_values(value, kind):
    from pipelines.landing import objection_kind

    assert objection_kind(value) == kind


def test_unrecognised_objections_read_as_type1_counted_apart_type2_canonical(tmp_path):
    values = ["", "9Nu0", "9NuO", "9Nu0.", "9Nu0\u200b", "9nu4", " 9Nu4 ", "garbage", "\u200b"]
    text = GP_HEADER + "\n" + _gp_rows(values)
    store = _store(tmp_path, {"gp/GP_A81001_20240131.csv": text})
    frame, info = read_csv(store, "gp/GP_A81001_20240131.csv", "gp")
    assert info.type1_objections == 5 and info.objection_unrecognised == 4
    assert frame["_line"].tolist() == [2, 7, 8, 10]
    # Type 2 stored as the canonical code, as silver and linkage read it (== TYPE2, any case).
    assert frame["OBJECTION"].tolist()[1:3] == ["9Nu4", "9Nu4"]
    assert frame["OBJECTION"].isna().tolist() == [True, False, False, True]


# ----------------------------------------------------------------------------- digits
@pytest.mark.parametrize("path", [
    "gp/GP_A\uff18\uff11\uff10\uff10\uff11_20240131.csv",       # full-width practice digits
    "gp/GP_A81001_\u0662\u0660\u0662\u0664\u0660\u0661\u0663\u0661.csv",  # Arabic-Indic date
    "sus_apc/APC_RGT_\uff12\uff10\uff12\uff14\uff10\uff11_20240205120000_BULK.csv",
    "fft/FFT_RGT_202401_2024020508000\uff10.csv",
])
def test_non_ascii_digits_in_file_names_are_rejected(path):
    r = parse_name(path)
    assert isinstance(r, Rejection) and "does not follow" in r.reason


def test_dates_need_ascii_digits():
    from pipelines.landing import to_date, to_date_yyyymmdd

    assert to_date(pd.Series(["2024-01-31", "\uff12\uff10\uff12\uff14-01-31"], dtype="string")).to_pylist()[1] is None
    assert to_date_yyyymmdd(pd.Series(["\uff12\uff10\uff12\uff140131"], dtype="string")).to_pylist() == [None]


def test_a_large_text_is_parsed_as_a_stream_like_a_small_one():
    import pyarrow.csv as pacsv

    from pipelines.landing import _ChunkReader, _parse_input

    text = b"A,B\n" + b"".join(b"%d,x\n" % i for i in range(50_000))
    pieces = [text[i:i + 1000] for i in range(0, len(text), 1000)]
    streamed = _parse_input(iter(pieces), one_piece=5000)
    assert isinstance(streamed, _ChunkReader)
    whole = _parse_input(iter(pieces))
    assert not isinstance(whole, _ChunkReader)
    assert pacsv.read_csv(streamed).equals(pacsv.read_csv(whole))
    assert pacsv.read_csv(_parse_input(iter(pieces), one_piece=5000)).num_rows == 50_000
