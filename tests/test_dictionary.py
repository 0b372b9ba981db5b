"""The data dictionary covers every published dataset and column, and is published."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

from pipelines import schemas
from pipelines.dictionary import render_html, render_markdown, write_dictionary
from pipelines.publish import verify_publication
from pipelines.schemas import Dataset, cols, f, i, s
from pipelines.storage import Store

PUBLISHED = [d for d in schemas.datasets() if d.zone in ("public", "restricted")]


def section(md: str, name: str) -> str:
    m = re.search(rf"^### {re.escape(name)}\n(.*?)(?=^### |^## |\Z)", md, re.S | re.M)
    assert m, f"no section for {name}"
    return m.group(1)


def test_every_published_dataset_and_column_is_in_the_markdown():
    md = render_markdown()
    assert {d.name for d in PUBLISHED} >= {"linkage_coverage_practice", "consultant_outcomes", "linked_episodes"}
    for ds in PUBLISHED:
        body = section(md, ds.name)
        assert ds.description in body
        assert f"**Zone:** {ds.zone}" in body
        assert f"**One row per:** {ds.grain}" in body
        assert "**Partitioning:**" in body and "period=YYYY-MM" in body
        cols_in = ds.published_columns() if ds.zone == "public" else ds.columns
        for c in cols_in:
            row = next((ln for ln in body.splitlines() if ln.startswith(f"| `{c.name}` |")), None)
            assert row is not None, f"{ds.name}.{c.name} missing"
            assert c.description.replace("|", "\\|") in row
            if c.unit:
                assert f"| {c.unit} |" in row


def test_units_types_and_suppression_are_stated():
    body = section(render_markdown(), "linkage_coverage_practice")
    row = next(ln for ln in body.splitlines() if ln.startswith("| `pct_linked` |"))
    assert "decimal number (double)" in row and "| percent |" in row
    assert "episodes_expected" in row and "under 8" in row
    row = next(ln for ln in body.splitlines() if ln.startswith("| `episodes_linked` |"))
    assert "1 to 7" in row and "integer (int64)" in row
    row = next(ln for ln in body.splitlines() if ln.startswith("| `extract_date` |"))
    assert "date (date32[day])" in row
    row = next(ln for ln in body.splitlines() if ln.startswith("| `episodes_linked_suppressed` |"))
    assert "disclosure-control flag" in row


def test_disclosure_rules_in_words():
    md = render_markdown()
    rules = md.split("## Disclosure control", 1)[1]
    for words in ("National figures are never suppressed", "from 1 to 7", "fewer than 8",
                  "0 stays 0", "1 to 4 responses", "Consultant outcomes"):
        assert words in rules


def test_markdown_escapes_pipes_and_html_is_well_formed():
    odd = Dataset("odd_one", "public", "a | b", "Has <b>tags</b> & pipes |.", cols(
        s("period", "Month."), i("n", "A <count> | of things.", suppress="count"),
        f("r", "Rate & more.", unit="percent", suppress="rate", denominator="n")))
    md = render_markdown([odd])
    row = next(ln for ln in md.splitlines() if ln.startswith("| `n` |"))
    assert "A <count> \\| of things." in row
    assert len(re.findall(r"(?<!\\)\|", row)) == 6  # five cells, the escaped pipe kept inside
    page = render_html([odd])
    assert "<b>tags</b>" not in page and "&lt;b&gt;tags&lt;/b&gt;" in page

    class Check(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack = []

        def handle_starttag(self, tag, attrs):
            if tag not in ("meta", "br"):
                self.stack.append(tag)

        def handle_endtag(self, tag):
            assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
            self.stack.pop()

    for html_text in (page, render_html()):
        p = Check()
        p.feed(html_text)
        assert p.stack == []


def test_html_has_every_dataset_and_column():
    page = render_html()
    for ds in PUBLISHED:
        assert f'id="{ds.name}"' in page
        for c in (ds.published_columns() if ds.zone == "public" else ds.columns):
            assert f"<code>{c.name}</code>" in page


def test_write_dictionary_publishes_both_files_once(tmp_path):
    store = Store(tmp_path)
    assert write_dictionary(store) == {"data_dictionary.md": True, "data_dictionary.html": True}
    assert store.read_bytes("public/data_dictionary.md").decode() == render_markdown()
    assert "<!DOCTYPE html>" in store.read_bytes("public/data_dictionary.html").decode()
    manifest = json.loads(store.read_bytes("public/_manifest.json"))
    assert set(manifest["files"]) == {"data_dictionary.md", "data_dictionary.html"}
    assert verify_publication(store, "public") == []
    before = manifest
    assert write_dictionary(store) == {"data_dictionary.md": False, "data_dictionary.html": False}
    assert json.loads(store.read_bytes("public/_manifest.json")) == before


def _row(body: str, column: str) -> str:
    return next(ln for ln in body.splitlines() if ln.startswith(f"| `{column}` |"))


def test_fft_2020_columns_and_their_suppression_are_documented():
    md = render_markdown()
    for name in ("fft_scores", "fft_by_specialty"):
        body = section(md, name)
        for col in ("pct_positive", "pct_negative", "pct_recommend", "responses"):
            row = _row(body, col)
            assert "empty where `suppressed` is true" in row, (name, col)
            assert "not suppressed" not in row, (name, col)
        q = _row(body, "question")
        assert "recommend" in q and "experience" in q and "2020-04" in q
        assert "very good" in _row(body, "extremely_likely")


def test_below_sanction_threshold_text_matches_the_rule_for_fft():
    """The rule (pipelines.quality): the NHS number rate sanctions gp, sus_apc and hes_apc
    only; an FFT submitter at 18% valid NHS numbers with a good score is not below."""
    row = _row(section(render_markdown(), "data_quality_summary"), "below_sanction_threshold")
    assert "gp, sus_apc and hes_apc" in row and "fft" in row
    from expectations.rules import NHS_NUMBER_SANCTIONED
    assert set(NHS_NUMBER_SANCTIONED) == {"gp", "sus_apc", "hes_apc"}


def test_linkage_quality_categories_are_documented():
    body = section(render_markdown(), "linkage_quality")
    cat = _row(body, "category")
    for words in ("0-17", "85+", "elective", "emergency", "unlinked", "valid", "invalid", "missing", "unknown"):
        assert words in cat
    assert "1 to 7" in _row(body, "episodes")
    assert "under 8" in _row(body, "pct_linked")
