import hashlib
import hmac

import pytest

from pipelines.config import DEMO_PSEUDO_KEY, ConfigError, Settings

KEY = "k" * 31 + "-a-key-of-40-bytes-----"  # 54 bytes: long enough
SHORT = "x" * 31  # 31 bytes: one short


def test_defaults_hold_every_threshold_of_methods():
    s = Settings.load(env={})
    assert s.t("linkage", "practice_linked_pct") == 90.0
    assert s.t("linkage", "nhs_number_standard_pct") == 99.0
    assert s.t("outcomes", "window_months") == 36
    assert s.t("outcomes", "min_procedures") == 10
    assert s.t("fft", "suppress_max_responses") == 4
    assert s.t("disclosure", "small_count_max") == 7
    assert s.t("disclosure", "min_denominator") == 8
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
    with pytest.raises(ConfigError, match="no threshold section 'fftt'"):
        Settings.load(env={"CAREDATA_FFTT__LINK_MAX_DAYS": "1"})


# ------------------------------------------------------------------------ keys (outputs.md "Keys")
def test_key_never_from_yaml_and_never_in_repr(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pseudo_key: abc\n")
    with pytest.raises(ConfigError, match="CAREDATA_PSEUDO_KEY"):
        Settings.load(cfg, env={})
    s = Settings.load(env={"CAREDATA_PSEUDO_KEY": KEY})
    assert KEY not in repr(s) and KEY not in s.key_label
    assert s.effective_pseudo_key == KEY


@pytest.mark.parametrize("key", ["§", SHORT, "  " + SHORT + "\n", "é" * 15])  # 'é' * 15 is 30 bytes
def test_a_key_under_32_bytes_is_a_configuration_error_that_never_shows_it(key, tmp_path):
    with pytest.raises(ConfigError, match="shorter than 32 bytes") as err:
        Settings.load(env={"CAREDATA_PSEUDO_KEY": key})
    assert key.strip() not in str(err.value)
    keyfile = tmp_path / "k"
    keyfile.write_text(key)
    with pytest.raises(ConfigError, match="shorter than 32 bytes") as err:
        Settings.load(env={"CAREDATA_PSEUDO_KEY_FILE": str(keyfile)})
    assert key.strip() not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        Settings(pseudo_key=key)


def test_a_key_of_32_bytes_is_accepted_after_stripping_whitespace():
    key = "a" * 32
    assert Settings.load(env={"CAREDATA_PSEUDO_KEY": f"  {key}\n"}).effective_pseudo_key == key
    assert Settings.load(env={"CAREDATA_PSEUDO_KEY": "é" * 16}).effective_pseudo_key == "é" * 16  # 32 bytes


@pytest.mark.parametrize("blank", [" ", "\t\n", ""])
def test_whitespace_only_counts_as_no_key(blank, tmp_path):
    assert Settings.load(env={"CAREDATA_PSEUDO_KEY": blank}).effective_pseudo_key is None
    keyfile = tmp_path / "k"
    keyfile.write_text(blank)
    s = Settings.load(env={"CAREDATA_PSEUDO_KEY_FILE": str(keyfile)})
    assert s.effective_pseudo_key is None and s.key_label == "none"
    assert Settings(pseudo_key=blank).effective_pseudo_key is None


def test_key_file_that_cannot_be_read_is_one_clear_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match=r"CAREDATA_PSEUDO_KEY_FILE: the file it names cannot be read \(No such file"):
        Settings.load(env={"CAREDATA_PSEUDO_KEY_FILE": str(tmp_path / "missing.key")})
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings.load(env={"CAREDATA_PSEUDO_KEY_FILE": str(tmp_path)})  # a folder
    binary = tmp_path / "bin.key"
    binary.write_bytes(b"\xff\xfe" * 20)
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        Settings.load(env={"CAREDATA_PSEUDO_KEY_FILE": str(binary)})


def test_a_key_given_where_its_file_is_expected_is_never_echoed():
    key = "3f9a" * 16  # the key itself, set by mistake in CAREDATA_PSEUDO_KEY_FILE
    with pytest.raises(ConfigError) as err:
        Settings.load(env={"CAREDATA_PSEUDO_KEY_FILE": key})
    assert "cannot be read" in str(err.value) and key not in str(err.value) and "3f9a3f9a" not in str(err.value)


def test_the_public_demo_key_is_refused_as_a_real_key(tmp_path):
    from pipelines.config import DEMO_PSEUDO_KEY

    with pytest.raises(ConfigError, match="public demo key"):
        Settings.load(env={"CAREDATA_PSEUDO_KEY": DEMO_PSEUDO_KEY})
    keyfile = tmp_path / "k"
    keyfile.write_text(DEMO_PSEUDO_KEY + "\n")
    with pytest.raises(ConfigError, match="public demo key"):
        Settings.load(env={"CAREDATA_PSEUDO_KEY_FILE": str(keyfile)})
    # demo mode still uses it, labelled demo
    assert Settings.load(env={"CAREDATA_DEMO_MODE": "1"}).key_label.startswith("demo:")


def test_key_file_and_both_sources(tmp_path):
    keyfile = tmp_path / "k"
    keyfile.write_text(KEY + "\n")
    assert Settings.load(env={"CAREDATA_PSEUDO_KEY_FILE": str(keyfile)}).effective_pseudo_key == KEY
    # a blank variable beside a file is no key: the file's key is used
    assert Settings.load(env={"CAREDATA_PSEUDO_KEY": " ", "CAREDATA_PSEUDO_KEY_FILE": str(keyfile)}
                         ).effective_pseudo_key == KEY
    with pytest.raises(ConfigError, match="both set"):
        Settings.load(env={"CAREDATA_PSEUDO_KEY": "b" * 40, "CAREDATA_PSEUDO_KEY_FILE": str(keyfile)})


def test_demo_mode_uses_the_demo_key_which_is_long_enough():
    assert len(DEMO_PSEUDO_KEY.encode()) >= 32
    assert Settings.load(env={}).effective_pseudo_key is None
    demo = Settings.load(env={"CAREDATA_DEMO_MODE": "1"})
    assert demo.effective_pseudo_key == DEMO_PSEUDO_KEY and demo.key_label.startswith("demo:")
    assert Settings.load(env={"CAREDATA_DEMO_MODE": "0"}).demo_mode is False
    with pytest.raises(ConfigError, match="CAREDATA_DEMO_MODE"):
        Settings.load(env={"CAREDATA_DEMO_MODE": "maybe"})
    # a configured key wins over demo mode, and is labelled as configured
    both = Settings.load(env={"CAREDATA_DEMO_MODE": "1", "CAREDATA_PSEUDO_KEY": KEY})
    assert both.effective_pseudo_key == KEY and both.key_label.startswith("configured:")


def test_key_label_is_an_hmac_of_a_fixed_label_never_a_plain_hash():
    label = Settings.load(env={"CAREDATA_PSEUDO_KEY": KEY}).key_label
    want = hmac.new(KEY.encode(), b"caredata key label v1", hashlib.sha256).hexdigest()[:16]
    assert label == f"configured:{want}"
    digest = label.split(":", 1)[1]
    for plain in (hashlib.sha256(KEY.encode()).hexdigest(), hashlib.sha1(KEY.encode()).hexdigest(),
                  hashlib.md5(KEY.encode()).hexdigest()):
        assert not plain.startswith(digest[:8])
    other = Settings.load(env={"CAREDATA_PSEUDO_KEY": KEY + "2"}).key_label
    assert other != label  # two keys are told apart


# ------------------------------------------------------------------------ disclosure floors
@pytest.mark.parametrize("env_name, floor", [
    ("CAREDATA_DISCLOSURE__SMALL_COUNT_MAX", 7),
    ("CAREDATA_DISCLOSURE__MIN_DENOMINATOR", 8),
    ("CAREDATA_FFT__SUPPRESS_MAX_RESPONSES", 4),
])
def test_disclosure_thresholds_are_floors(env_name, floor, tmp_path):
    for weaker in (0, floor - 1, -3):
        with pytest.raises(ConfigError, match=f"floor is {floor}") as err:
            Settings.load(env={env_name: str(weaker)})
        assert env_name in str(err.value)
    section, name = env_name[len("CAREDATA_"):].lower().split("__")
    assert Settings.load(env={env_name: str(floor + 3)}).t(section, name) == floor + 3  # stricter: fine
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"{section}:\n  {name}: {floor - 1}\n")
    with pytest.raises(ConfigError, match=f"{section}.{name} \\(in .*c.yaml\\).*floor is {floor}"):
        Settings.load(cfg, env={})


def test_thresholds_given_directly_to_load_are_checked_too():
    s = Settings.load(env={})
    weak = {**s.thresholds, "disclosure": {"small_count_max": 2, "min_denominator": 8}}
    with pytest.raises(ConfigError, match="small_count_max.*floor is 7"):
        Settings.load(env={}, thresholds=weak)


# ------------------------------------------------------------------------ strict checking
def test_a_misspelt_yaml_key_is_an_error_not_the_default(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("fft:\n  link_max_dayz: 3\nlandng: /x\n")
    with pytest.raises(ConfigError) as err:
        Settings.load(cfg, env={})
    msg = str(err.value)
    assert "2 problems" in msg
    assert "fft.link_max_dayz" in msg and "unknown key" in msg and "link_max_days" in msg  # names the known ones
    assert "landng" in msg
    assert "\n" not in msg


def test_wrong_types_are_all_listed_with_their_key_path(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "disclosure:\n  small_count_max: seven\n"
        "linkage:\n  practice_linked_pct: [90]\n"
        "outcomes:\n  limits: [0.95]\n  window_months: 36.5\n  cohorts_file: 3\n"
        "targets:\n  extract_75: 75\n"
        "demo_mode: 'yes'\n")
    with pytest.raises(ConfigError) as err:
        Settings.load(cfg, env={"CAREDATA_LINKAGE__NHS_NUMBER_STANDARD_PCT": "abc"})
    msg = str(err.value)
    for expected in (
        "disclosure.small_count_max (in", "expected a whole number, got text",
        "linkage.practice_linked_pct (in", "expected a number, got a list",
        "outcomes.limits (in", "expected a list of 2 values",
        "outcomes.window_months (in",
        "outcomes.cohorts_file (in", "expected text or null",
        "targets (in", "expected a list, got a mapping",
        "demo_mode (in", "expected true or false",
        "linkage.nhs_number_standard_pct (CAREDATA_LINKAGE__NHS_NUMBER_STANDARD_PCT): expected a number, got text",
    ):
        assert expected in msg, (expected, msg)
    assert msg.startswith("8 problems:")


def test_targets_are_checked_item_by_item(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "targets:\n"
        "  - {id: a, measure: m, metric: pct_practices_linked, target_pct: 50.0, due_date: null}\n"
        "  - {id: b, measure: m, metric: pct_practices_linked, target_pct: high, due_date: '2015-13-01'}\n"
        "  - {id: c, metric: pct_practices_linked, target_pct: 5, due: 2015-01-01}\n"
        "  - just text\n")
    with pytest.raises(ConfigError) as err:
        Settings.load(cfg, env={})
    msg = str(err.value)
    assert "targets[1].target_pct (in" in msg and "targets[1].due_date (in" in msg
    assert "targets[2].measure (in" in msg and "missing" in msg
    assert "targets[2].due (in" in msg and "unknown key" in msg
    assert "targets[3] (in" in msg and "expected a mapping" in msg
    assert "targets[0]" not in msg
    ok = tmp_path / "ok.yaml"
    ok.write_text("targets:\n  - {id: a, measure: m, metric: pct_practices_linked, target_pct: 50, due_date: 2015-01-01}\n"
                  "  - {id: b, measure: m, metric: pct_practices_linked, target_pct: 60.0}\n")
    assert [t["id"] for t in Settings.load(ok, env={}).thresholds["targets"]] == ["a", "b"]


def test_null_defaults_take_text_or_null():
    s = Settings.load(env={"CAREDATA_DATA_QUALITY__WEBHOOK_URL": "https://chat.example/hook",
                           "CAREDATA_OUTCOMES__COHORTS_FILE": "/etc/caredata/cohorts.csv"})
    assert s.t("data_quality", "webhook_url") == "https://chat.example/hook"
    with pytest.raises(ConfigError, match="webhook_url.*expected text or null, got a number"):
        Settings.load(env={"CAREDATA_DATA_QUALITY__WEBHOOK_URL": "12"})


def test_a_broken_yaml_file_is_one_line_naming_the_place(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("fft:\n  link_max_days: [3\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+") as err:
        Settings.load(cfg, env={})
    assert "\n" not in str(err.value)
    cfg.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping of settings"):
        Settings.load(cfg, env={})


def test_new_sections_of_the_defaults_are_checked_the_same_way(monkeypatch):
    """The checking follows defaults.yaml's structure: a section added there needs no code."""
    import pipelines.config as config

    real = config._defaults

    def with_limits():
        d = real()
        d["limits"] = {"max_columns": 500, "max_field_bytes": 131072, "max_gzip_ratio": 200.0}
        return d

    monkeypatch.setattr(config, "_defaults", with_limits)
    assert Settings.load(env={"CAREDATA_LIMITS__MAX_COLUMNS": "900"}).t("limits", "max_columns") == 900
    with pytest.raises(ConfigError, match="limits.max_gzip_ratio.*expected a number"):
        Settings.load(env={"CAREDATA_LIMITS__MAX_GZIP_RATIO": "lots"})
    with pytest.raises(ConfigError, match="no threshold limits.max_rows"):
        Settings.load(env={"CAREDATA_LIMITS__MAX_ROWS": "1"})


def test_overdispersion_method_is_one_of_its_words():
    assert Settings.load(env={}).t("outcomes", "overdispersion") == "shmi"
    assert Settings.load(env={"CAREDATA_OUTCOMES__OVERDISPERSION": "cqc"}).t("outcomes", "overdispersion") == "cqc"
    assert Settings.load(env={"CAREDATA_OUTCOMES__OVERDISPERSION": "none"}).t("outcomes", "overdispersion") == "none"
    with pytest.raises(ConfigError, match=r"outcomes.overdispersion \(CAREDATA_OUTCOMES__OVERDISPERSION\): "
                                          r"expected one of shmi, cqc, none"):
        Settings.load(env={"CAREDATA_OUTCOMES__OVERDISPERSION": "bayes"})
    with pytest.raises(ConfigError, match="expected text"):
        Settings.load(env={"CAREDATA_OUTCOMES__OVERDISPERSION": "1"})


def test_overdispersion_method_from_yaml_is_checked(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("outcomes:\n  overdispersion: SHMI\n")   # the words are lower case
    with pytest.raises(ConfigError, match="outcomes.overdispersion .*expected one of shmi, cqc, none"):
        Settings.load(cfg, env={})
    cfg.write_text("outcomes:\n  overdispersion: cqc\n")
    assert Settings.load(cfg, env={}).t("outcomes", "overdispersion") == "cqc"
