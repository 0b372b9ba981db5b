"""Operator webhook (pipelines/notify.py) against a local HTTP receiver."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from pipelines.notify import notify, payload


@pytest.fixture
def receiver():
    received: list[dict] = []
    status = {"code": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"json": json.loads(body), "type": self.headers["Content-Type"]})
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received, status
    server.shutdown()
    server.server_close()


EVENT = {
    "event": "submission_held", "period": "2024-03", "source": "sus_apc", "submitter_code": "RXX",
    "held": True, "held_reason": "60 of 100 rows rejected", "dq_score": 82.0,
    "pct_valid_nhs_number": 99.0, "below_sanction_threshold": True,
}


def test_webhook_received(receiver):
    url, received, _ = receiver
    assert notify(url, EVENT) is True
    assert len(received) == 1
    body = received[0]["json"]
    assert received[0]["type"] == "application/json"
    assert "RXX" in body["text"] and "held" in body["text"] and "60 of 100 rows rejected" in body["text"]
    for k, v in EVENT.items():
        assert body[k] == v


def test_identifiers_never_sent(receiver):
    url, received, _ = receiver
    event = {**EVENT, "nhs_number": "9990000018", "postcode": "LS1 4AP", "dob": "1970-01-01",
             "details": {"NEWNHSNO": "9990000018", "rows_failed": 3}}
    assert notify(url, event)
    text = json.dumps(received[0]["json"])
    for secret in ("9990000018", "LS1 4AP", "1970-01-01"):
        assert secret not in text
    assert received[0]["json"]["details"] == {"rows_failed": 3}


def test_caller_text_kept_and_below_threshold_text():
    assert payload({**EVENT, "text": "hello"})["text"] == "hello"
    text = payload({"period": "2024-03", "source": "gp", "submitter_code": "A81001", "held": False,
                    "below_sanction_threshold": True, "dq_score": 90.0})["text"]
    assert "A81001" in text and "below the sanction threshold" in text and "90.0" in text


def test_failures_logged_not_raised(receiver, caplog):
    url, received, status = receiver
    status["code"] = 500
    assert notify(url, EVENT) is False
    assert notify("http://127.0.0.1:9/nothing-listens", EVENT) is False
    assert notify(None, EVENT) is False
    assert notify("not a url", EVENT) is False
    assert any("webhook" in r.getMessage() for r in caplog.records)
