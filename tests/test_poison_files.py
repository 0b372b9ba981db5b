"""No file can stop the pipeline (inputs.md): each poison file ends rejected in the
ledger with its reason (file, line where known, the limit), the good files beside it are
taken in, and a second run neither fails nor records the file again. Small hand-made
landing zones; NHS numbers generated in the 999 test range."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from pipelines import ingest
from pipelines.config import Settings
from pipelines.landing import FileRejected, Limits, read_csv
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

from helpers import land, nhs_numbers

GP_HEADER = "NHS_NUMBER,DATE_OF_BIRTH,SEX,REGISTRATION_DATE,OBJECTION"
GOOD = "gp/GP_A81001_20240131.csv"
POISON = "gp/GP_A81002_20240131.csv"


def gp_text(count: int = 3, start: int = 100) -> str:
    return GP_HEADER + "\n" + "".join(f"{n},1970-01-01,1,2000-01-01,\n" for n in nhs_numbers(start, count))


def run(tmp_path: Path, landing_store: Store | None = None, warehouse: Warehouse | None = None,
        settings: Settings | None = None):
    landing = landing_store or Store(tmp_path / "landing")
    wh = warehouse or Warehouse(Store(tmp_path / "warehouse"))
    report = ingest.ingest("gp", "2024-01", landing, wh, settings or Settings())
    return report, wh


def ledger(wh: Warehouse) -> dict:
    return {r["file_name"]: r for r in ingest.read_ledger(wh).to_pylist()}


def outcome_parts(wh: Warehouse) -> list[str]:
    return sorted(f.path for f in wh.store.list(ingest.LEDGER_PARTS) if f.path.endswith("-outcome.parquet"))


def assert_rejected_once(tmp_path: Path, reason: str, *, good: bool = True, **kw) -> dict:
    """Run twice: the poison file is rejected with exactly ``reason`` (and the good file
    taken in); the second run neither fails nor writes another outcome."""
    report, wh = run(tmp_path, **kw)
    led = ledger(wh)
    poison = [r for name, r in led.items() if name != GOOD]
    assert len(poison) == 1, led
    assert poison[0]["status"] == "rejected"
    assert poison[0]["reason"] == reason
    assert {r["file_name"]: r["reason"] for r in report.rejected_files} == {poison[0]["file_name"]: reason}
    if good:
        assert led[GOOD]["status"] == "current" and GOOD in report.files_taken
    parts = outcome_parts(wh)
    again, _ = run(tmp_path, warehouse=wh, **{k: v for k, v in kw.items() if k != "warehouse"})
    assert again.rejected_files == [] and again.files_taken == []
    assert outcome_parts(wh) == parts
    return poison[0]


# ----------------------------------------------------------------------------- limits
def test_ten_thousand_columns_rejected_at_the_header(tmp_path):
    landing = tmp_path / "landing"
    land(landing, GOOD, gp_text())
    header = GP_HEADER + "," + ",".join(f"X{i}" for i in range(10_000 - 5))
    row = ",".join(["1"] * 10_000)
    land(landing, POISON, header + "\n" + "\n".join([row] * 40) + "\n")
    assert (landing / POISON).stat().st_size > 500_000
    assert_rejected_once(tmp_path, f"{POISON}: line 1: more than 2,000 columns, the limit (limits.max_columns)")


def _gzip_bomb(target_bytes: int) -> bytes:
    """A gzip member inflating to about ``target_bytes`` of CSV: one deflate block of 1 MiB
    of rows, flushed so that it stands alone, repeated (its trailer's checksum is never
    reached: the reader must stop long before)."""
    block_text = (GP_HEADER + "\n").encode() + b"9990000000,1970-01-01,1,2000-01-01,\n" * 29_000
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = co.compress(block_text) + co.flush(zlib.Z_FULL_FLUSH)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    reps = target_bytes // len(block_text)
    return header + block * reps + co.flush(zlib.Z_FINISH) + b"\x00" * 8


def test_gzip_bomb_rejected_for_its_ratio(tmp_path):
    landing = tmp_path / "landing"
    land(landing, GOOD, gp_text())
    land(landing, POISON + ".gz", _gzip_bomb(400 << 20))
    size = (landing / (POISON + ".gz")).stat().st_size
    assert 1.0 > size / (400 << 20) * 100  # more than 100 times
    from pipelines.landing import _bytes_words

    assert_rejected_once(tmp_path, f"{POISON}.gz: the gzip data inflates to more than 100 times the file's size "
                                   f"({_bytes_words(size)} stored); the limit is limits.max_gzip_ratio (100)")


def test_gzip_past_the_absolute_limit_is_rejected(tmp_path):
    store = Store(tmp_path)
    land(tmp_path, POISON + ".gz", gzip.compress(gp_text(2000).encode()))
    with pytest.raises(FileRejected) as exc:
        read_csv(store, POISON + ".gz", "gp", Limits(2000, 1 << 20, 100, 50_000))
    assert exc.value.reason == f"{POISON}.gz: the gzip data inflates past the limit of 48.8281 KiB (limits.max_inflated_bytes)"


BOMB_SCRIPT = r"""
import resource, sys
from pipelines.landing import FileRejected, read_csv
from pipelines.storage import Store
import pandas, pyarrow.csv  # imported before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_csv(Store(sys.argv[1]), sys.argv[2], "gp")
    print("ACCEPTED")
except FileRejected as exc:
    print(exc.reason)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024)
"""


@pytest.mark.parametrize("name, make, words", [
    ("bomb", lambda: _gzip_bomb(1 << 30), "inflates to more than 100 times"),
    ("wide", lambda: gzip.compress((GP_HEADER + "," + ",".join(f"X{i}" for i in range(9995)) + "\n"
                                    + ("1," * 9999 + "1\n") * 50).encode()), "more than 2,000 columns"),
])
def test_poison_rejected_without_memory_growing(tmp_path, name, make, words):
    """A 3 MB gzip bomb (1 GiB of text) and a 10,000-column file, each read in a fresh
    process: rejected, and the process's peak memory grows by less than 200 MB."""
    data = make()
    if name == "bomb":
        assert 2_000_000 < len(data) < 4_000_000
    land(tmp_path, POISON + ".gz", data)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(tmp_path), POISON + ".gz"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    reason, grew_mb = out.stdout.strip().splitlines()[-2:]
    assert words in reason and reason.startswith(POISON)
    assert int(grew_mb) < 200, grew_mb


# ----------------------------------------------------------------------------- broken files
def test_truncated_gzip(tmp_path):
    landing = tmp_path / "landing"
    land(landing, GOOD, gp_text())
    data = gzip.compress(gp_text(500).encode())
    land(landing, POISON + ".gz", data[: len(data) // 2])
    assert_rejected_once(tmp_path, f"{POISON}.gz: the gzip data is damaged or truncated")


def test_nul_bytes(tmp_path):
    landing = tmp_path / "landing"
    land(landing, GOOD, gp_text())
    text = gp_text(4).encode()
    land(landing, POISON, text[:-20] + b"\x00\x00" + text[-20:])
    assert_rejected_once(tmp_path, f"{POISON}: line 5: binary content (a NUL byte), not CSV text")


def test_not_utf8(tmp_path):
    landing = tmp_path / "landing"
    land(landing, GOOD, gp_text())
    land(landing, POISON, gp_text(2).encode() + "x,1970-01-01,1,2000-01-01,caf\u00e9\n".encode("latin-1"))
    assert_rejected_once(tmp_path, f"{POISON}: line 4: not UTF-8 text")


def test_field_over_the_limit(tmp_path):
    landing = tmp_path / "landing"
    land(landing, GOOD, gp_text())
    secret = nhs_numbers(700, 1)[0]
    land(landing, POISON, gp_text(2) + f'{secret},1970-01-01,1,2000-01-01,"{"9" * (2 << 20)}"\n')
    row = assert_rejected_once(
        tmp_path, f"{POISON}: line 4: a value longer than the limit of 1 MiB (limits.max_field_bytes)")
    assert secret not in row["reason"]


def test_duplicate_header(tmp_path):
    landing = tmp_path / "landing"
    land(landing, GOOD, gp_text())
    land(landing, POISON, gp_text().replace("SEX,", "SEX,Sex ,", 1).replace(",1,2000", ",1,1,2000"))
    assert_rejected_once(tmp_path, f"{POISON}: line 1: the header names the same column more than once "
                                   f"(names compared trimmed and ignoring case): SEX")


# ----------------------------------------------------------------------------- links
def test_symlink_to_a_file_outside_is_never_opened(tmp_path):
    landing = tmp_path / "landing"
    land(landing, GOOD, gp_text())
    outside = land(tmp_path / "outside", "secret.csv", gp_text(3, 500))
    (landing / POISON).symlink_to(outside)
    row = assert_rejected_once(
        tmp_path, f"{POISON}: a symbolic link: only regular files under the landing root are read, so neither "
                  f"it nor what it points to was opened")
    assert row["sha256"] == "not-opened-symbolic-link"
    published = ingest.submissions_dataset(Warehouse(Store(tmp_path / "warehouse"))).to_pylist()
    import hashlib

    real = hashlib.sha256(outside.read_bytes()).hexdigest()
    assert real not in {r["sha256"] for r in published}
    assert "not-opened-symbolic-link" in {r["sha256"] for r in published}


def test_escape_through_a_symlinked_folder(tmp_path):
    landing = tmp_path / "landing"
    land(landing, GOOD, gp_text())
    land(tmp_path / "elsewhere", "GP_A81003_20240131.csv", gp_text(3, 500))
    (landing / "gp" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    row = assert_rejected_once(
        tmp_path, "gp/more: a symbolic link: only regular files under the landing root are read, so neither "
                  "it nor what it points to was opened")
    assert row["sha256"] == "not-opened-symbolic-link"


def test_a_linked_landing_folder_is_rejected_and_scan_records_links_once(tmp_path):
    landing = tmp_path / "landing"
    land(tmp_path / "elsewhere", "GP_A81003_20240131.csv", gp_text(3, 500))
    landing.mkdir()
    (landing / "gp").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    wh = Warehouse(Store(tmp_path / "warehouse"))
    out = ingest.scan_landing(Store(landing), wh)
    assert [r["file_name"] for r in out["rejected_files"]] == ["gp"]
    parts = outcome_parts(wh)
    assert ingest.scan_landing(Store(landing), wh)["rejected_files"] == []
    assert outcome_parts(wh) == parts
    assert ledger(wh)["gp"]["status"] == "rejected"


def test_store_refuses_to_open_links_and_lists_them_only_when_asked(tmp_path):
    from pipelines.storage import UnsafePath

    land(tmp_path, "gp/real.csv", "x")
    (tmp_path / "gp" / "link.csv").symlink_to(tmp_path / "gp" / "real.csv")
    store = Store(tmp_path)
    assert [f.path for f in store.list("gp")] == ["gp/real.csv"]
    assert {(f.path, f.kind) for f in store.list("gp", special=True)} == {("gp/real.csv", "file"),
                                                                         ("gp/link.csv", "link")}
    with pytest.raises(UnsafePath):
        store.open("gp/link.csv", regular_only=True)
    with pytest.raises(UnsafePath):
        store.open("gp/../gp/real.csv", regular_only=True)
    assert store.read_bytes("gp/real.csv", regular_only=True) == b"x"


def test_s3_keys_with_dot_dot_or_empty_segments_are_listed_unsafe(s3_bucket, tmp_path):
    import boto3

    bucket, endpoint = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-2")
    for key in ("land/gp/GP_A81001_20240131.csv", "land/gp//GP_A81002_20240131.csv",
                "land/gp/../gp/GP_A81003_20240131.csv"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    store = Store(f"s3://{bucket}/land", endpoint_url=endpoint)
    assert [f.path for f in store.list("gp")] == ["gp/GP_A81001_20240131.csv"]
    kinds = {f.path: f.kind for f in store.list("gp", special=True)}
    assert kinds == {"gp/GP_A81001_20240131.csv": "file", "gp//GP_A81002_20240131.csv": "unsafe",
                     "gp/../gp/GP_A81003_20240131.csv": "unsafe"}
    from pipelines.storage import UnsafePath

    with pytest.raises(UnsafePath):
        store.open("gp/../gp/GP_A81003_20240131.csv", regular_only=True)
    # Recorded as rejected, never read, once.
    wh = Warehouse(Store(tmp_path / "warehouse"))
    out = ingest.scan_landing(store, wh)
    assert sorted(r["file_name"] for r in out["rejected_files"]) == [
        "gp/../gp/GP_A81003_20240131.csv", "gp//GP_A81002_20240131.csv"]
    led = ledger(wh)
    assert {led[n]["sha256"] for n in ("gp//GP_A81002_20240131.csv", "gp/../gp/GP_A81003_20240131.csv")} == {
        "not-opened-unsafe-path"}
    assert ingest.scan_landing(store, wh)["rejected_files"] == []


# ----------------------------------------------------------------------------- unexpected errors
class FailingParseStore(Store):
    """A landing store whose file ``bad`` breaks whenever it is opened to be read (a small
    file is read once, hashed and parsed from the same bytes: pipelines.landing.read_whole),
    with an error whose message holds a row's value."""

    def __init__(self, root, bad: str, secret: str):
        super().__init__(root)
        self.bad, self.secret, self.opened = bad, secret, 0

    def open(self, path, *, regular_only=False):
        if path == self.bad:
            self.opened += 1
            raise ValueError(f"could not convert {self.secret}")
        return super().open(path, regular_only=regular_only)


def test_a_parse_raising_an_unexpected_error_rejects_only_that_file(tmp_path):
    landing = tmp_path / "landing"
    land(landing, GOOD, gp_text())
    land(landing, POISON, gp_text(3, 500))
    secret = nhs_numbers(500, 1)[0]
    store = FailingParseStore(landing, POISON, secret)
    row = assert_rejected_once(
        tmp_path, f"{POISON}: reading it failed with an unexpected error (ValueError); the file is rejected "
                  f"and the other files go on", landing_store=store)
    assert store.opened == 2 and secret not in row["reason"]  # once a run: no other opening


class FailingWriteWarehouse(Warehouse):
    """A warehouse that fails to write a silver part holding one submission's rows (a disk
    error): its own part, or its chunk's part (GP extracts' rows are one part per chunk)."""

    def __init__(self, store, bad_part: str):
        super().__init__(store)
        self.bad_part = bad_part

    def write(self, table, data, period=None, part="part-00000"):
        if table == "gp_patients" and (part == self.bad_part
                                       or self.bad_part in data.column("submission_id").to_pylist()):
            raise OSError("disk full")
        return super().write(table, data, period, part)


def test_a_take_in_failing_for_one_file_rejects_it_and_takes_the_others(tmp_path):
    landing = tmp_path / "landing"
    land(landing, GOOD, gp_text())
    land(landing, POISON, gp_text(3, 500))
    wh = FailingWriteWarehouse(Store(tmp_path / "warehouse"), "GP_A81002_20240131")
    report, _ = run(tmp_path, warehouse=wh)
    led = ledger(wh)
    assert led[GOOD]["status"] == "current"
    assert led[POISON]["status"] == "rejected"
    assert led[POISON]["reason"] == (f"{POISON}: taking it in failed with an unexpected error (OSError); the file "
                                     f"is rejected and the other files go on")
    patients = wh.read("gp_patients", ["2024-01"]).to_pylist()
    assert {p["submission_id"] for p in patients} == {"GP_A81001_20240131"}
    extracts = wh.read("gp_extracts", ["2024-01"]).to_pylist()
    assert [e["submission_id"] for e in extracts] == ["GP_A81001_20240131"]
    again, _ = run(tmp_path, warehouse=wh)
    assert again.rejected_files == [] and again.files_taken == []


# ----------------------------------------------------------------------------- objections
def test_unrecognised_objections_warn_on_the_extract(tmp_path):
    from pipelines import stages

    landing = tmp_path / "landing"
    rows = nhs_numbers(300, 4)
    land(landing, GOOD, GP_HEADER + "\n" + f"{rows[0]},1970-01-01,1,2000-01-01,\n"
        f"{rows[1]},1970-01-01,1,2000-01-01,9NuO\n{rows[2]},1970-01-01,1,2000-01-01,9Nu0\n"
        f"{rows[3]},1970-01-01,1,2000-01-01,9Nu4\n")
    report, wh = run(tmp_path)
    assert report.type1_objections == 2 and report.rows_read == 2
    md = report.as_metadata()
    assert [(w["file_name"], w["objection_unrecognised"]) for w in md["objection_warnings"]] == [(GOOD, 1)]
    checks = {c["name"]: c for c in stages.ingest_checks({"metadata": md, "source": "gp", "failing_rules": None})}
    check = checks["no_unrecognised_objections"]
    assert not check["passed"] and GOOD in check["description"]
    patients = wh.read("gp_patients", ["2024-01"]).to_pylist()
    assert sorted(p["nhs_number"] for p in patients) == sorted([rows[0], rows[3]])
    assert [p["type2_objection"] for p in patients if p["nhs_number"] == rows[3]] == [True]
    assert wh.read("gp_extracts", ["2024-01"]).to_pylist()[0]["type2_objections"] == 1


def test_hes_and_reference_poison_files_are_rejected_once(tmp_path):
    landing = tmp_path / "landing"
    outside = land(tmp_path / "outside", "epraccur.csv", "A81001," * 26 + "x\n")
    land(landing, "hes_apc/wide.csv", ",".join(f"C{i}" for i in range(3000)) + "\n")
    data = gzip.compress(("PROCODE3,EPIKEY\n" + "RGT,1\n" * 5000).encode())
    land(landing, "hes_apc/cut.csv.gz", data[: len(data) // 2])
    (landing / "hes_apc" / "link.csv").symlink_to(outside)
    (landing / "reference").mkdir()
    (landing / "reference" / "epraccur.csv").symlink_to(outside)
    land(landing, "reference/sites.csv", 'SITE_CODE,PROVIDER_CODE,NAME\nRGT01,RGT,"A ""quoted""\nname"\n')
    store, wh = Store(landing), Warehouse(Store(tmp_path / "warehouse"))
    ref = ingest.load_reference(store, wh, Settings())
    assert ref["files_taken"] == ["reference/sites.csv"] and ref["ref_sites"] == 1
    assert wh.read("ref_sites").column("name").to_pylist() == ['A "quoted"\nname']
    report = ingest.ingest_hes(store, wh, Settings())
    reasons = {r["file_name"]: r["reason"] for r in ref["rejected_files"] + report.rejected_files}
    assert reasons == {
        "reference/epraccur.csv": "reference/epraccur.csv: a symbolic link: only regular files under the landing "
                                  "root are read, so neither it nor what it points to was opened",
        "hes_apc/link.csv": "hes_apc/link.csv: a symbolic link: only regular files under the landing root are "
                            "read, so neither it nor what it points to was opened",
        "hes_apc/wide.csv": "hes_apc/wide.csv: line 1: more than 2,000 columns, the limit (limits.max_columns)",
        "hes_apc/cut.csv.gz": "hes_apc/cut.csv.gz: the gzip data is damaged or truncated",
    }
    parts = outcome_parts(wh)
    assert ingest.load_reference(store, wh, Settings())["rejected_files"] == []
    assert ingest.ingest_hes(store, wh, Settings()).rejected_files == []
    assert outcome_parts(wh) == parts
