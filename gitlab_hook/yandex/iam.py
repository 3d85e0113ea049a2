"""IAM token providers for Yandex Cloud: static token, service-account key, VM metadata."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from .errors import KeyFileError, MetadataError, TokenError, TokenExpired, error_from_response, redact

log = logging.getLogger(__name__)

# The audience is fixed by IAM, whatever host the request goes to:
# https://yandex.cloud/en/docs/iam/operations/iam-token/create-for-sa
IAM_AUDIENCE = "https://iam.api.cloud.yandex.net/iam/v1/tokens"
DEFAULT_IAM_URL = "https://iam.api.cloud.yandex.net"
DEFAULT_METADATA_URL = "http://169.254.169.254"
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)
METADATA_TIMEOUT: tuple[float, float] = (1.0, 5.0)
MAX_JWT_LIFETIME = 3600  # IAM rejects a JWT whose exp is more than 1 h after iat

Clock = Callable[[], float]
Timeout = float | tuple[float, float]

# A token goes into an HTTP header: only visible ASCII, no spaces (requests would otherwise
# raise InvalidHeader with the value in its text).
_TOKEN_SHAPE = re.compile(r"[\x21-\x7e]{1,8192}")
_FOLDER_ID = re.compile(r"[a-z0-9]{1,50}")
_RETRYABLE_TRANSPORT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


@runtime_checkable
class TokenProvider(Protocol):
    """Gives a valid IAM token; invalidate() drops it after the API answered 401."""

    def token(self) -> str:
        """Return a token that is valid now, fetching a new one when due."""
        ...

    def invalidate(self) -> None:
        """Forget the current token so that the next token() fetches a new one."""
        ...


def parse_rfc3339(value: object) -> datetime | None:
    """Parse an RFC 3339 timestamp as Yandex sends it (nanoseconds, 'Z'); None if unusable."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    # Python 3.11 accepts 'Z' and long fractions, but trim to microseconds to be safe.
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?", text)
    if match:
        base, frac, zone = match.groups()
        text = base + (f".{frac[:6].ljust(6, '0')}" if frac else "") + ("+00:00" if zone in (None, "Z") else zone)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def _check_token(value: object, source: str) -> str:
    if not isinstance(value, str) or not _TOKEN_SHAPE.fullmatch(value):
        raise TokenError(f"{source} answered without a usable token")
    return value


def _transport_error(exc: requests.RequestException, what: str) -> TokenError:
    retryable = isinstance(exc, _RETRYABLE_TRANSPORT)
    return TokenError(f"{what}: {type(exc).__name__}", retryable=retryable)


class StaticTokenProvider:
    """A fixed IAM token (YC_IAM_TOKEN); it cannot be refreshed, so a 401 is final."""

    def __init__(self, token: str, *, expires_at: float | None = None, clock: Clock = time.time) -> None:
        """Keep the token; expires_at (epoch seconds), when known, makes expiry fail early."""
        token = (token or "").strip()
        if not token:
            raise ValueError("the static IAM token is empty")
        if not _TOKEN_SHAPE.fullmatch(token):
            raise ValueError("the static IAM token contains spaces or characters not allowed in a header")
        self._token = token
        self._expires_at = expires_at
        self._clock = clock
        self._lock = threading.Lock()

    def token(self) -> str:
        """Return the token, or raise TokenExpired once its known expiry has passed."""
        with self._lock:
            if self._expires_at is not None and self._clock() >= self._expires_at:
                raise TokenExpired()
            return self._token

    def invalidate(self) -> None:
        """A static token cannot be renewed: always raise TokenExpired."""
        raise TokenExpired()

    def __repr__(self) -> str:
        return "StaticTokenProvider(token=***)"


class _RefreshingProvider:
    """Caches a token and fetches a new one before it expires; one fetch at a time."""

    # Fall back to the cached token while a refresh fails, if it stays valid this long.
    _MIN_VALIDITY = 60.0

    def __init__(self, *, clock: Clock, max_age: float, refresh_margin: float) -> None:
        self._clock = clock
        self._max_age = max_age
        self._margin = refresh_margin
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        self.fetch_count = 0

    def _fetch(self, now: float) -> tuple[str, float]:
        raise NotImplementedError

    @property
    def expires_at(self) -> float | None:
        """Expiry of the cached token in clock seconds, or None when none is cached."""
        return self._expires_at if self._token is not None else None

    def token(self) -> str:
        """Return the cached token, fetching a new one when it is old or near its expiry."""
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                return self._token
            try:
                token, expires_at = self._fetch(now)
            except TokenError as exc:
                if self._token is not None and now < self._expires_at - self._MIN_VALIDITY:
                    # IAM hiccup: keep working with the still-valid token, try again soon.
                    log.warning("IAM token refresh failed, keeping the current token for now: %s", exc)
                    self._refresh_at = now + min(30.0, (self._expires_at - now) / 4)
                    return self._token
                raise
            self.fetch_count += 1
            lifetime = expires_at - now
            if lifetime <= 0:
                log.warning("IAM token arrived already expired by our clock; check the system clock")
                lifetime = self._MIN_VALIDITY
            self._token = token
            self._expires_at = now + lifetime
            # IAM tokens live up to 12 h; Yandex advises asking for a new one about every hour.
            # https://yandex.cloud/en/docs/iam/operations/iam-token/create-for-sa
            ahead = min(self._margin, lifetime / 2)
            self._refresh_at = now + min(self._max_age, lifetime - ahead)
            return token

    def invalidate(self) -> None:
        """Drop the cached token; the next token() call fetches a new one."""
        with self._lock:
            self._token = None
            self._expires_at = 0.0
            self._refresh_at = 0.0


def _load_private_key(pem: str, key_id: str) -> RSAPrivateKey:
    # `yc iam key create` puts a "PLEASE DO NOT REMOVE THIS LINE! ..." line before the PEM.
    start = pem.find("-----BEGIN")
    if start < 0:
        raise KeyFileError(f"service-account key {key_id}: private_key is not in PEM format")
    try:
        key = serialization.load_pem_private_key(pem[start:].encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise KeyFileError(f"service-account key {key_id}: private_key cannot be loaded") from None
    if not isinstance(key, RSAPrivateKey):
        raise KeyFileError(f"service-account key {key_id}: private_key is not an RSA key")
    return key


class ServiceAccountKeyProvider(_RefreshingProvider):
    """Exchanges a PS256 JWT signed with a service-account authorized key for IAM tokens."""

    def __init__(
        self,
        key: Mapping[str, Any],
        iam_url: str = DEFAULT_IAM_URL,
        session: requests.Session | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        *,
        clock: Clock = time.time,
        jwt_lifetime: int = MAX_JWT_LIFETIME,
        max_age: float = 3600.0,
        refresh_margin: float = 300.0,
    ) -> None:
        """Validate the authorized key (id, service_account_id, private_key) and keep it."""
        super().__init__(clock=clock, max_age=max_age, refresh_margin=refresh_margin)
        if not isinstance(key, Mapping):
            raise KeyFileError("service-account key must be a JSON object")
        required = ("id", "service_account_id", "private_key")
        missing = [name for name in required if not isinstance(key.get(name), str) or not key.get(name)]
        if missing:
            raise KeyFileError(f"service-account key lacks {', '.join(missing)}")
        self.key_id: str = key["id"]
        self.service_account_id: str = key["service_account_id"]
        self._private_key = _load_private_key(key["private_key"], self.key_id)
        self._url = iam_url.rstrip("/") + "/iam/v1/tokens"
        self._session = session or requests.Session()
        self._timeout = timeout
        self._jwt_lifetime = max(1, min(int(jwt_lifetime), MAX_JWT_LIFETIME))

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        iam_url: str = DEFAULT_IAM_URL,
        session: requests.Session | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> ServiceAccountKeyProvider:
        """Read an authorized key JSON file (as written by `yc iam key create`)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise KeyFileError(f"cannot read service-account key file {path}: {reason}") from None
        except UnicodeDecodeError:
            raise KeyFileError(f"service-account key file {path} is not UTF-8 text") from None
        try:
            data = json.loads(text)
        except ValueError:
            raise KeyFileError(f"service-account key file {path} is not valid JSON") from None
        return cls(data, iam_url, session, timeout, **kwargs)

    def make_jwt(self, now: float | None = None) -> str:
        """Sign the PS256 JWT that IAM exchanges for a token (valid at most 1 h)."""
        iat = int(self._clock() if now is None else now)
        claims = {
            "iss": self.service_account_id,
            "aud": IAM_AUDIENCE,
            "iat": iat,
            "exp": iat + self._jwt_lifetime,
        }
        return jwt.encode(claims, self._private_key, algorithm="PS256", headers={"kid": self.key_id})

    def _fetch(self, now: float) -> tuple[str, float]:
        signed = self.make_jwt(now)
        what = f"IAM token request for service account {self.service_account_id} (key {self.key_id})"
        try:
            resp = self._session.post(self._url, json={"jwt": signed}, timeout=self._timeout)
        except requests.RequestException as exc:
            raise _transport_error(exc, f"{what} failed") from None
        if resp.status_code >= 400:
            err = error_from_response(resp, secrets=(signed,), request=f"POST {self._url}")
            raise TokenError(
                f"{what} refused: {err}",
                http_status=err.http_status,
                grpc_code=err.grpc_code,
                retryable=err.retryable,
            )
        try:
            body = resp.json()
        except ValueError:
            raise TokenError(f"{what}: IAM answered HTTP {resp.status_code} without JSON", retryable=True) from None
        if not isinstance(body, dict):
            raise TokenError(f"{what}: IAM answered an unexpected JSON shape", retryable=True)
        token = _check_token(body.get("iamToken"), "IAM")
        expires = parse_rfc3339(body.get("expiresAt"))
        # Without a readable expiresAt assume the documented refresh period of one hour.
        return token, (expires.timestamp() if expires else now + 3600.0)

    def __repr__(self) -> str:
        return f"ServiceAccountKeyProvider(service_account_id={self.service_account_id!r}, key_id={self.key_id!r})"


class MetadataTokenProvider(_RefreshingProvider):
    """Takes IAM tokens of the VM's attached service account from the metadata service."""

    TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"

    def __init__(
        self,
        metadata_url: str = DEFAULT_METADATA_URL,
        session: requests.Session | None = None,
        timeout: Timeout = METADATA_TIMEOUT,
        *,
        clock: Clock = time.time,
        max_age: float = 3600.0,
        refresh_margin: float = 300.0,
    ) -> None:
        """Point at the metadata service root (http://169.254.169.254 on a Yandex VM)."""
        super().__init__(clock=clock, max_age=max_age, refresh_margin=refresh_margin)
        self._url = metadata_url.rstrip("/") + self.TOKEN_PATH
        self._session = session or requests.Session()
        self._timeout = timeout

    def _fetch(self, now: float) -> tuple[str, float]:
        # The GCE-compatible metadata service answers only requests carrying this header,
        # which keeps SSRF-style requests (that cannot set headers) out.
        try:
            resp = self._session.get(self._url, headers={"Metadata-Flavor": "Google"}, timeout=self._timeout)
        except requests.RequestException as exc:
            raise _transport_error(exc, f"VM metadata service at {self._url} unreachable") from None
        if resp.status_code != 200:
            hint = {
                403: " (request refused)",
                404: " (is a service account attached to this VM?)",
            }.get(resp.status_code, "")
            raise TokenError(
                f"VM metadata service answered HTTP {resp.status_code} for the IAM token{hint}",
                http_status=resp.status_code,
                retryable=resp.status_code == 429 or resp.status_code >= 500,
            )
        try:
            body = resp.json()
        except ValueError:
            raise TokenError("VM metadata service answered the token request without JSON", retryable=True) from None
        if not isinstance(body, dict):
            raise TokenError("VM metadata service answered an unexpected JSON shape", retryable=True)
        token = _check_token(body.get("access_token"), "VM metadata service")
        try:
            expires_in = float(body.get("expires_in"))
        except (TypeError, ValueError):
            expires_in = 3600.0
        return token, now + expires_in

    def __repr__(self) -> str:
        return f"MetadataTokenProvider(url={self._url!r})"


def metadata_folder_id(
    metadata_url: str = DEFAULT_METADATA_URL,
    session: requests.Session | None = None,
    timeout: Timeout = METADATA_TIMEOUT,
) -> str:
    """Read the folder id of the VM we run on from the metadata service (plain text)."""
    url = metadata_url.rstrip("/") + "/computeMetadata/v1/yandex/folder-id"
    http = session or requests.Session()
    try:
        resp = http.get(url, headers={"Metadata-Flavor": "Google"}, timeout=timeout)
    except requests.RequestException as exc:
        raise MetadataError(
            f"VM metadata service at {url} unreachable: {type(exc).__name__}",
            retryable=isinstance(exc, _RETRYABLE_TRANSPORT),
        ) from None
    finally:
        if session is None:
            http.close()
    if resp.status_code != 200:
        raise MetadataError(
            f"VM metadata service answered HTTP {resp.status_code} for the folder id",
            retryable=resp.status_code == 429 or resp.status_code >= 500,
        )
    folder = resp.text.strip()
    if not _FOLDER_ID.fullmatch(folder):
        raise MetadataError(f"VM metadata service answered an invalid folder id {redact(folder[:60])!r}")
    return folder


def choose_token_provider(
    *,
    iam_token: str | None = None,
    sa_key_file: str | Path | None = None,
    iam_url: str = DEFAULT_IAM_URL,
    metadata_url: str = DEFAULT_METADATA_URL,
    session: requests.Session | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> TokenProvider:
    """Pick the provider: SA key file, else static token, else the VM metadata service."""
    # A key file wins over a static token because it renews itself.
    if sa_key_file:
        return ServiceAccountKeyProvider.from_file(sa_key_file, iam_url, session, timeout)
    if iam_token:
        return StaticTokenProvider(iam_token)
    return MetadataTokenProvider(metadata_url, session)
