"""settings.py: environment + rules file validated once; errors name the variable or file, never a secret."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from gitlab_hook.settings import ConfigError, EnvSettings, load_rules, load_settings
from tests.conftest import RULES, SECRET

SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def rules_file(tmp_path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(RULES))
    return path


def env(rules_file, **extra) -> dict[str, str]:
    return {"GITLAB_HOOK_CONFIG": str(rules_file), "GITLAB_WEBHOOK_SECRET": SECRET, **extra}


# --- good settings ---------------------------------------------------------------------------


def test_defaults_from_the_design(rules_file):
    s = load_settings(env(rules_file))
    e = s.env
    assert str(e.YC_COMPUTE_URL).rstrip("/") == "https://compute.api.cloud.yandex.net"
    assert str(e.YC_OPERATION_URL).rstrip("/") == "https://operation.api.cloud.yandex.net"
    assert str(e.YC_IAM_URL).rstrip("/") == "https://iam.api.cloud.yandex.net"
    assert str(e.YC_METADATA_URL).rstrip("/") == "http://169.254.169.254"
    assert str(e.TELEGRAM_API_URL).rstrip("/") == "https://api.telegram.org"
    assert e.DATA_DIR == Path("./var") and s.data_dir == Path("./var")
    assert e.WEBHOOK_MAX_BODY_BYTES == 10 * 1024 * 1024
    assert e.REDIS_URL is None and e.GITLAB_WEBHOOK_SIGNING_TOKEN is None
    assert s.rules.runners[0].vm == "buildfront"
    assert s.rules_source == str(rules_file)


def test_values_are_parsed(rules_file, tmp_path):
    s = load_settings(env(rules_file, DATA_DIR=str(tmp_path / "d"), TELEGRAM_CHAT_ID="-1001234",
                          TELEGRAM_THREAD_ID="7", WEBHOOK_MAX_BODY_BYTES="2048", GITLAB_URL="https://gitlab.example.com",
                          GITLAB_WEBHOOK_SIGNING_TOKEN=SIGNING, LOG_FORMAT="json", YC_FOLDER_ID="b1gabc123"))
    e = s.env
    assert s.data_dir == tmp_path / "d"
    assert (e.TELEGRAM_CHAT_ID, e.TELEGRAM_THREAD_ID, e.WEBHOOK_MAX_BODY_BYTES) == (-1001234, 7, 2048)
    assert e.GITLAB_WEBHOOK_SIGNING_TOKEN.get_secret_value() == SIGNING
    assert e.LOG_FORMAT == "json"


def test_unrelated_variables_are_ignored(rules_file):
    s = load_settings(env(rules_file, PATH="/usr/bin", HOME="/root", SOMETHING_ELSE="x"))
    assert s.env.GITLAB_WEBHOOK_SECRET.get_secret_value() == SECRET


def test_no_config_file_means_no_rules():
    s = load_settings({"GITLAB_WEBHOOK_SECRET": SECRET})
    assert s.rules.runners == [] and s.rules_source is None


def test_reads_os_environ_when_not_given(monkeypatch, rules_file, tmp_path):
    monkeypatch.setenv("GITLAB_HOOK_CONFIG", str(rules_file))
    monkeypatch.setenv("GITLAB_WEBHOOK_SECRET", "from-os-environ")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "osvar"))
    s = load_settings()
    assert s.env.GITLAB_WEBHOOK_SECRET.get_secret_value() == "from-os-environ"
    assert s.data_dir == tmp_path / "osvar"


def test_secrets_are_not_shown_in_repr(rules_file):
    s = load_settings(env(rules_file, GITLAB_TOKEN="glpat-TOPSECRET", TELEGRAM_BOT_TOKEN="123:TOPSECRET2"))
    text = repr(s.env) + str(s.env)
    assert SECRET not in text and "TOPSECRET" not in text


def test_secret_values_lists_every_secret(rules_file):
    s = load_settings(env(rules_file, GITLAB_WEBHOOK_SIGNING_TOKEN=SIGNING, GITLAB_TOKEN="glpat-abc",
                          YC_IAM_TOKEN="t1.iam", TELEGRAM_BOT_TOKEN="123456:bot-token", KUBE_TOKEN="kube-token",
                          REDIS_URL="redis://:pw@localhost:6379/0", GITLAB_URL="https://gitlab.example.com",
                          YC_FOLDER_ID="b1gfolder"))
    assert sorted(s.secret_values()) == sorted([SECRET, SIGNING, "glpat-abc", "t1.iam", "123456:bot-token",
                                                "kube-token", "redis://:pw@localhost:6379/0"])


def test_secret_values_skips_unset(rules_file):
    assert load_settings(env(rules_file)).secret_values() == [SECRET]
    assert load_settings({}).secret_values() == []


def test_every_secret_field_is_secret():
    # A new token variable must not slip in as plain str (it would be printed and not masked).
    for name, field in EnvSettings.model_fields.items():
        if any(w in name for w in ("TOKEN", "SECRET", "PASSWORD")):
            assert "SecretStr" in str(field.annotation), name


def test_with_env_validates_again(rules_file):
    s = load_settings(env(rules_file))
    s2 = s.with_env(WEBHOOK_MAX_BODY_BYTES=4096)
    assert s2.env.WEBHOOK_MAX_BODY_BYTES == 4096
    assert s.env.WEBHOOK_MAX_BODY_BYTES == 10 * 1024 * 1024
    assert s2.rules is s.rules
    assert s2.env.GITLAB_WEBHOOK_SECRET.get_secret_value() == SECRET
    with pytest.raises(ConfigError, match="WEBHOOK_MAX_BODY_BYTES"):
        s.with_env(WEBHOOK_MAX_BODY_BYTES=10)


# --- environment errors ----------------------------------------------------------------------


@pytest.mark.parametrize("name, value", [
    ("GITLAB_WEBHOOK_SIGNING_TOKEN", "notwhsec-SECRETVALUE"),
    ("GITLAB_WEBHOOK_SIGNING_TOKEN", "SECRETVALUE"),
    ("WEBHOOK_MAX_BODY_BYTES", "lots-SECRETVALUE"),
    ("WEBHOOK_MAX_BODY_BYTES", "12"),
    ("WEBHOOK_SIGNATURE_TOLERANCE", "3600"),
    ("GITLAB_URL", "SECRETVALUE not a url"),
    ("TELEGRAM_API_URL", "ftp//SECRETVALUE"),
    ("KUBE_API_URL", "SECRETVALUE"),
    ("YC_FOLDER_ID", "Folder With SECRETVALUE"),
    ("TELEGRAM_CHAT_ID", "chat-SECRETVALUE"),
    ("TELEGRAM_THREAD_ID", "1.5SECRETVALUE"),
    ("LOG_FORMAT", "SECRETVALUE"),
    ("LOG_LEVEL", "loud-SECRETVALUE"),
    ("WORKER_THREADS", "0"),
])
def test_env_error_names_the_variable_never_the_value(rules_file, name, value):
    with pytest.raises(ConfigError) as exc:
        load_settings(env(rules_file, **{name: value}))
    text = str(exc.value)
    assert name in text
    assert "SECRETVALUE" not in text
    assert value not in text or value.isdigit()
    assert SECRET not in text


def test_env_error_from_os_environ_never_echoes_value(monkeypatch):
    monkeypatch.setenv("GITLAB_WEBHOOK_SIGNING_TOKEN", "notwhsec-SECRETVALUE")
    monkeypatch.delenv("GITLAB_HOOK_CONFIG", raising=False)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "GITLAB_WEBHOOK_SIGNING_TOKEN" in str(exc.value)
    assert "SECRETVALUE" not in str(exc.value)
    assert "whsec_" in str(exc.value)  # says what is expected


def test_all_env_errors_are_listed(rules_file):
    with pytest.raises(ConfigError) as exc:
        load_settings(env(rules_file, LOG_FORMAT="xml", TELEGRAM_CHAT_ID="abc"))
    assert "LOG_FORMAT" in str(exc.value) and "TELEGRAM_CHAT_ID" in str(exc.value)


def test_env_error_is_not_chained_to_the_validation_error(rules_file):
    # A traceback of the chained pydantic error would print the input value.
    with pytest.raises(ConfigError) as exc:
        load_settings(env(rules_file, GITLAB_WEBHOOK_SIGNING_TOKEN="notwhsec-SECRETVALUE"))
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


# --- the rules file as a whole ---------------------------------------------------------------


def test_missing_rules_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        load_settings({"GITLAB_HOOK_CONFIG": str(missing)})
    assert "GITLAB_HOOK_CONFIG" in str(exc.value)
    assert str(missing) in str(exc.value)
    assert "No such file" in str(exc.value)


def test_rules_path_is_a_directory(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_rules(tmp_path)
    assert str(tmp_path) in str(exc.value)


@pytest.mark.parametrize("text", ["runners: [\n", "runners:\n  - vm: a\n   branches: [x]\n", "a: b: c\n",
                                  "key: !!python/object:os.system x\n", "\t- tab\n"])
def test_invalid_yaml(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_rules(path)
    assert str(path) in str(exc.value)
    assert "not valid YAML" in str(exc.value)


@pytest.mark.parametrize("text", ["- runners\n- vms\n", "just a string\n", "42\n"])
def test_non_mapping_top_level(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_rules(path)
    assert str(path) in str(exc.value)
    assert "top level must be a mapping" in str(exc.value)


def test_non_utf8_rules_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("runners: []\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as exc:
        load_rules(path)
    assert str(path) in str(exc.value)
    assert "UTF-8" in str(exc.value)


def test_rules_errors_reach_load_settings(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("runners:\n  - vm: Bad_Name\n    branches: [stage]\n")
    with pytest.raises(ConfigError) as exc:
        load_settings({"GITLAB_HOOK_CONFIG": str(path), "GITLAB_WEBHOOK_SECRET": SECRET})
    assert f"{path}: runners.0.vm:" in str(exc.value)
    assert SECRET not in str(exc.value)


def test_signing_token_is_a_secret_str(rules_file):
    s = load_settings(env(rules_file, GITLAB_WEBHOOK_SIGNING_TOKEN=SIGNING))
    assert isinstance(s.env.GITLAB_WEBHOOK_SIGNING_TOKEN, SecretStr)
    assert SIGNING not in repr(s.env.GITLAB_WEBHOOK_SIGNING_TOKEN)
