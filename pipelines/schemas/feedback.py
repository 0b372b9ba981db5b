"""The feedback packs (pipelines/feedback.py): what a submitter is sent about its
submissions of a month. Zone ``feedback``: written under ``<publish root>/feedback/
<source>/<submitter_code>/<period>/``, for the submitter and the data team, never in the
public or restricted zones.

Every string column is a code of a declared format or text the pipeline writes itself
(rule messages, fixes, ledger reasons as the public ledger words them): a pack never holds a
value of a row, only line numbers, rule ids and counts (checked before a pack is written:
:func:`pipelines.feedback.build_pack`).
"""

from __future__ import annotations

from pipelines.schemas import (
    F_FIELD,
    F_PERIOD,
    F_PROSE,
    F_RULE_ID,
    F_SHA256,
    Dataset,
    Format,
    cols,
    i,
    register,
    s,
)
from pipelines.schemas.outputs import F_FILE_NAME, F_SUBMITTER, SOURCES

STATUSES = ("current", "superseded", "held", "rejected")
EFFECTS = ("row_quarantined", "row_warned", "file_held", "file_rejected")
SEVERITIES = ("reject", "warn", "file")
# Line numbers as the pack writes them: ranges and single lines, ascending, ", " between.
F_LINES = Format("line_numbers", r"[0-9]{1,12}(?: to [0-9]{1,12})?(?:, [0-9]{1,12}(?: to [0-9]{1,12})?)*",
                 "line numbers of the file (1 = header, first data row 2): single lines and ranges "
                 "<first> to <last>, ascending, separated by ', ' (no hyphen: a spreadsheet reads 2-4 as a date)")

_KEY = (
    s("source", "gp, sus_apc, hes_apc or fft.", nullable=False, codes=SOURCES),
    s("submitter_code", "The practice or provider the pack is for.", nullable=False, format=F_SUBMITTER),
    s("period", "Reporting month, YYYY-MM.", nullable=False, format=F_PERIOD),
    s("file", "The file, named as the public submissions ledger names it (a name that breaks the naming "
              "convention as <folder>/unrecognised-<12 hex of its SHA-256>).", nullable=False, format=F_FILE_NAME),
    s("file_sha256", "SHA-256 of the file's bytes: which version of the file this is about.", nullable=False,
      format=F_SHA256),
    s("status", "What became of the file: current, superseded, held or rejected.", nullable=False, codes=STATUSES),
)

feedback = register(Dataset(
    name="feedback", zone="feedback", partition_by=None,
    grain="file, rule broken (and one row for a file held or rejected whole)",
    description="A submitter's feedback for a month: every rule its files broke, the field, the line numbers, "
                "the count, the effect and how to fix it. Line numbers and rule ids only, never a value.",
    key=("file", "file_sha256", "rule_id"),
    columns=cols(
        *_KEY,
        s("rule_id", "The rule broken (docs/data-quality.md); FILE_HELD or FILE_REJECTED for the file as a "
                     "whole.", nullable=False, format=F_RULE_ID),
        s("field", "The field (column) the rule reads; empty for a file held or rejected whole.", format=F_FIELD),
        s("severity", "reject (the row is not used), warn (the row is used, the failure counted) or file.",
          nullable=False, codes=SEVERITIES),
        s("effect", "row_quarantined, row_warned, file_held (no row of it is used until it is replaced or "
                    "released) or file_rejected (not read: send it again).", nullable=False, codes=EFFECTS),
        i("rows_checked", "Rows the rule was applied to (empty for a file row)."),
        i("rows_failed", "Rows that broke the rule (empty for a file row)."),
        s("line_numbers", "The lines that broke the rule, as ranges (12 to 15) and single lines, up to the first "
                          "1,000 line numbers (lines_note says when there are more).", format=F_LINES),
        i("lines_listed", "How many line numbers line_numbers holds.", nullable=False),
        s("lines_note", "Whether every failing line is listed, or the first 1,000 of how many.", format=F_PROSE),
        s("message", "What is wrong, in plain words (the rule's message; for a file, the ledger's reason).",
          format=F_PROSE),
        s("how_to_fix", "What to do about it (from the rule's declaration in expectations/).", format=F_PROSE),
    ),
))

feedback_files = register(Dataset(
    name="feedback_files", zone="feedback", partition_by=None,
    grain="file of the submitter's month",
    description="The submitter's files of the month in the pack: status, rows received, quarantined and kept, "
                "and the reason when the file is not current.",
    key=("file", "file_sha256"),
    columns=cols(
        *_KEY,
        i("rows_received", "Rows read (for a HES extract: the rows of this provider and month); empty when "
                           "rejected."),
        i("rows_quarantined", "Rows quarantined (not used)."),
        i("rows_kept", "Rows kept."),
        s("reason", "Why the file is held, rejected or superseded, in plain words; empty when current.",
          format=F_PROSE),
    ),
))
