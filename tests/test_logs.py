"""logs.py: every known secret (and secret-shaped string) masked, in text and in JSON lines."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gitlab_hook.logs import MASK, SecretMasker, setup_logging

SECRET = "hook-secret-4f9a2b"
TOKEN = "glpat-Zx81kq0PLm2vB7nR"
TG_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"  # the shape of a bot token (not a real one)


pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def capture():
    """A logger whose output passes through a SecretMasker into a string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(SecretMasker([SECRET, TOKEN]))
    log = logging.getLogger("test_logs.capture")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield log, stream
    log.removeHandler(handler)
    log.propagate = True


def test_secret_in_args_is_masked(capture):
    log, out = capture
    log.info("token is %s and %s", SECRET, TOKEN)
    text = out.getvalue()
    assert SECRET not in text and TOKEN not in text
    assert f"token is {MASK} and {MASK}" in text


def test_secret_in_message_is_masked(capture):
    log, out = capture
    log.warning(f"calling https://gitlab.example.com/api?private_token={TOKEN}&x=1")
    assert TOKEN not in out.getvalue()
    assert f"private_token={MASK}&x=1" in out.getvalue()


def test_secret_inside_structured_args_is_masked(capture):
    log, out = capture
    log.info("headers: %r", {"X-Gitlab-Token": SECRET, "n": 1})
    assert SECRET not in out.getvalue()
    assert "'n': 1" in out.getvalue()


def test_message_without_secret_is_unchanged(capture):
    log, out = capture
    log.info("queued %d actions for %s", 3, "buildfront")
    assert out.getvalue() == "INFO queued 3 actions for buildfront\n"


def test_secret_in_exception_traceback_is_masked(capture):
    log, out = capture
    try:
        raise RuntimeError(f"401 from GitLab with token {TOKEN}")
    except RuntimeError:
        log.exception("call failed for %s", SECRET)
    text = out.getvalue()
    assert TOKEN not in text and SECRET not in text
    assert "Traceback (most recent call last)" in text
    assert f"RuntimeError: 401 from GitLab with token {MASK}" in text


def test_longest_secret_masked_whole():
    m = SecretMasker(["abcd1234", "abcd"])
    assert m.mask("x abcd1234 y abcd z") == f"x {MASK} y {MASK} z"


def test_tiny_and_empty_secrets_are_not_masked_everywhere():
    m = SecretMasker(["", "a", "ab"])
    assert m.mask("a banana, abba") == "a banana, abba"


@pytest.mark.parametrize("text", [
    f"token {TG_TOKEN} leaked",
    f"POST https://api.telegram.org/bot{TG_TOKEN}/sendMessage failed",
    f"url=https://api.telegram.org/bot{TG_TOKEN}/getMe",
    f"token={TG_TOKEN}",
    f"https://api.telegram.org/file/bot{TG_TOKEN}/documents/file_1.txt",
])
def test_telegram_token_shapes_are_masked(text):
    masked = SecretMasker([]).mask(text)
    assert "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw" not in masked
    assert MASK in masked


def test_telegram_token_ending_in_dash_is_masked_whole():
    token = "987654321:" + "A" * 33 + "-_"
    masked = SecretMasker([]).mask(f"bot{token}/getMe")
    assert "AAAA" not in masked and "-_" not in masked
    assert masked.endswith("/getMe")


@pytest.mark.parametrize("text", ["at 12:30:45 ok", "ratio 1234567:89", "job 1977 failed: script_failure",
                                  "sha da1560886d4f094c3e6c9ef40349f7d38b5d27d7"])
def test_ordinary_text_is_left_alone(text):
    assert SecretMasker([]).mask(text) == text


@pytest.mark.parametrize("text, kept", [
    ("Authorization: Bearer eyJhbGciOiJQUzI1NiIsImtpZCI6ImFqZSJ9.eyJpc3MiOiJ4In0.sig", "Authorization: Bearer "),
    ("authorization: bearer t1.9euelZqVkZGSnJCNj5yXkJSSkZ3Jk-_fAAAAAA", "authorization: bearer "),
    ("PRIVATE-TOKEN: glpat-abcdefghijklmnop", "PRIVATE-TOKEN: "),
    ('{"private-token": "glpat-abcdefghijklmnop"}', '{"private-token": "'),
])
def test_bearer_and_private_tokens_are_masked(text, kept):
    masked = SecretMasker([]).mask(text)
    assert masked.startswith(kept + MASK)
    assert "eyJ" not in masked and "9euelZ" not in masked and "abcdefghijklmnop" not in masked


def test_short_bearer_word_is_not_masked():
    assert SecretMasker([]).mask("use a Bearer token") == "use a Bearer token"


# --- setup_logging ---------------------------------------------------------------------------


def test_text_format_masks(capsys):
    stream = io.StringIO()
    masker = setup_logging("INFO", "text", secrets=[SECRET], stream=stream)
    logging.getLogger("gitlab_hook.x").info("secret %s", SECRET)
    logging.getLogger("gitlab_hook.x").debug("not shown at INFO")
    text = stream.getvalue()
    assert SECRET not in text and f"secret {MASK}" in text
    assert "INFO" in text and "gitlab_hook.x" in text
    assert "not shown" not in text
    assert masker.mask(SECRET) == MASK


def test_json_format_emits_valid_json_lines():
    stream = io.StringIO()
    setup_logging("DEBUG", "json", secrets=[SECRET, TOKEN], stream=stream)
    log = logging.getLogger("gitlab_hook.json")
    log.info("plain line")
    log.warning("secret %s in \"quotes\"\nand a newline", SECRET)
    try:
        raise ValueError(f"bad token {TOKEN}")
    except ValueError:
        log.exception("failed with %s", SECRET)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["level"] for r in records] == ["INFO", "WARNING", "ERROR"]
    assert all(r["logger"] == "gitlab_hook.json" for r in records)
    assert records[0]["message"] == "plain line"
    assert records[1]["message"] == f"secret {MASK} in \"quotes\"\nand a newline"
    assert records[2]["message"] == f"failed with {MASK}"
    assert "ValueError: bad token" in records[2]["exc_info"]
    raw = stream.getvalue()
    assert SECRET not in raw and TOKEN not in raw


def test_setup_replaces_previous_handlers():
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", "text", stream=first)
    setup_logging("INFO", "text", stream=second)
    logging.getLogger("gitlab_hook.y").info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def test_noisy_libraries_are_quieted():
    setup_logging("DEBUG", "text", stream=io.StringIO())
    assert logging.getLogger("urllib3").level == logging.WARNING
    assert logging.getLogger("httpx").level == logging.WARNING
