"""Operator alerts: a JSON POST to a webhook (Slack, Microsoft Teams or anything that takes
JSON) when a submission is held or a submitter is below the sanction threshold.

The body has a ``text`` field (what Slack incoming webhooks and Teams connectors show)
plus the event's structured fields. Alerts carry organisation codes, periods, counts and
scores only: any field that could identify a patient is dropped before sending, and a
failure to deliver is logged, never raised (an alert must not stop a run).
"""

from __future__ import annotations

import json
import logging
import math

import requests

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10
# Never sent, whatever the caller puts in the event.
FORBIDDEN = {
    "nhs_number", "newnhsno", "nhs_numbers", "postcode", "homeadd", "dob", "date_of_birth",
    "mydob", "person_id", "pseudo_hesid", "raw", "row", "record", "name", "address",
}


def _clean(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if str(k).lower() not in FORBIDDEN}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _text(event: dict) -> str:
    if event.get("text"):
        return str(event["text"])
    parts = [f"care.data {event.get('period', '')}".strip() + ":"]
    who = f"{event.get('source', '')} submitter {event.get('submitter_code', '?')}".strip()
    if event.get("held"):
        parts.append(f"{who} is held")
        if event.get("held_reason"):
            parts.append(f"({event['held_reason']})")
    elif event.get("below_sanction_threshold", True):
        parts.append(f"{who} is below the sanction threshold")
    if event.get("dq_score") is not None:
        parts.append(f"; DQ score {float(event['dq_score']):.1f}")
    if event.get("pct_valid_nhs_number") is not None:
        parts.append(f"; valid NHS numbers {float(event['pct_valid_nhs_number']):.1f}%")
    return " ".join(parts)


def payload(event: dict) -> dict:
    """The JSON body: ``text`` plus the event's fields, identifiers removed."""
    body = _clean(dict(event))
    body["text"] = _text(body)
    return body


def notify(webhook_url: str | None, event: dict) -> bool:
    """POST ``event`` as JSON to ``webhook_url``. True when the receiver answered 2xx."""
    if not webhook_url:
        return False
    try:
        body = json.dumps(payload(event))
        resp = requests.post(webhook_url, data=body, timeout=TIMEOUT_SECONDS,
                             headers={"Content-Type": "application/json"})
    except Exception as exc:  # noqa: BLE001 - an alert never stops the run
        log.warning("webhook alert not delivered: %s", type(exc).__name__)
        return False
    if 200 <= resp.status_code < 300:
        return True
    log.warning("webhook alert refused: HTTP %s", resp.status_code)
    return False
