"""The data dictionary of the published datasets, rendered from their declarations.

Analysts read it without opening the code: ``public/data_dictionary.md`` and
``public/data_dictionary.html`` beside the datasets. Every dataset (zone, grain,
description, partitioning, schema version) and every column as published (name, Parquet
type, unit, description, disclosure control), then the methods (:func:`method_excerpts`:
outlier status, funnel plots, overdispersion, power, FFT scores, suppression and mode,
linkage ranks) and the disclosure rules in words.

The methods are not written here a second time: they are the passages of
docs/methods-*.md between ``<!-- dictionary: <title> -->`` and ``<!-- /dictionary -->``,
read when the dictionary is rendered, so the page and the dictionary cannot drift apart.

The text depends only on the declarations (no date inside), so writing it again with
unchanged declarations changes nothing in the publish root.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from pipelines.schemas import Column, Dataset

TITLE = "care.data published datasets: data dictionary"

LAYOUT = (
    "Each dataset is a folder `<zone>/<dataset>/` of Parquet files partitioned by period, "
    "`period=YYYY-MM/part-00000.parquet`, with a `_manifest.json` listing every file with "
    "its rows, bytes and SHA-256, the run that wrote it, the time, the code version, the "
    "input submissions and the thresholds used. `period` is in the path, not inside the "
    "files: read the folder and you get it once, as text `YYYY-MM`. Consultant outcomes "
    "cover a window of months; their partition is the window's last month. See "
    "`docs/reading-the-data.md` for pandas, pyarrow, DuckDB, Polars and Spark."
)

ZONES = {
    "public": "aggregate figures with disclosure control applied; safe to release.",
    "restricted": "pseudonymised record-level data for approved analysts. No NHS number, "
                  "postcode, date of birth or name; nothing about anyone with a type 2 "
                  "objection; no GP data of anyone with a type 1 objection.",
}

RULES = [
    "No record-level data and no identifier of a patient, pseudonymised or not, is "
    "published in the public zone.",
    "National figures are never suppressed.",
    "Below national level, a count of patients or of their events (registrations, "
    "objections, episodes, spells, procedures, deaths, readmissions) from 1 to 7 is "
    "published empty, with its `<column>_suppressed` flag set to true. 0 stays 0. An "
    "empty value with the flag false means the figure does not exist (for example a "
    "practice that sent no extract).",
    "Below national level, a rate, percentage or mean computed from fewer than 8 such "
    "records (the column's denominator) is published empty, and so is a percentage whose "
    "numerator count is blanked (it would give the count back).",
    "Counts of organisations and of data-quality rows are not suppressed: they say "
    "nothing about a patient, and operators need them exact.",
    "Friends and Family Test results follow NHS England's rules instead: an organisation "
    "with 1 to 4 responses has its counts and percentages suppressed, and a sibling or "
    "children are suppressed too where one could be found by subtraction; the `suppressed` "
    "column says so.",
    "Consultant outcomes publish, for every consultant, procedures, mortality and "
    "readmission percentages, median length of stay, SMR, funnel limits and outlier "
    "status, exact and overdispersion-adjusted, and the power columns, which depend on the "
    "expected deaths alone (a deliberate exception, as in the Consultant Outcomes Publication); their "
    "death and readmission counts follow the 1-to-7 rule.",
    "Every text value in the public zone is a code of its column's declared format or one "
    "of its listed values (the Format and Values of each column below); supplier text that "
    "does not match never reaches it. A landing file whose name breaks its folder's naming "
    "convention is listed as `<folder>/unrecognised-<first 12 hex digits of its SHA-256>`.",
    "Every value of every published text column is also scanned, after Unicode NFKC "
    "normalisation (digits of any script read as digits), for NHS numbers (10 digits passing "
    "Modulus 11, however spaced, dotted or prefixed), postcodes and dates of birth, inside "
    "longer values too. A dataset (and period) that would break any rule is not written, "
    "the run says which dataset, column, period and submissions (never the value), and "
    "every other dataset and period is still published.",
    "The thresholds (7 and 8 by default) are configuration; the values used are recorded "
    "in each dataset's manifest.",
    "With `disclosure.rounding` `nearest_5` (off by default; the manifest's thresholds say "
    "which), every count a rule may blank, and the FFT counts, are rounded to the nearest 5 "
    "after suppression, national rows too; rates stay computed from the unrounded counts.",
    "Before every publication an audit tries to recover each suppressed value from the "
    "published totals (a parent minus its published children, within and across datasets) "
    "and reports each one it can, by organisation codes (`disclosure.differencing_severity` "
    "`error` withholds the datasets involved instead). FFT may use NHS England's own rule set "
    "(`fft.rule_set` `nhse`).",
]


# The pages whose marked passages are the dictionary's methods, in the order shown.
METHOD_PAGES = ("methods-outcomes.md", "methods-fft.md", "methods-linkage.md")
DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"
_EXCERPT = re.compile(r"^<!-- dictionary: (?P<title>[^>]+?) -->\n(?P<body>.*?)^<!-- /dictionary -->$", re.S | re.M)


def method_excerpts(docs_dir: str | Path | None = None) -> list[tuple[str, str, str]]:
    """(title, Markdown text, page) of every passage of :data:`METHOD_PAGES` marked for the
    dictionary, in page order. Raises ValueError naming the page for a marker left open or
    a title used twice; a page that is not there is left out (an installation without
    docs/: :func:`render_markdown` then says where the methods are)."""
    folder = Path(docs_dir) if docs_dir is not None else DOCS_DIR
    out: list[tuple[str, str, str]] = []
    for page in METHOD_PAGES:
        path = folder / page
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        found = [(m.group("title").strip(), m.group("body").strip("\n")) for m in _EXCERPT.finditer(text)]
        if text.count("<!-- dictionary:") != len(found) or text.count("<!-- /dictionary -->") != len(found):
            raise ValueError(f"docs/{page}: a <!-- dictionary: ... --> marker without its <!-- /dictionary -->")
        out += [(t, b, page) for t, b in found]
    titles = [t for t, _, _ in out]
    dupes = sorted({t for t in titles if titles.count(t) > 1})
    if dupes:
        raise ValueError(f"method passages titled twice: {dupes}")
    return out


_NO_METHODS = ("The methods pages (docs/methods-outcomes.md, docs/methods-fft.md, docs/methods-linkage.md) "
               "were not installed with this copy of the code; read them in the project's repository.")


def _methods_markdown(excerpts) -> list[str]:
    out = ["## Methods", ""]
    if not excerpts:
        return out + [_NO_METHODS, ""]
    out += ["How the published figures are made, as the project's method pages write it "
            "(the page is named under each passage).", ""]
    for title, body, page in excerpts:
        out += [f"### Method: {title}", "", body, "", f"*From docs/{page}.*", ""]
    return out


def _inline_html(text: str) -> str:
    """Markdown inline text as HTML: escaped, `code`, **bold**, *italic*."""
    parts = text.split("`")
    out = []
    for k, part in enumerate(parts):
        if k % 2:
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        t = html.escape(part, quote=False)
        t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
        t = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", t)
        out.append(t)
    return "".join(out)


def markdown_block_html(text: str) -> str:
    """The Markdown of a method passage as HTML: paragraphs, lists (``-`` and ``1.``, items
    continued on indented lines), tables and inline code, bold and italic; nothing else is
    needed by the marked passages."""
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    kind: str | None = None
    table: list[list[str]] = []

    def cells(line: str) -> list[str]:
        return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]

    def flush():
        nonlocal kind
        if para:
            out.append(f"<p>{_inline_html(' '.join(para))}</p>")
            para.clear()
        if items:
            out.append(f"<{kind}>" + "".join(f"<li>{_inline_html(i)}</li>" for i in items) + f"</{kind}>")
            items.clear()
            kind = None
        if table:
            head, *rows = table
            rows = [r for r in rows if not all(re.fullmatch(r":?-+:?", c) for c in r)]
            out.append("<table><tr>" + "".join(f"<th>{_inline_html(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in rows)
                       + "</table>")
            table.clear()

    for line in text.split("\n"):
        bullet = re.match(r"^(?:- |(\d+)\. )(.*)$", line)
        if not line.strip():
            flush()
        elif line.lstrip().startswith("|") and not items:
            if para:
                flush()
            table.append(cells(line))
        elif bullet:
            this = "ol" if bullet.group(1) else "ul"
            if para or table or (kind and kind != this):
                flush()
            kind = this
            items.append(bullet.group(2))
        elif items and line.startswith(" "):
            items[-1] += " " + line.strip()
        else:
            if items or table:
                flush()
            para.append(line.strip())
    flush()
    return "\n".join(out)


def _published(datasets: Iterable[Dataset] | None) -> list[Dataset]:
    if datasets is None:
        from pipelines import schemas

        datasets = [d for d in schemas.datasets() if d.zone in ("public", "restricted")]
    return sorted(datasets, key=lambda d: ({"public": 0, "restricted": 1}.get(d.zone, 2), d.name))


def type_name(t: pa.DataType) -> str:
    """A reader-friendly type name, with the Arrow/Parquet one."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text (string)"
    if pa.types.is_int64(t) or pa.types.is_integer(t):
        return f"integer ({t})"
    if pa.types.is_floating(t):
        return f"decimal number ({t})"
    if pa.types.is_boolean(t):
        return "true/false (bool)"
    if pa.types.is_date(t):
        return f"date ({t})"
    if pa.types.is_timestamp(t):
        return f"timestamp ({t})"
    if pa.types.is_list(t):
        return f"list of {type_name(t.value_type)}"
    return str(t)


def _columns(ds: Dataset) -> list[Column]:
    return ds.published_columns() if ds.zone == "public" else list(ds.columns)


def _disclosure(ds: Dataset, c: Column) -> str:
    if ds.zone != "public":
        return ""
    if c.suppress == "count":
        return f"suppressible count: 1 to 7 blanked below national level (see `{c.name}_suppressed`)"
    if c.suppress == "rate":
        text = f"suppressible rate: blanked below national level when `{c.denominator}` is under 8"
        if c.numerator:
            text += f" or `{c.numerator}` is blanked"
        return text
    if c.name.endswith("_suppressed") and c.type == pa.bool_():
        return "disclosure-control flag"
    if c.name == "suppressed":
        return "FFT suppression flag (NHS England's rules)"
    if c.name in _FFT_SUPPRESSED and any(x.name == "suppressed" for x in ds.columns):
        return "FFT: empty where `suppressed` is true (NHS England's rules)"
    return "not suppressed"


# What NHS England's FFT rules blank on a suppressed row (pipelines.fft; checked by
# pipelines.disclosure.check_public).
_FFT_SUPPRESSED = ("responses", "extremely_likely", "likely", "neither", "unlikely", "extremely_unlikely",
                   "dont_know", "pct_recommend", "pct_not_recommend", "pct_positive", "pct_negative",
                   "net_score")


def _partitioning(ds: Dataset) -> str:
    if ds.partition_by is None:
        return "not partitioned"
    return f"by `{ds.partition_by}` in the path: `{ds.partition_by}=YYYY-MM/part-00000.parquet`"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(datasets: Iterable[Dataset] | None = None, *, docs_dir: str | Path | None = None) -> str:
    """The dictionary as Markdown (default: every public and restricted dataset), with the
    methods of the pages in ``docs_dir`` (default: the project's docs/)."""
    items = _published(datasets)
    out = [f"# {TITLE}", "", LAYOUT, "", "## Zones", ""]
    for zone, text in ZONES.items():
        out.append(f"- `{zone}/`: {text}")
    out += ["", "## Datasets", ""]
    out += ["| dataset | zone | one row per | description |", "|---|---|---|---|"]
    for ds in items:
        out.append(f"| [`{ds.name}`](#{ds.name}) | {ds.zone} | {_md_cell(ds.grain)} | {_md_cell(ds.description)} |")
    out.append("")
    for ds in items:
        out += [
            f"### {ds.name}",
            "",
            ds.description,
            "",
            f"- **Zone:** {ds.zone}",
            f"- **One row per:** {ds.grain}",
            f"- **Partitioning:** {_partitioning(ds)}",
            f"- **Folder:** `{ds.zone}/{ds.name}/`",
            f"- **Schema version:** {ds.schema_version}",
            *(["- **Key (rows compared by, in `revisions`):** "
               + ", ".join(f"`{k}`" for k in ds.key)] if ds.key else []),
            "",
            "| column | type | unit | description | disclosure control |",
            "|---|---|---|---|---|",
        ]
        for c in _columns(ds):
            desc = c.description
            if c.codes:
                desc += " Values: " + ", ".join(f"`{v}`" for v in c.codes) + "."
            if c.format is not None:
                desc += (" Or f" if c.codes else " F") + f"ormat: {c.format.description}."
            if not c.nullable:
                desc += " Never empty."
            out.append(
                f"| `{c.name}` | {type_name(c.type)} | {c.unit or ''} | {_md_cell(desc)} | "
                f"{_md_cell(_disclosure(ds, c))} |"
            )
        out.append("")
    out += _methods_markdown(method_excerpts(docs_dir))
    out += ["## Disclosure control", ""]
    out += [f"- {r}" for r in RULES]
    out.append("")
    return "\n".join(out)


def render_html(datasets: Iterable[Dataset] | None = None, *, docs_dir: str | Path | None = None) -> str:
    """The same dictionary as one self-contained HTML page."""
    e = html.escape
    items = _published(datasets)

    def code(text: str) -> str:
        # `x` -> <code>x</code>, everything escaped
        parts = text.split("`")
        return "".join(e(p) if i % 2 == 0 else f"<code>{e(p)}</code>" for i, p in enumerate(parts))

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(TITLE)}</title>",
        "<style>body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em;line-height:1.4}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .5em;"
        "vertical-align:top;text-align:left}th{background:#eee}code{background:#f4f4f4}</style>",
        "</head><body>",
        f"<h1>{e(TITLE)}</h1>",
        f"<p>{code(LAYOUT)}</p>",
        "<h2>Zones</h2><ul>",
    ]
    out += [f"<li><code>{e(z)}/</code>: {code(t)}</li>" for z, t in ZONES.items()]
    out += ["</ul>", "<h2>Datasets</h2>",
            "<table><tr><th>dataset</th><th>zone</th><th>one row per</th><th>description</th></tr>"]
    for ds in items:
        out.append(f'<tr><td><a href="#{e(ds.name)}"><code>{e(ds.name)}</code></a></td>'
                   f"<td>{e(ds.zone)}</td><td>{e(ds.grain)}</td><td>{e(ds.description)}</td></tr>")
    out.append("</table>")
    for ds in items:
        out += [
            f'<h3 id="{e(ds.name)}">{e(ds.name)}</h3>',
            f"<p>{e(ds.description)}</p>",
            "<ul>",
            f"<li><b>Zone:</b> {e(ds.zone)}</li>",
            f"<li><b>One row per:</b> {e(ds.grain)}</li>",
            f"<li><b>Partitioning:</b> {code(_partitioning(ds))}</li>",
            f"<li><b>Folder:</b> <code>{e(ds.zone)}/{e(ds.name)}/</code></li>",
            f"<li><b>Schema version:</b> {e(ds.schema_version)}</li>",
            *(["<li><b>Key (rows compared by, in <code>revisions</code>):</b> "
               + ", ".join(f"<code>{e(k)}</code>" for k in ds.key) + "</li>"] if ds.key else []),
            "</ul>",
            "<table><tr><th>column</th><th>type</th><th>unit</th><th>description</th>"
            "<th>disclosure control</th></tr>",
        ]
        for c in _columns(ds):
            desc = e(c.description)
            if c.codes:
                desc += " Values: " + ", ".join(f"<code>{e(v)}</code>" for v in c.codes) + "."
            if c.format is not None:
                desc += (" Or f" if c.codes else " F") + f"ormat: {e(c.format.description)}."
            if not c.nullable:
                desc += " Never empty."
            out.append(
                f"<tr><td><code>{e(c.name)}</code></td><td>{e(type_name(c.type))}</td>"
                f"<td>{e(c.unit or '')}</td><td>{desc}</td><td>{code(_disclosure(ds, c))}</td></tr>"
            )
        out.append("</table>")
    excerpts = method_excerpts(docs_dir)
    out.append("<h2>Methods</h2>")
    if not excerpts:
        out.append(f"<p>{e(_NO_METHODS)}</p>")
    else:
        out.append("<p>How the published figures are made, as the project's method pages write it "
                   "(the page is named under each passage).</p>")
    for title, body, page in excerpts:
        out += [f"<h3>Method: {e(title)}</h3>", markdown_block_html(body), f"<p><i>From docs/{e(page)}.</i></p>"]
    out += ["<h2>Disclosure control</h2>", "<ul>"]
    out += [f"<li>{code(r)}</li>" for r in RULES]
    out += ["</ul>", "</body></html>", ""]
    return "\n".join(out)


def write_dictionary(store, datasets: Iterable[Dataset] | None = None, **kw) -> dict[str, bool]:
    """Publish ``public/data_dictionary.md`` and ``.html`` (atomically, recorded in the
    public zone's manifest). Returns, per file, whether it changed."""
    from pipelines.publish import publish_file

    items = _published(datasets)
    return {
        "data_dictionary.md": publish_file(store, "public", "data_dictionary.md",
                                           render_markdown(items).encode(), **kw),
        "data_dictionary.html": publish_file(store, "public", "data_dictionary.html",
                                             render_html(items).encode(), **kw),
    }
