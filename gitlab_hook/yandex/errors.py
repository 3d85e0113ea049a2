"""Typed exceptions for the Yandex Cloud client; texts never carry tokens or keys."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable
from typing import Any

import requests

# Yandex Cloud REST errors are gRPC statuses rendered as JSON {code, message, details}:
# https://yandex.cloud/en/docs/api-design-guide/concepts/errors
GRPC_NAMES: dict[int, str] = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}

# Used when a body carries no gRPC code (proxy HTML page, empty body, ...).
_HTTP_TO_GRPC: dict[int, int] = {
    400: 3,
    401: 16,
    403: 7,
    404: 5,
    409: 10,
    429: 8,
    499: 1,
    500: 13,
    501: 12,
    502: 14,
    503: 14,
    504: 4,
}

RETRYABLE_HTTP = frozenset({429, 500, 502, 503, 504})
_RETRYABLE_GRPC = frozenset({4, 8, 13, 14})
_MAX_MESSAGE = 500

# Patterns of credentials that must never reach an exception text or a log line:
# IAM tokens ("t1.…"), JWTs ("eyJ….….…"), PEM blocks and "Bearer …" values.
_SECRET_PATTERNS = (
    re.compile(r"t1\.[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
    re.compile(r"-----BEGIN [A-Z ]+-----.*?(?:-----END [A-Z ]+-----|\Z)", re.DOTALL),
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+\S+")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return text with the given secrets and anything token-shaped replaced by '***'."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("***", text)
    return _BEARER.sub(r"\1 ***", text)


class YandexError(Exception):
    """Base of every error raised by gitlab_hook.yandex."""

    retryable: bool = False


class YandexApiError(YandexError):
    """An error answer of a Yandex Cloud API: gRPC code, HTTP status and message."""

    grpc_code_default: int | None = None

    def __init__(
        self,
        message: str,
        *,
        grpc_code: int | None = None,
        http_status: int = 0,
        details: list[Any] | None = None,
        retry_after: float | None = None,
        request: str = "",
    ) -> None:
        code = grpc_code if grpc_code is not None else (self.grpc_code_default or 2)
        self.grpc_code: int = code
        self.http_status: int = http_status
        self.message: str = message
        self.details: list[Any] = list(details or [])
        self.retry_after: float | None = retry_after
        self.request: str = request  # "METHOD /path", never headers or query secrets
        super().__init__(str(self))

    @property
    def grpc_name(self) -> str:
        """Symbolic gRPC status name, e.g. NOT_FOUND."""
        return GRPC_NAMES.get(self.grpc_code, str(self.grpc_code))

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        """Whether repeating the same call later may succeed."""
        return self.http_status in RETRYABLE_HTTP or self.grpc_code in _RETRYABLE_GRPC

    def __str__(self) -> str:
        where = f" on {self.request}" if self.request else ""
        status = f"HTTP {self.http_status}, " if self.http_status else ""
        return f"{self.grpc_name} ({status}code {self.grpc_code}){where}: {self.message}"

    def __reduce__(self):  # keep pickling (e.g. task queues) working with keyword args
        return (
            _rebuild_api_error,
            (type(self), self.message, self.grpc_code, self.http_status, self.details, self.retry_after, self.request),
        )


def _rebuild_api_error(cls, message, grpc_code, http_status, details, retry_after, request):  # noqa: ANN001
    return cls(
        message,
        grpc_code=grpc_code,
        http_status=http_status,
        details=details,
        retry_after=retry_after,
        request=request,
    )


class InvalidArgument(YandexApiError):
    """gRPC 3 INVALID_ARGUMENT (HTTP 400)."""

    grpc_code_default = 3


class NotFound(YandexApiError):
    """gRPC 5 NOT_FOUND (HTTP 404)."""

    grpc_code_default = 5


class PermissionDenied(YandexApiError):
    """gRPC 7 PERMISSION_DENIED (HTTP 403)."""

    grpc_code_default = 7


class ResourceExhausted(YandexApiError):
    """gRPC 8 RESOURCE_EXHAUSTED (HTTP 429): quota or rate limit."""

    grpc_code_default = 8


class FailedPrecondition(YandexApiError):
    """gRPC 9 FAILED_PRECONDITION (HTTP 400), e.g. resizing a VM that is not STOPPED."""

    grpc_code_default = 9


class Internal(YandexApiError):
    """gRPC 13 INTERNAL (HTTP 500)."""

    grpc_code_default = 13


class Unavailable(YandexApiError):
    """gRPC 14 UNAVAILABLE (HTTP 503): try again later."""

    grpc_code_default = 14


class ConnectionFailed(Unavailable):
    """The API could not be reached or did not answer in time (no HTTP status)."""


class Unauthenticated(YandexApiError):
    """gRPC 16 UNAUTHENTICATED (HTTP 401): the IAM token was rejected."""

    grpc_code_default = 16


_BY_GRPC: dict[int, type[YandexApiError]] = {
    3: InvalidArgument,
    5: NotFound,
    7: PermissionDenied,
    8: ResourceExhausted,
    9: FailedPrecondition,
    13: Internal,
    14: Unavailable,
    16: Unauthenticated,
}


class OperationFailed(YandexError):
    """A Yandex Cloud Operation finished with an error."""

    def __init__(
        self,
        operation_id: str,
        description: str,
        code: int,
        message: str,
        details: list[Any] | None = None,
    ) -> None:
        self.operation_id = operation_id
        self.description = description
        self.code = code
        self.message = message
        self.details = list(details or [])
        name = GRPC_NAMES.get(code, str(code))
        super().__init__(
            f"operation {operation_id} ({description or 'no description'}) failed: {name} (code {code}): {message}"
        )

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        """Whether starting the same operation again may succeed."""
        return self.code in _RETRYABLE_GRPC

    def __reduce__(self):
        return (type(self), (self.operation_id, self.description, self.code, self.message, self.details))


class OperationTimeout(YandexError):
    """An Operation was not done within the allowed time (it may still finish later)."""

    retryable = True

    def __init__(self, operation_id: str, description: str, timeout: float) -> None:
        self.operation_id = operation_id
        self.description = description
        self.timeout = timeout
        super().__init__(
            f"operation {operation_id} ({description or 'no description'}) not done after {timeout:g} s"
        )

    def __reduce__(self):
        return (type(self), (self.operation_id, self.description, self.timeout))


class TokenError(YandexError):
    """An IAM token could not be obtained (IAM or metadata service failed)."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        grpc_code: int | None = None,
        retryable: bool = False,
    ) -> None:
        self.message = message
        self.http_status = http_status
        self.grpc_code = grpc_code
        self.retryable = retryable  # type: ignore[misc]
        super().__init__(message)

    def __reduce__(self):
        return (_rebuild_token_error, (type(self), self.message, self.http_status, self.grpc_code, self.retryable))


def _rebuild_token_error(cls, message, http_status, grpc_code, retryable):  # noqa: ANN001
    err = cls.__new__(cls)
    TokenError.__init__(err, message, http_status=http_status, grpc_code=grpc_code, retryable=retryable)
    return err


class TokenExpired(TokenError):
    """The static IAM token (YC_IAM_TOKEN) was rejected and cannot be refreshed."""

    DEFAULT_MESSAGE = (
        "Yandex Cloud rejected the static IAM token from YC_IAM_TOKEN (HTTP 401): it has expired "
        "(IAM tokens live at most 12 h) or is invalid. Replace YC_IAM_TOKEN with a fresh token "
        "(`yc iam create-token`), or set YC_SA_KEY_FILE to a service-account key, or run on a VM "
        "with a service account, so that tokens are refreshed automatically."
    )

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.DEFAULT_MESSAGE, http_status=401, grpc_code=16, retryable=False)


class KeyFileError(YandexError, ValueError):
    """The service-account authorized key is unreadable or incomplete."""


class MetadataError(YandexError):
    """The VM metadata service did not give a usable answer."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        self.retryable = retryable  # type: ignore[misc]
        super().__init__(message)


class InvalidName(YandexError, ValueError):
    """A VM name or resource id failed validation before reaching a URL."""

    def __init__(self, kind: str, value: object, rule: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        self.kind = kind
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {kind} {shown}: must match {rule}")

    def __reduce__(self):
        return (InvalidName, (self.kind, self.value, self.rule))


def _http_reason_grpc(status: int) -> int:
    if status in _HTTP_TO_GRPC:
        return _HTTP_TO_GRPC[status]
    if 500 <= status < 600:
        return 13
    return 2


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def api_error(
    *,
    http_status: int,
    grpc_code: int | None,
    message: str,
    details: list[Any] | None = None,
    retry_after: float | None = None,
    request: str = "",
) -> YandexApiError:
    """Build the YandexApiError subclass that matches the gRPC code (else the HTTP status)."""
    code = grpc_code if grpc_code is not None else _http_reason_grpc(http_status)
    cls = _BY_GRPC.get(code, YandexApiError)
    return cls(
        message,
        grpc_code=code,
        http_status=http_status,
        details=details,
        retry_after=retry_after,
        request=request,
    )


def error_from_response(
    response: requests.Response,
    *,
    secrets: Iterable[str | None] = (),
    request: str = "",
) -> YandexApiError:
    """Map an HTTP error response to the matching typed exception; tolerates non-JSON bodies."""
    status = response.status_code
    grpc_code: int | None = None
    details: list[Any] = []
    message = ""
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        raw_code = body.get("code")
        if isinstance(raw_code, int) and not isinstance(raw_code, bool) and 0 < raw_code <= 16:
            grpc_code = raw_code
        elif isinstance(raw_code, str) and raw_code.isdigit() and 0 < int(raw_code) <= 16:
            grpc_code = int(raw_code)
        raw_message = body.get("message") or body.get("error_description") or body.get("error") or ""
        message = raw_message if isinstance(raw_message, str) else str(raw_message)
        raw_details = body.get("details")
        if isinstance(raw_details, list):
            details = raw_details
    if not message:
        text = (response.text or "").strip()
        message = " ".join(text.split())[:200] if text else (response.reason or "no error text")
    message = redact(message, secrets)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return api_error(
        http_status=status,
        grpc_code=grpc_code,
        message=message,
        details=details,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
        request=request,
    )
