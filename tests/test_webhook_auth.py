"""webhook_auth.py: the X-Gitlab-Token secret, or a Standard Webhooks signature; either is enough."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from standardwebhooks.webhooks import Webhook

from gitlab_hook.webhook_auth import AuthError, verify_delivery
from tests.conftest import SECRET, push_payload

SIGNING_KEY = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_KEY = "whsec_" + base64.b64encode(b"another key, not ours, 32 bytes!").decode()
BODY = json.dumps(push_payload()).encode()


def signed_headers(body: bytes = BODY, key: str = SIGNING_KEY, at: datetime | None = None,
                   msg_id: str = "msg_2b2d5b3c") -> dict[str, str]:
    at = at or datetime.now(timezone.utc)
    sig = Webhook(key).sign(msg_id, at, body.decode("utf-8", "surrogateescape"))
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": sig}


def verify(headers, body=BODY, **kw):
    kw.setdefault("secret", SECRET)
    return verify_delivery(headers, body, **kw)


# --- token ----------------------------------------------------------------------------------


def test_token_ok():
    assert verify({"X-Gitlab-Token": SECRET}) == "token"


def test_header_name_is_case_insensitive():
    assert verify({"x-gitlab-token": SECRET}) == "token"


@pytest.mark.parametrize("token", [SECRET[:-1] + "x", SECRET.upper(), " " + SECRET, SECRET + " "])
def test_wrong_token(token):
    with pytest.raises(AuthError, match="wrong X-Gitlab-Token"):
        verify({"X-Gitlab-Token": token})


@pytest.mark.parametrize("token", [SECRET[:-1], SECRET + "4", SECRET * 2, "x", SECRET[:1]])
def test_different_length_token_fails(token):
    with pytest.raises(AuthError):
        verify({"X-Gitlab-Token": token})


def test_empty_token_fails():
    with pytest.raises(AuthError):
        verify({"X-Gitlab-Token": ""})


def test_missing_token():
    with pytest.raises(AuthError, match="missing X-Gitlab-Token"):
        verify({"X-Gitlab-Event": "Push Hook"})


def test_no_secret_configured_refuses_everything():
    for headers in ({}, {"X-Gitlab-Token": ""}, {"X-Gitlab-Token": "anything"}):
        with pytest.raises(AuthError):
            verify(headers, secret=None)


@pytest.mark.parametrize("token", ["t\u00e9st-\udcff", "\ud800", "\u0441\u0435\u043a\u0440\u0435\u0442", "\x00"])
def test_odd_tokens_are_refused_without_crash(token):
    with pytest.raises(AuthError):
        verify({"X-Gitlab-Token": token})


def test_secret_with_undecodable_bytes_does_not_crash():
    # os.environ turns bytes that are not UTF-8 into lone surrogates.
    secret = "abc\udcff"
    with pytest.raises(AuthError):
        verify({"X-Gitlab-Token": "abc"}, secret=secret)
    # What a WSGI server hands over for the raw bytes b"abc\xff":
    assert verify({"X-Gitlab-Token": "abc\xff"}, secret=secret) == "token"


NON_ASCII_SECRET = "\u0441\u0435\u043a\u0440\u0435\u0442-caf\u00e9-42"


def test_non_ascii_secret_as_a_wsgi_server_delivers_it():
    # GitLab sends UTF-8 bytes; PEP 3333 servers decode header bytes as latin-1.
    over_wsgi = NON_ASCII_SECRET.encode("utf-8").decode("latin-1")
    assert verify({"X-Gitlab-Token": over_wsgi}, secret=NON_ASCII_SECRET) == "token"


def test_non_ascii_secret_as_text():
    assert verify({"X-Gitlab-Token": NON_ASCII_SECRET}, secret=NON_ASCII_SECRET) == "token"
    with pytest.raises(AuthError):
        verify({"X-Gitlab-Token": NON_ASCII_SECRET[:-1]}, secret=NON_ASCII_SECRET)


def test_error_text_never_contains_the_secret():
    for headers in ({"X-Gitlab-Token": SECRET[:-1]}, {}, {"X-Gitlab-Token": "x", "webhook-signature": "v1,abc"}):
        with pytest.raises(AuthError) as exc:
            verify(headers, signing_token=SIGNING_KEY)
        assert SECRET not in str(exc.value)
        assert SIGNING_KEY not in str(exc.value)
        assert SIGNING_KEY[6:] not in str(exc.value)


# --- Standard Webhooks signature ------------------------------------------------------------


def test_valid_signature_passes():
    assert verify(signed_headers(), signing_token=SIGNING_KEY) == "signature"


def test_valid_signature_with_capitalised_headers():
    h = {k.title(): v for k, v in signed_headers().items()}
    assert verify(h, signing_token=SIGNING_KEY) == "signature"


def test_signature_among_several_passes():
    h = signed_headers()
    h["webhook-signature"] = "v1,AAAA " + h["webhook-signature"]
    assert verify(h, signing_token=SIGNING_KEY) == "signature"


def test_signature_ignored_when_no_signing_token_configured():
    with pytest.raises(AuthError):
        verify(signed_headers(), signing_token=None)


def test_signature_with_other_key_fails():
    with pytest.raises(AuthError, match="no valid webhook-signature"):
        verify(signed_headers(key=OTHER_KEY), signing_token=SIGNING_KEY)


def test_tampered_body_fails():
    h = signed_headers()
    tampered = BODY.replace(b"refs/heads/stage", b"refs/heads/stagf")
    assert tampered != BODY
    with pytest.raises(AuthError):
        verify(h, tampered, signing_token=SIGNING_KEY)


def test_changed_id_fails():
    h = signed_headers()
    h["webhook-id"] = "msg_other"
    with pytest.raises(AuthError):
        verify(h, signing_token=SIGNING_KEY)


def test_changed_timestamp_fails():
    h = signed_headers()
    h["webhook-timestamp"] = str(int(h["webhook-timestamp"]) - 1)
    with pytest.raises(AuthError):
        verify(h, signing_token=SIGNING_KEY)


def test_expired_timestamp_fails():
    old = datetime.now(timezone.utc) - timedelta(minutes=10)
    with pytest.raises(AuthError):
        verify(signed_headers(at=old), signing_token=SIGNING_KEY)


def test_future_timestamp_fails():
    future = datetime.now(timezone.utc) + timedelta(minutes=10)
    with pytest.raises(AuthError):
        verify(signed_headers(at=future), signing_token=SIGNING_KEY)


def test_our_tolerance_is_applied_before_the_librarys():
    # Signed 2 minutes ago: inside the library's fixed 5 minutes, outside our 60 s window.
    at = datetime.now(timezone.utc) - timedelta(minutes=2)
    h = signed_headers(at=at)
    assert verify(h, signing_token=SIGNING_KEY, tolerance=300) == "signature"
    with pytest.raises(AuthError):
        verify(h, signing_token=SIGNING_KEY, tolerance=60)


def test_now_parameter_is_the_clock_for_the_window():
    h = signed_headers()
    with pytest.raises(AuthError):
        verify(h, signing_token=SIGNING_KEY, now=time.time() + 3600)


@pytest.mark.parametrize("sig", ["garbage", "v1,not-base64!!", "v1,", ",", "v1", "", "v2," + "A" * 44,
                                 "v1,AAAA,BBBB", "v1,\u00ff\u00fe", "v1," + "=" * 10])
def test_malformed_signature_fails_cleanly(sig):
    h = signed_headers()
    h["webhook-signature"] = sig
    with pytest.raises(AuthError):
        verify(h, signing_token=SIGNING_KEY)


@pytest.mark.parametrize("ts", ["", "soon", "nan", "inf", "-inf", "1e400", "0x10", "12 34"])
def test_malformed_timestamp_fails_cleanly(ts):
    h = signed_headers()
    h["webhook-timestamp"] = ts
    with pytest.raises(AuthError):
        verify(h, signing_token=SIGNING_KEY)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_signature_header_fails(missing):
    h = signed_headers()
    del h[missing]
    with pytest.raises(AuthError):
        verify(h, signing_token=SIGNING_KEY)


def test_non_utf8_body_fails_cleanly():
    body = b"\xff\xfe\xfd not utf-8"
    # A sender signing the raw bytes (the library cannot sign non-UTF-8 text).
    ts = str(int(time.time()))
    mac = hmac.new(base64.b64decode(SIGNING_KEY[6:]), b"msg_1." + ts.encode() + b"." + body, hashlib.sha256)
    h = {"webhook-id": "msg_1", "webhook-timestamp": ts,
         "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode()}
    with pytest.raises(AuthError):
        verify(h, body, signing_token=SIGNING_KEY)


def test_raw_hmac_matches_the_library_for_utf8_bodies():
    # Guards the test above: the hand-made signature is the scheme's signature.
    ts = str(int(time.time()))
    mac = hmac.new(base64.b64decode(SIGNING_KEY[6:]), b"msg_1." + ts.encode() + b"." + BODY, hashlib.sha256)
    h = {"webhook-id": "msg_1", "webhook-timestamp": ts,
         "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode()}
    assert verify(h, signing_token=SIGNING_KEY) == "signature"


def test_malformed_signing_key_fails_cleanly():
    with pytest.raises(AuthError):
        verify(signed_headers(), signing_token="whsec_")


# --- either proof is enough -----------------------------------------------------------------


def test_wrong_token_but_valid_signature_passes():
    h = {"X-Gitlab-Token": "wrong", **signed_headers()}
    assert verify(h, signing_token=SIGNING_KEY) == "signature"


def test_valid_token_with_bad_signature_passes():
    h = {"X-Gitlab-Token": SECRET, **signed_headers()}
    h["webhook-signature"] = "garbage"
    assert verify(h, signing_token=SIGNING_KEY) == "token"


def test_signature_only_without_secret_configured():
    assert verify(signed_headers(), secret=None, signing_token=SIGNING_KEY) == "signature"
