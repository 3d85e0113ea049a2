"""All output to Telegram: HTML helpers, safe message splitting, retries, and a dry-run twin."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import itertools
import logging
import re
import threading
import urllib.parse
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from telegram import LinkPreviewOptions, Message
from telegram.constants import ParseMode
from telegram.error import BadRequest, ChatMigrated, NetworkError, RetryAfter, TelegramError
from telegram.ext import Defaults, ExtBot
from telegram.request import HTTPXRequest

from gitlab_hook.telegram_format import (  # noqa: F401  (re-exported: callers import them from here)
    LONG_TEXT_FILENAME,
    MAX_TEXT,
    Outgoing,
    code,
    escape,
    link,
    plan_text,
    pre,
    split_message,
    to_plain,
    truncate_html,
    utf16_len,
)

log = logging.getLogger("gitlab_hook.telegram")

# https://core.telegram.org/bots/api#sendmessage (text), #senddocument (caption, 50 MB upload).
MAX_CAPTION = 1024
MAX_DOCUMENT = 50 * 1024 * 1024
DEFAULT_API_URL = "https://api.telegram.org"

ChatId = int | str
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Errors


class TelegramSendError(Exception):
    """A Telegram call failed for good; the text names the method and reason, never the token."""

    def __init__(self, method: str, reason: str, *, retryable: bool) -> None:
        super().__init__(f"Telegram {method} failed: {reason}")
        self.method = method
        self.reason = reason
        # False when repeating the same call cannot help (bad request, bot blocked, bad token).
        self.retryable = retryable
        # Ids of the parts already delivered when a multi-part send failed half way.
        self.sent_message_ids: list[int] = []


class TelegramFormatError(TelegramSendError):
    """Telegram rejected the HTML ("can't parse entities"): resend the text with send_plain."""


class TelegramRetryAfterError(TelegramSendError):
    """Flood control asked us to wait longer than max_retry_after allows; retry_after in seconds."""

    def __init__(self, method: str, retry_after: float, waited: float) -> None:
        super().__init__(
            method,
            f"flood control asks to wait {retry_after:.0f} s (already waited {waited:.0f} s)",
            retryable=True,
        )
        self.retry_after = retry_after


# --------------------------------------------------------------------------------------------
# Token hygiene: PTB error texts, its debug logs and httpx's request log carry the bot URL,
# and the URL carries the token (https://core.telegram.org/bots/api#making-requests).

_TOKEN_SHAPE = re.compile(r"\d{3,}:[A-Za-z0-9_-]{20,}")
_known_tokens: set[str] = set()
_tokens_lock = threading.Lock()


def scrub(text: str) -> str:
    """Replace every bot token (known ones and anything shaped like one) with <token>."""
    with _tokens_lock:
        tokens = sorted(_known_tokens, key=len, reverse=True)
    for token in tokens:
        text = text.replace(token, "<token>").replace(urllib.parse.quote(token), "<token>")
    return _TOKEN_SHAPE.sub("<token>", text)


class _RedactTokens(logging.Filter):
    """Rewrites log records of PTB and httpx so the token never reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_REDACTOR = _RedactTokens()


def _register_token(token: str) -> None:
    with _tokens_lock:
        _known_tokens.add(token)
    # Filters on a logger apply only to records created by that exact logger, so name each.
    for name in ("httpx", "telegram.Bot", "telegram.ext.ExtBot"):
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)


# --------------------------------------------------------------------------------------------
# The interface callers depend on


@runtime_checkable
class Notifier(Protocol):
    """What the worker and the bot need from a Telegram sender (real or dry-run)."""

    def send_html(
        self, html_text: str, *, chat_id: ChatId | None = None, thread_id: int | None = None
    ) -> list[int]: ...

    def send_plain(
        self, text: str, *, chat_id: ChatId | None = None, thread_id: int | None = None
    ) -> list[int]: ...

    def send_document(
        self,
        filename: str,
        data: bytes,
        *,
        caption_html: str | None = None,
        chat_id: ChatId | None = None,
        thread_id: int | None = None,
    ) -> int: ...

    def edit_html(self, chat_id: ChatId, message_id: int, html_text: str) -> None: ...

    def probe(self) -> str: ...

    def close(self) -> None: ...


def _target(
    default_chat: ChatId, default_thread: int | None, chat_id: ChatId | None, thread_id: int | None
) -> tuple[ChatId, int | None]:
    # The configured topic belongs to the configured chat; another chat gets none by default.
    if chat_id is None or chat_id == default_chat:
        return default_chat, thread_id if thread_id is not None else default_thread
    return chat_id, thread_id


# --------------------------------------------------------------------------------------------
# The real sender


def _retry_after_seconds(exc: RetryAfter) -> float:
    # PTB >= 22.2 keeps a timedelta; reading the public attribute emits a deprecation warning.
    value: Any = getattr(exc, "_retry_after", None)
    if not isinstance(value, dt.timedelta):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = exc.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


class _TextSends:
    """send_html / send_plain on top of a class's own ``_send_text`` (real or dry-run)."""

    def _send_text(self, text: str, html_mode: bool, chat_id: ChatId | None,
                   thread_id: int | None) -> list[int]:
        raise NotImplementedError

    def send_html(
        self, html_text: str, *, chat_id: ChatId | None = None, thread_id: int | None = None
    ) -> list[int]:
        """Send HTML text (split, or a head plus .txt file, when long); returns the message ids."""
        return self._send_text(html_text, True, chat_id, thread_id)

    def send_plain(
        self, text: str, *, chat_id: ChatId | None = None, thread_id: int | None = None
    ) -> list[int]:
        """Send text without parse mode (the fallback after TelegramFormatError); returns ids."""
        return self._send_text(text, False, chat_id, thread_id)



class TelegramNotifier(_TextSends):
    """Thread-safe synchronous facade over a PTB bot that runs on a private event loop."""

    def __init__(
        self,
        *,
        token: str,
        chat_id: ChatId,
        thread_id: int | None = None,
        api_url: str = DEFAULT_API_URL,
        timeout: float = 10.0,
        max_retry_after: float = 60.0,
        max_parts: int = 3,
        network_retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if not token:
            raise ValueError("a bot token is required (use DryRunNotifier without one)")
        _register_token(token)
        self.chat_id = chat_id
        self.thread_id = thread_id
        self._max_retry_after = max_retry_after
        self._max_parts = max_parts
        self._network_retries = network_retries
        self._backoff = backoff
        self._migrated: dict[ChatId, ChatId] = {}
        root = str(api_url).rstrip("/")  # settings may hold a pydantic URL with a trailing "/"
        media_timeout = max(timeout, 60.0)  # uploads up to 50 MB need longer than a text

        def request(pool: int) -> HTTPXRequest:
            return HTTPXRequest(
                connection_pool_size=pool,
                connect_timeout=timeout,
                read_timeout=timeout,
                write_timeout=timeout,
                pool_timeout=timeout,
                media_write_timeout=media_timeout,
            )

        # Defaults set HTML once for every text, caption and edit; no link previews in alerts.
        self._bot = ExtBot(
            token,
            base_url=f"{root}/bot",
            base_file_url=f"{root}/file/bot",
            request=request(16),
            get_updates_request=request(1),
            defaults=Defaults(
                parse_mode=ParseMode.HTML,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            ),
        )
        self._ready = False
        self._init_lock = asyncio.Lock()
        # Safety net for a call that never comes back; the retry policy normally ends first.
        per_attempt = 4 * timeout + media_timeout
        self._deadline = (
            2 * (network_retries + 1) * per_attempt
            + backoff * 2 ** (network_retries + 1)
            + max_retry_after
            + 30
        )
        self._closed = False
        self._state_lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        # A PTB Bot belongs to the loop it was initialised in: keep one loop in one thread.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="telegram-notifier", daemon=True
        )
        self._thread.start()

    # -- public, synchronous ---------------------------------------------------------------

    def send_document(
        self,
        filename: str,
        data: bytes,
        *,
        caption_html: str | None = None,
        chat_id: ChatId | None = None,
        thread_id: int | None = None,
    ) -> int:
        """Upload `data` as a file named `filename` with an optional HTML caption; returns its id."""
        if len(data) > MAX_DOCUMENT:
            raise TelegramSendError(
                "sendDocument", f"{filename} is {len(data)} bytes, over the 50 MB limit",
                retryable=False,
            )
        chat, thread = _target(self.chat_id, self.thread_id, chat_id, thread_id)
        caption = truncate_html(caption_html, MAX_CAPTION) if caption_html else None

        async def send(c: ChatId) -> Message:
            # message_thread_id on documents too, or they land outside the forum topic.
            return await self._bot.send_document(
                c, document=data, filename=filename, caption=caption, message_thread_id=thread
            )

        return self._run("sendDocument", self._call("sendDocument", chat, send)).message_id

    def edit_html(self, chat_id: ChatId, message_id: int, html_text: str) -> None:
        """Replace a sent message's text (cut to the limit); an unchanged text is not an error."""
        text = truncate_html(html_text, MAX_TEXT)

        async def edit(c: ChatId) -> Any:
            return await self._bot.edit_message_text(text, chat_id=c, message_id=message_id)

        try:
            self._run("editMessageText", self._call("editMessageText", chat_id, edit))
        except TelegramSendError as exc:
            if "message is not modified" not in exc.reason.lower():
                raise

    def probe(self) -> str:
        """Check the token with getMe; returns the bot's @username."""
        self._run("getMe", self._ensure_ready())
        return f"@{self._bot.username}"

    def close(self) -> None:
        """Close the HTTP connections and stop the loop thread; safe to call twice."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending)
        for fut in pending:
            fut.cancel()
        try:
            asyncio.run_coroutine_threadsafe(self._bot.shutdown(), self._loop).result(timeout=5)
        except Exception as exc:  # closing must not fail the caller
            log.debug("telegram shutdown: %s", scrub(repr(exc)))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> "TelegramNotifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------

    def _send_text(
        self, text: str, html_mode: bool, chat_id: ChatId | None, thread_id: int | None
    ) -> list[int]:
        chat, thread = _target(self.chat_id, self.thread_id, chat_id, thread_id)
        plan = plan_text(text, html_mode=html_mode, max_parts=self._max_parts)
        if not plan:
            log.warning("not sending an empty message to chat %s", chat)
            return []
        ids: list[int] = []
        try:
            for item in plan:
                if item.text is None:
                    ids.append(
                        self.send_document(
                            item.filename or LONG_TEXT_FILENAME, item.data, chat_id=chat,
                            thread_id=thread,
                        )
                    )
                    continue
                part = item.text

                async def send(c: ChatId, part: str = part) -> Message:
                    if html_mode:  # parse mode HTML comes from Defaults
                        return await self._bot.send_message(c, part, message_thread_id=thread)
                    return await self._bot.send_message(
                        c, part, message_thread_id=thread, parse_mode=None
                    )

                ids.append(self._run("sendMessage", self._call("sendMessage", chat, send)).message_id)
        except TelegramSendError as exc:
            exc.sent_message_ids = ids  # a retry of the whole text would repeat these parts
            raise
        return ids

    def _run(self, method: str, coro: Awaitable[T]) -> T:
        """Run a coroutine on the notifier's loop and wait for it from any (non-loop) thread."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("TelegramNotifier must not be called from its own event loop")
        with self._state_lock:
            if self._closed:
                coro.close()  # type: ignore[attr-defined]
                raise TelegramSendError(method, "the notifier is closed", retryable=False)
            fut = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
            self._pending.add(fut)
        try:
            return fut.result(timeout=self._deadline)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TelegramSendError(
                method, f"no result within {self._deadline:.0f} s", retryable=True
            ) from None
        except concurrent.futures.CancelledError:
            raise TelegramSendError(method, "cancelled by close()", retryable=True) from None
        finally:
            with self._state_lock:
                self._pending.discard(fut)

    async def _ensure_ready(self) -> None:
        # initialize() opens the HTTP clients and calls getMe once, which also checks the token.
        if self._ready:
            return
        async with self._init_lock:
            if not self._ready:
                await self._attempts("getMe", None, lambda _: self._bot.initialize())
                self._ready = True

    async def _call(self, method: str, chat: ChatId, fn: Callable[[ChatId], Awaitable[T]]) -> T:
        await self._ensure_ready()
        return await self._attempts(method, chat, fn)

    async def _attempts(
        self, method: str, chat: ChatId | None, fn: Callable[[Any], Awaitable[T]]
    ) -> T:
        """Call fn(chat) with Telegram's retry rules; raise TelegramSendError when it gives up."""
        target = self._migrated.get(chat, chat) if chat is not None else None
        waited = 0.0
        failures = 0
        migrated = False
        while True:
            try:
                return await fn(target)
            except RetryAfter as exc:
                # Flood control: https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this
                delay = _retry_after_seconds(exc)
                if waited + delay > self._max_retry_after:
                    raise TelegramRetryAfterError(method, delay, waited) from None
                log.warning("Telegram %s: flood control, retrying in %.0f s", method, delay)
                await asyncio.sleep(delay)
                waited += delay
            except ChatMigrated as exc:
                # A group became a supergroup and got a new id; follow it once and say so.
                if migrated or target is None:
                    raise self._error(method, exc, retryable=False) from None
                log.warning(
                    "Telegram chat %s moved to %s: update TELEGRAM_CHAT_ID", target, exc.new_chat_id
                )
                self._migrated[chat] = exc.new_chat_id  # type: ignore[index]
                target, migrated = exc.new_chat_id, True
            except BadRequest as exc:  # a 400: the same request will fail again
                raise self._error(method, exc, retryable=False) from None
            except NetworkError as exc:  # connection errors, timeouts, 5xx
                # A read timeout may come after Telegram accepted the message; sending it again
                # risks a duplicate, which beats losing an alert.
                failures += 1
                if failures > self._network_retries:
                    raise self._error(method, exc, retryable=True) from None
                delay = self._backoff * 2 ** (failures - 1)
                log.warning(
                    "Telegram %s failed (%s); retry %d of %d in %.1f s",
                    method, scrub(exc.message), failures, self._network_retries, delay,
                )
                await asyncio.sleep(delay)
            except TelegramError as exc:  # forbidden, bad token, conflict, ...
                raise self._error(method, exc, retryable=False) from None

    @staticmethod
    def _error(method: str, exc: TelegramError, *, retryable: bool) -> TelegramSendError:
        reason = scrub(f"{type(exc).__name__}: {exc.message}")
        if isinstance(exc, BadRequest) and "can't parse entities" in exc.message.lower():
            return TelegramFormatError(method, reason, retryable=False)
        return TelegramSendError(method, reason, retryable=retryable)


# --------------------------------------------------------------------------------------------
# Dry run


class DryRunNotifier(_TextSends):
    """Logs exactly what would be sent and returns fake, increasing message ids."""

    def __init__(
        self, *, chat_id: ChatId = "dry-run", thread_id: int | None = None, max_parts: int = 3
    ) -> None:
        self.chat_id = chat_id
        self.thread_id = thread_id
        self._max_parts = max_parts
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def _send_text(
        self, text: str, html_mode: bool, chat_id: ChatId | None, thread_id: int | None
    ) -> list[int]:
        chat, thread = _target(self.chat_id, self.thread_id, chat_id, thread_id)
        ids = []
        for item in plan_text(text, html_mode=html_mode, max_parts=self._max_parts):
            if item.text is None:
                ids.append(self.send_document(item.filename or "", item.data, chat_id=chat, thread_id=thread))
                continue
            log.info(
                "dry-run: would send %s message to chat %s thread %s (%d chars): %s",
                "HTML" if html_mode else "plain", chat, thread, len(item.text), item.text[:200],
            )
            ids.append(self._next_id())
        return ids

    def send_document(
        self,
        filename: str,
        data: bytes,
        *,
        caption_html: str | None = None,
        chat_id: ChatId | None = None,
        thread_id: int | None = None,
    ) -> int:
        """Log the document that would be sent."""
        chat, thread = _target(self.chat_id, self.thread_id, chat_id, thread_id)
        log.info(
            "dry-run: would send document %s (%d bytes) to chat %s thread %s, caption: %s",
            filename, len(data), chat, thread, (caption_html or "")[:200],
        )
        return self._next_id()

    def edit_html(self, chat_id: ChatId, message_id: int, html_text: str) -> None:
        """Log the edit that would be made."""
        log.info(
            "dry-run: would edit message %s in chat %s: %s", message_id, chat_id, html_text[:200]
        )

    def probe(self) -> str:
        """Nothing to probe in dry run."""
        return "dry-run"

    def close(self) -> None:
        """Nothing to close."""


def build_notifier(
    *,
    token: str | None,
    chat_id: ChatId | None,
    thread_id: int | None = None,
    api_url: str = DEFAULT_API_URL,
    **options: Any,
) -> Notifier:
    """A TelegramNotifier when token and chat are set, else a DryRunNotifier (the service still runs)."""
    if token and chat_id not in (None, ""):
        return TelegramNotifier(
            token=token, chat_id=chat_id, thread_id=thread_id, api_url=api_url, **options  # type: ignore[arg-type]
        )
    return DryRunNotifier(chat_id=chat_id if chat_id not in (None, "") else "unset", thread_id=thread_id)
