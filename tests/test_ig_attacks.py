"""Information governance under a hostile or careless supplier, end to end.

The header-case attack: every GP extract of a generated landing zone arrives with its
header spelling `Objection` instead of `OBJECTION`. Before header matching ignored case,
the column was taken for an extra one, nobody's objection was read, and every type 1
objector's GP row was stored, linked and published. Here the whole pipeline runs as
`caredata run` in a process of its own (Dagster home on disk), and every byte it wrote
(warehouse, publish root, Dagster home, its console output) is searched for every type 1
objector's NHS number.

So that the search can be total, the objectors' hospital episodes and FFT responses are
taken out of the landing zone first (type 1 is about GP data: their SUS rows may lawfully
carry their number); what is left that could hold their number is their GP rows only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.synth import generate

from helpers import found_in, read_landing, run_cli_process, write_landing, written_texts

SEPARATORS = str.maketrans("", "", " -\t")


def _drop_rows_of(path: Path, numbers: set[str]) -> int:
    """Remove every data line with a field that is one of ``numbers`` (any spacing)."""
    text = read_landing(path)
    if text is None:
        return 0
    lines = text.split("\n")
    delim = "|" if lines[0].count("|") > lines[0].count(",") else ","
    kept = [lines[0]] + [ln for ln in lines[1:]
                         if not any(f.strip('"').translate(SEPARATORS) in numbers for f in ln.split(delim))]
    write_landing(path, "\n".join(kept))
    return len(lines) - len(kept)


@pytest.fixture(scope="module")
def header_case_attack(tmp_path_factory):
    root = tmp_path_factory.mktemp("ig")
    landing, truth = root / "landing", root / "truth"
    generate(landing, seed=7, scale=0.002, months=1, start="2014-01", truth_dir=truth, progress=False)
    objectors = pd.read_parquet(truth / "objectors.parquet")
    type1 = set(objectors.loc[objectors.objection_type == 1, "nhs_number"])
    assert type1
    renamed = 0
    for p in sorted((landing / "gp").iterdir()):
        text = read_landing(p)
        if text is None:
            continue
        head, sep, rest = text.partition("\n")
        if "OBJECTION" in head:
            write_landing(p, head.replace("OBJECTION", "Objection") + sep + rest)
            renamed += 1
    assert renamed >= 5
    dropped = sum(_drop_rows_of(p, type1) for folder in ("sus_apc", "fft")
                  for p in sorted((landing / folder).iterdir()))
    proc = run_cli_process(root, landing)
    return {"root": root, "proc": proc, "type1": type1, "objectors": objectors, "dropped": dropped}


@pytest.mark.e2e
def test_header_case_attack_runs_and_counts_objections(header_case_attack):
    a = header_case_attack
    assert a["proc"].returncode == 0, a["proc"].stdout[-3000:] + a["proc"].stderr[-3000:]
    coverage = pd.read_parquet(a["root"] / "pub" / "public" / "linkage_coverage_practice")
    # The objections were read: the practices' type 1 counts are not all 0 (they were, when
    # `Objection` was taken for an extra column).
    counted = coverage["type1_objections"].fillna(0).sum() + 7 * coverage["type1_objections_suppressed"].sum()
    assert counted > 0
    assert (coverage["type1_objections"].fillna(0) > 0).any() or coverage["type1_objections_suppressed"].any()


@pytest.mark.e2e
def test_no_type1_number_in_any_byte_the_pipeline_wrote(header_case_attack):
    a = header_case_attack
    assert a["proc"].returncode == 0
    type1 = a["type1"]
    needles = type1 | {f"{n[:3]} {n[3:6]} {n[6:]}" for n in type1}
    haystacks = [("stdout", a["proc"].stdout), ("stderr", a["proc"].stderr)]
    for base in ("wh", "pub", "dagster_home"):
        haystacks += list(written_texts(a["root"] / base))
    found = sorted(name for name, text in haystacks if found_in(text, needles))
    assert found == []
    # The search finds what it looks for: other patients' GP numbers are in the warehouse.
    others = set(pd.concat([pd.read_csv(p, dtype=str, usecols=[0]).iloc[:, 0]
                            for p in (a["root"] / "landing" / "gp").glob("*.csv")]).dropna()) - type1
    silver = "\n".join(text for name, text in haystacks if "gp_patients" in name and name.endswith("(values)"))
    assert silver and found_in(silver, list(others)[:50])


@pytest.mark.e2e
def test_no_type2_patient_in_the_restricted_zone_after_the_attack(header_case_attack):
    from pipelines.config import DEMO_PSEUDO_KEY
    from pipelines.pseudo import person_id

    a = header_case_attack
    objectors = a["objectors"]
    type2_ids = {person_id(DEMO_PSEUDO_KEY, n) for n in objectors.loc[objectors.objection_type == 2, "nhs_number"]}
    assert type2_ids
    for name in ("linked_episodes", "linked_spells"):
        t = pd.read_parquet(a["root"] / "pub" / "restricted" / name)
        assert len(t) > 0
        assert not set(t["person_id"].dropna()) & type2_ids, name


def test_a_file_named_after_a_patient_is_never_named_in_logs_or_the_run_summary(tmp_path, caplog):
    """A misfiled file named with a patient's name, NHS number, postcode and date of birth:
    rejected for its name; logs and the printed summary show it as the public ledger does
    (by its digest), and only the warehouse ledger (for operators) keeps the name."""
    import logging

    from pipelines import ingest, stages
    from pipelines.config import Settings
    from pipelines.nhs_number import with_check_digit

    nhs = with_check_digit("999058711")
    name = f"gp/Jane Doe {nhs} LS1 4AP 1970-01-01.csv"
    landing = tmp_path / "landing"
    (landing / "gp").mkdir(parents=True)
    (landing / name).write_text("NHS_NUMBER,DATE_OF_BIRTH\n")
    settings = Settings(landing=str(landing), warehouse=str(tmp_path / "wh"), publish=str(tmp_path / "pub"))
    caplog.set_level(logging.DEBUG)
    stages.ingest_feed(settings, "gp", "2024-01")
    summary = stages.held_back_summary(settings)
    ledger = ingest.read_ledger(stages.stores(settings)[1]).to_pylist()
    assert [r["file_name"] for r in ledger] == [name]  # operators still have it
    printed = json.dumps(summary) + caplog.text
    assert "unrecognised-" in printed
    for needle in (nhs, "Jane", "LS1 4AP", "1970-01-01"):
        assert needle not in printed, needle


def test_links_in_the_landing_zone_leave_the_public_ledger_publishable(tmp_path):
    """A link is rejected and never opened (its ledger digest is a not-opened marker): the
    public ledger still passes disclosure control and is published, and it shows neither
    the target's digest nor a name that breaks the convention."""
    import hashlib

    from pipelines import disclosure, ingest, schemas, stages
    from pipelines.config import Settings

    secret = tmp_path / "outside" / "secret.csv"
    secret.parent.mkdir()
    secret.write_text("NHS_NUMBER,DATE_OF_BIRTH\n")
    landing = tmp_path / "landing"
    (landing / "gp").mkdir(parents=True)
    (landing / "gp" / "GP_A81001_20240131.csv").symlink_to(secret)
    (landing / "gp" / "Jane Doe.csv").symlink_to(secret)
    settings = Settings(landing=str(landing), warehouse=str(tmp_path / "wh"), publish=str(tmp_path / "pub"))
    stages.ingest_feed(settings, "gp", "2024-01")
    wh = stages.stores(settings)[1]
    table = ingest.submissions_dataset(wh)
    rows = sorted(table.to_pylist(), key=lambda r: r["file_name"])
    assert [(r["file_name"], r["status"], r["sha256"]) for r in rows] == [
        ("gp/GP_A81001_20240131.csv", "rejected", "not-opened-symbolic-link"),
        ("gp/unrecognised-not-opened", "rejected", "not-opened-symbolic-link")]
    assert disclosure.check_public(schemas.get("submissions"), table, settings) == []
    report = stages.publish_submissions(settings)
    assert report["published"] and report["rows_published"] == 2
    target_digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    published = "\n".join(text for _, text in written_texts(tmp_path / "pub"))  # Parquet by its values
    assert "not-opened-symbolic-link" in published  # the search finds what is there
    assert target_digest not in published and "Jane" not in published
