

def test_run_summary_lists_warned_findings():
    import io

    from pipelines.config import Settings
    from pipelines.runner import RunSummary, print_summary

    line = "[2014-01] release_candidate.differencing: fft_scores commissioner setting=IP org_code=00A: responses (...)"
    out = io.StringIO()
    summary = RunSummary(periods=["2014-01"], warned_checks=[line])
    print_summary(summary, Settings(landing="l", warehouse="w", publish="p"), out=out)
    assert "Suppressed cells recoverable from published margins (published anyway" in out.getvalue()
    assert f"  {line}\n" in out.getvalue()
    assert summary.ok  # a warning does not fail the run
