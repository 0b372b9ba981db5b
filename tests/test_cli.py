"""The `caredata` command: exit status non-zero only when the run itself failed."""

from __future__ import annotations

import contextlib
import io

from pipelines import cli


def _run(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(args))
    return rc, out.getvalue(), err.getvalue()


def test_bad_submissions_are_held_back_not_a_failure(tmp_path):
    landing = tmp_path / "landing"
    (landing / "sus_apc").mkdir(parents=True)
    (landing / "sus_apc" / "apc_rxx_2014.csv").write_text("PROCODE3,SUSRECID\nRXX,1\n")
    rc, out, _ = _run("run", "--landing", str(landing), "--warehouse", str(tmp_path / "wh"),
                      "--publish", str(tmp_path / "pub"))
    assert rc == 0, out
    assert "rejected sus_apc/apc_rxx_2014.csv: file name does not follow" in out
    assert "restricted zone: no pseudonymisation key configured" in out


def test_a_failed_run_exits_non_zero(tmp_path):
    landing = tmp_path / "landing"
    (landing / "reference").mkdir(parents=True)
    (landing / "reference" / "providers.csv").write_text("PROVIDER_CODE,NAME,COMMISSIONER_CODE\nRXX,A,00K\n")
    blocker = tmp_path / "wh"
    blocker.write_text("a file where the warehouse folder should be")
    rc, out, _ = _run("run", "--landing", str(landing), "--warehouse", str(blocker), "--publish", str(tmp_path / "pub"))
    assert rc == 1
    assert "The run failed" in out and "NotADirectoryError" in out


def test_configuration_errors_are_reported(tmp_path):
    rc, _, err = _run("run", "--landing", "x", "--warehouse", "y", "--publish", "z",
                      "--config", str(tmp_path / "missing.yaml"))
    assert rc == 2 and "configuration error" in err
