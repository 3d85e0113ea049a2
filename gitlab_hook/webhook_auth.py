"""Who sent this delivery: the ``X-Gitlab-Token`` secret or a Standard Webhooks signature. Pure.

GitLab docs: https://docs.gitlab.com/user/project/integrations/webhooks/#validate-payloads-by-using-a-secret-token
Signing scheme: https://www.standardwebhooks.com/ (``webhook-id``/``-timestamp``/``-signature``).
"""

from __future__ import annotations

import hmac
import time
from typing import Mapping

from standardwebhooks.webhooks import Webhook


class AuthError(Exception):
    """The delivery is not from our GitLab; the text says why without revealing any secret."""


def _token_ok(given: str | None, secret: str | None) -> bool:
    if not given or not secret:
        return False
    # The secret's bytes as configured (os.environ decodes undecodable bytes with surrogateescape).
    want = secret.encode("utf-8", "surrogateescape")
    # WSGI servers hand header values over as latin-1 decoded bytes (PEP 3333), so GitLab's UTF-8
    # bytes of a non-ASCII token come back with .encode("latin-1"); a caller passing real text
    # (not via WSGI) is matched by its UTF-8 bytes. ASCII tokens are the same either way.
    candidates = [given.encode("utf-8", "surrogatepass")]
    try:
        candidates.append(given.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    ok = False
    for candidate in candidates:
        ok |= hmac.compare_digest(candidate, want)
    return ok


def _signature_ok(headers: Mapping[str, str], body: bytes, signing_token: str, tolerance: float,
                  now: float) -> bool:
    sig = headers.get("webhook-signature")
    ts = headers.get("webhook-timestamp")
    if not sig or not ts or not headers.get("webhook-id"):
        return False
    try:
        sent = float(ts)
    except ValueError:
        return False
    # The library's own window is fixed at 5 minutes; ours is configurable and checked first.
    if abs(now - sent) > tolerance:
        return False
    try:
        Webhook(signing_token).verify(body, dict(headers), json_parse=False)
    except Exception:  # malformed base64, no comma, non-UTF-8 body, bad signature: all "no"
        return False
    return True


def verify_delivery(headers: Mapping[str, str], body: bytes, *, secret: str | None,
                    signing_token: str | None = None, tolerance: float = 300.0,
                    now: float | None = None) -> str:
    """Return which proof passed (``"token"`` or ``"signature"``) or raise AuthError."""
    lower = {k.lower(): v for k, v in headers.items()}
    if _token_ok(lower.get("x-gitlab-token"), secret):
        return "token"
    if signing_token and _signature_ok(lower, body, signing_token, tolerance, time.time() if now is None else now):
        return "signature"
    if "x-gitlab-token" not in lower and "webhook-signature" not in lower:
        raise AuthError("missing X-Gitlab-Token header")
    if signing_token and "webhook-signature" in lower:
        raise AuthError("wrong X-Gitlab-Token and no valid webhook-signature")
    raise AuthError("wrong X-Gitlab-Token")
