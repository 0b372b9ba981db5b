"""The data dictionary covers every published dataset and column, and is published."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

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


# --------------------------------------------------------------------------- methods (issue #24 item 7)
def _methods(md: str) -> str:
    assert "## Methods" in md
    return md.split("## Methods", 1)[1].split("## Disclosure control", 1)[0]


def test_dictionary_ships_the_methods():
    """The dictionary is self-contained: alert and alarm defined, the funnel plots
    described, overdispersion, power, FFT scoring and suppression, the mode breakdown and
    the linkage ranks, in both the Markdown and the HTML."""
    from pipelines.dictionary import method_excerpts

    titles = [t for t, _, _ in method_excerpts()]
    assert titles == ["Funnel limits and outlier status: alert and alarm", "Funnel plots",
                      "Overdispersion-adjusted limits", "Power: who could be flagged at all", "FFT scores",
                      "FFT suppression", "FFT mode of collection", "Record linkage: match ranks"]
    md = _methods(render_markdown())
    for words in (
        # alert and alarm
        "SMR above the 99.8% upper limit `alarm_high`, else above the 95% upper `alert_high`",
        "below the 99.8% lower `alarm_low`, else below the 95% lower `alert_low`", "`insufficient_data`",
        # the funnel plots, and power in their hover text
        "Funnel plots (`funnel.funnel_plot`): SMR against E", "hovering over a consultant's point",
        # overdispersion
        "DerSimonian-Laird", "`overdispersion_tau2`", "`od_status`",
        # power
        "`power_smr_2` = P(Poisson(2E) > k)", "`min_detectable_smr`",
        # FFT scores, suppression, mode
        "| `pct_recommend` | 100 × (c1 + c2) / T |", "**Rule 1.** Any row below national with 1 to 4 responses",
        "**Rule 3.**", "`NOT_KNOWN`",
        # linkage ranks
        "| 5 | the episode has no valid NHS number", "1 DOB + sex + postcode, 2 DOB + sex",
    ):
        assert words in md, words
    page = render_html()
    methods = page.split("<h2>Methods</h2>", 1)[1].split("<h2>Disclosure control</h2>", 1)[0]
    for title in titles:
        assert f"<h3>Method: {title}</h3>" in methods
    for words in ("<code>alarm_high</code>, else above the 95% upper <code>alert_high</code>",
                  "<td><code>pct_recommend</code></td><td>100 × (c1 + c2) / T</td>",
                  "<b>Rule 1.</b>", "<code>power_smr_2</code>", "DerSimonian-Laird",
                  "<td>5</td><td>the episode has no valid NHS number"):
        assert words in methods, words
    # well-formed with the methods in: test_markdown_escapes_pipes_and_html_is_well_formed


def _page_with(tmp_path, text):
    from pipelines.dictionary import METHOD_PAGES

    for page in METHOD_PAGES:
        (tmp_path / page).write_text("# page\n\nnothing marked\n")
    (tmp_path / METHOD_PAGES[0]).write_text(text)
    return tmp_path


def test_methods_are_read_from_the_pages_not_copied(tmp_path):
    """The passages come from docs/methods-*.md when the dictionary is rendered: change the
    page and the dictionary changes; a marker left open is an error naming the page; without
    the pages the dictionary says where the methods are."""
    from pipelines import dictionary

    docs = _page_with(tmp_path, "# x\n\n<!-- dictionary: Alarms -->\n\nAn `alarm_high` is **new** text.\n\n"
                                "- one\n- two\n  continued\n\n<!-- /dictionary -->\n\nnot this\n")
    md = render_markdown(docs_dir=docs)
    assert "### Method: Alarms\n\nAn `alarm_high` is **new** text." in md and "not this" not in md
    assert "*From docs/methods-outcomes.md.*" in md
    page = render_html(docs_dir=docs)
    assert "<p>An <code>alarm_high</code> is <b>new</b> text.</p>" in page
    assert "<ul><li>one</li><li>two continued</li></ul>" in page
    # every passage of the real pages is in the dictionary word for word
    for title, body, _ in dictionary.method_excerpts():
        assert f"### Method: {title}\n\n{body}\n" in render_markdown()
    (tmp_path / "bad").mkdir()
    bad = _page_with(tmp_path / "bad", "<!-- dictionary: Open -->\ntext\n")
    with pytest.raises(ValueError, match=r"docs/methods-outcomes.md: a <!-- dictionary"):
        render_markdown(docs_dir=bad)
    empty = tmp_path / "none"
    empty.mkdir()
    assert "were not installed with this copy of the code" in render_markdown(docs_dir=empty)


def test_every_public_column_is_documented_in_words():
    md = render_markdown()
    page = render_html()
    for ds in (d for d in PUBLISHED if d.zone == "public"):
        body = section(md, ds.name)
        for c in ds.published_columns():
            assert len(c.description.strip()) >= 8, f"{ds.name}.{c.name}: no description"
            assert c.description.replace("|", "\\|") in _row(body, c.name), (ds.name, c.name)
            assert f"<code>{c.name}</code></td>" in page, (ds.name, c.name)
    assert "fft_mode" in {d.name for d in PUBLISHED}
