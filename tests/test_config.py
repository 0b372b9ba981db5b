import pytest

from pipelines.config import DEMO_PSEUDO_KEY, ConfigError, Settings


def test_defaults_hold_every_threshold_of_methods():
    s = Settings.load(env={})
    assert s.t("linkage", "practice_linked_pct") == 90.0
    assert s.t("linkage", "nhs_number_standard_pct") == 99.0
    assert s.t("outcomes", "window_months") == 36
    assert s.t("outcomes", "min_procedures") == 10
    assert s.t("fft", "suppress_max_responses") == 4
    assert s.t("disclosure", "small_count_max") == 7
    assert s.t("data_quality", "sanction_score") == 95.0
    assert [t["due_date"] for t in s.thresholds["targets"]] == ["2013-09-30", "2014-08-31", "2015-03-31", None, "2015-01-31"]


def test_yaml_then_environment_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("landing: /from/yaml\nfft:\n  link_max_days: 3\n")
    s = Settings.load(cfg, env={"CAREDATA_FFT__LINK_MAX_DAYS": "5", "CAREDATA_WAREHOUSE": "s3://b/wh"})
    assert s.landing == "/from/yaml"
    assert s.warehouse == "s3://b/wh"
    assert s.t("fft", "link_max_days") == 5
    assert s.t("fft", "suppress_max_responses") == 4  # untouched


def test_unknown_threshold_is_an_error():
    with pytest.raises(ConfigError, match="no threshold fft.nope"):
        Settings.load(env={"CAREDATA_FFT__NOPE": "1"})


def test_key_never_from_yaml_and_never_in_repr(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pseudo_key: abc\n")
    with pytest.raises(ConfigError, match="CAREDATA_PSEUDO_KEY"):
        Settings.load(cfg, env={})
    s = Settings.load(env={"CAREDATA_PSEUDO_KEY": "sekrit-value"})
    assert "sekrit-value" not in repr(s) and "sekrit-value" not in s.key_label
    assert s.effective_pseudo_key == "sekrit-value"


def test_key_file_and_demo_mode(tmp_path):
    keyfile = tmp_path / "k"
    keyfile.write_text("from-file\n")
    assert Settings.load(env={"CAREDATA_PSEUDO_KEY_FILE": str(keyfile)}).effective_pseudo_key == "from-file"
    assert Settings.load(env={}).effective_pseudo_key is None
    demo = Settings.load(env={"CAREDATA_DEMO_MODE": "1"})
    assert demo.effective_pseudo_key == DEMO_PSEUDO_KEY and demo.key_label.startswith("demo:")
