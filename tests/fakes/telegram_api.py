"""A fake Telegram Bot API server on 127.0.0.1 that python-telegram-bot can talk to in tests."""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import html
import itertools
import json
import re
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

# Limits from https://core.telegram.org/bots/api#sendmessage and #senddocument.
MAX_TEXT = 4096
MAX_CAPTION = 1024

# Tags of https://core.telegram.org/bots/api#html-style (tag names are case-insensitive).
SUPPORTED_TAGS = {
    "b": "bold", "strong": "bold",
    "i": "italic", "em": "italic",
    "u": "underline", "ins": "underline",
    "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough",
    "span": "spoiler", "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}

# Only these named entities are supported; every numeric one is (same page).
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_ENTITY_RE = re.compile(r"&(?:#([0-9]{1,8})|#[xX]([0-9a-fA-F]{1,7})|([a-zA-Z]+));")
_START_RE = re.compile(
    r"<([a-zA-Z][a-zA-Z0-9-]*)"
    r"((?:\s+[a-zA-Z_:-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'>]+))?)*)\s*>"
)
_END_RE = re.compile(r"</([a-zA-Z][a-zA-Z0-9-]*)\s*>")
_ATTR_RE = re.compile(r"([a-zA-Z_:-]+)(?:\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s\"'>]+))?")

# Parameters whose value is a plain string even when it looks like JSON ("123", "true").
_STRING_PARAMS = {
    "text", "caption", "parse_mode", "callback_query_id", "url", "description",
    "short_description", "name", "title", "language_code", "action", "secret_token",
    "emoji", "file_name", "document", "ip_address", "inline_message_id",
}


class TelegramHtmlError(ValueError):
    """Text that Telegram's HTML parser would reject."""


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit Telegram uses for entity offsets and (we assume) limits."""
    return len(text.encode("utf-16-le")) // 2


def parse_telegram_html(raw: str) -> tuple[str, list[dict[str, Any]]]:
    """Parse Telegram-flavoured HTML into (plain text, message entities) or raise TelegramHtmlError."""
    out: list[str] = []
    pos = 0  # UTF-16 offset in the plain text
    stack: list[dict[str, Any]] = []
    entities: list[dict[str, Any]] = []
    i = 0

    def offset(at: int) -> int:
        return len(raw[:at].encode("utf-8"))

    while i < len(raw):
        c = raw[i]
        if c == "<":
            end = _END_RE.match(raw, i)
            if end:
                name = end.group(1).lower()
                if not stack:
                    raise TelegramHtmlError(f"Unexpected end tag at byte offset {offset(i)}")
                top = stack[-1]
                if top["name"] != name:
                    raise TelegramHtmlError(
                        f'Unmatched end tag at byte offset {offset(i)}, expected "</{top["name"]}>", '
                        f'found "</{name}>"'
                    )
                stack.pop()
                _close_entity(top, pos, stack, entities)
                i = end.end()
                continue
            start = _START_RE.match(raw, i)
            if not start:
                raise TelegramHtmlError(f'Unclosed start tag or bare "<" at byte offset {offset(i)}')
            name = start.group(1).lower()
            if name not in SUPPORTED_TAGS:
                raise TelegramHtmlError(f'Unsupported start tag "{name}" at byte offset {offset(i)}')
            attrs = {
                k.lower(): html.unescape((v or "").strip("\"'"))
                for k, v in _ATTR_RE.findall(start.group(2))
            }
            if name == "span" and attrs.get("class") != "tg-spoiler":
                raise TelegramHtmlError(
                    f'Tag "span" must have class "tg-spoiler" at byte offset {offset(i)}'
                )
            stack.append({"name": name, "attrs": attrs, "start": pos})
            i = start.end()
            continue
        if c == "&":
            m = _ENTITY_RE.match(raw, i)
            ch = _decode_entity(m) if m else None
            if ch is None:
                raise TelegramHtmlError(
                    f'Character "&" at byte offset {offset(i)} is not part of a supported entity'
                )
            out.append(ch)
            pos += utf16_len(ch)
            i = m.end()  # type: ignore[union-attr]
            continue
        out.append(c)
        pos += utf16_len(c)
        i += 1
    if stack:
        raise TelegramHtmlError(
            f'Can\'t find end tag corresponding to start tag "{stack[-1]["name"]}"'
        )
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


def _decode_entity(m: re.Match[str]) -> str | None:
    dec, hexa, named = m.groups()
    if named is not None:
        return _NAMED_ENTITIES.get(named)
    code = int(dec) if dec is not None else int(hexa, 16)
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF or code == 0:
        return None
    return chr(code)


def _close_entity(
    tag: dict[str, Any], end: int, stack: list[dict[str, Any]], entities: list[dict[str, Any]]
) -> None:
    name, attrs, start = tag["name"], tag["attrs"], tag["start"]
    if name == "code" and stack and stack[-1]["name"] == "pre":
        # <pre><code class="language-x"> is one pre entity with a language.
        lang = attrs.get("class", "")
        if lang.startswith("language-"):
            stack[-1]["language"] = lang[len("language-"):]
        return
    if end <= start:
        return
    entity: dict[str, Any] = {"type": SUPPORTED_TAGS[name], "offset": start, "length": end - start}
    if name == "a":
        if "href" not in attrs:
            return
        entity["url"] = attrs["href"]
    elif name == "pre" and tag.get("language"):
        entity["language"] = tag["language"]
    elif name == "tg-emoji":
        entity["custom_emoji_id"] = attrs.get("emoji-id", "")
    elif name == "blockquote" and "expandable" in attrs:
        entity["type"] = "expandable_blockquote"
    entities.append(entity)


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart request."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Call:
    """One HTTP request the fake received, whatever the outcome."""

    method: str
    params: dict[str, Any]
    files: dict[str, UploadedFile]
    status: int = 0
    response: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0  # time.monotonic() when received


@dataclass
class SentMessage:
    """A message the fake accepted (text or document), as it stands now (edits applied)."""

    chat_id: int | str
    message_id: int
    thread_id: int | None
    text: str | None  # plain text after entity parsing (what users see)
    raw_text: str | None  # text exactly as sent
    parse_mode: str | None
    entities: list[dict[str, Any]]
    document: UploadedFile | None = None
    caption: str | None = None
    raw_caption: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    json: dict[str, Any] = field(default_factory=dict)


class ApiError(Exception):
    """An error answer: HTTP status, description and optional parameters."""

    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


class FakeBotAPI:
    """Fake Bot API: routes /bot<TOKEN>/<method>, records calls, injects faults."""

    def __init__(
        self, token: str = "123456:FAKE-token_for-tests", *, max_long_poll: float = 1.0
    ) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else 1
        self.max_long_poll = max_long_poll
        self._lock = threading.Lock()
        self._updates_cond = threading.Condition(self._lock)
        self._calls: list[Call] = []
        self._sent: dict[tuple[int | str, int], SentMessage] = {}
        self._next_msg_id: dict[int | str, itertools.count[int]] = defaultdict(
            lambda: itertools.count(1)
        )
        self._updates: deque[dict[str, Any]] = deque()
        self._next_update_id = itertools.count(1)
        self._next_file = itertools.count(1)
        self._faults: dict[str, deque[ApiError]] = defaultdict(deque)
        self._delays: dict[str, deque[float]] = defaultdict(deque)
        self.commands: list[dict[str, Any]] = []
        self.webhook_url = ""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._handlers: dict[str, Callable[[dict[str, Any], dict[str, UploadedFile]], Any]] = {
            "getme": self._get_me,
            "sendmessage": self._send_message,
            "senddocument": self._send_document,
            "editmessagetext": self._edit_message_text,
            "deletemessage": self._delete_message,
            "getupdates": self._get_updates,
            "deletewebhook": self._delete_webhook,
            "setwebhook": self._set_webhook,
            "setmycommands": self._set_my_commands,
            "getmycommands": lambda p, f: list(self.commands),
            "answercallbackquery": self._answer_callback_query,
            "sendchataction": lambda p, f: True,
        }

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Root URL to use as TELEGRAM_API_URL (the client adds /bot<TOKEN>/<method>)."""
        if self._server is None:
            raise RuntimeError("FakeBotAPI is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeBotAPI":
        """Listen on a free port of 127.0.0.1 in a daemon thread."""
        handler = type("_Handler", (_Handler,), {"api": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.01,), name="fake-telegram", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and wake any long poll."""
        with self._updates_cond:
            self._updates_cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> "FakeBotAPI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test helpers ----------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every request received so far, in order (a copy)."""
        with self._lock:
            return list(self._calls)

    def calls_of(self, method: str) -> list[Call]:
        """Requests to one method (any outcome), in order."""
        return [c for c in self.calls if c.method.lower() == method.lower()]

    def messages(self, chat_id: int | str | None = None) -> list[SentMessage]:
        """Accepted text messages (optionally of one chat), in sending order."""
        return [m for m in self._all_sent(chat_id) if m.document is None]

    def documents(self, chat_id: int | str | None = None) -> list[SentMessage]:
        """Accepted documents (optionally of one chat), in sending order."""
        return [m for m in self._all_sent(chat_id) if m.document is not None]

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an Update for getUpdates; assigns update_id when missing and returns it."""
        with self._updates_cond:
            update = dict(update)
            if "update_id" not in update:
                update["update_id"] = next(self._next_update_id)
            self._updates.append(update)
            self._updates_cond.notify_all()
            return int(update["update_id"])

    def inject_429(self, method: str, retry_after: int, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with a flood-control 429."""
        err = ApiError(
            429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
        )
        with self._lock:
            self._faults[method.lower()].extend([err] * times)

    def inject_error(
        self,
        method: str,
        status: int,
        description: str,
        times: int = 1,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` with this error."""
        with self._lock:
            self._faults[method.lower()].extend([ApiError(status, description, parameters)] * times)

    def inject_delay(self, method: str, seconds: float, times: int = 1) -> None:
        """Delay the next `times` calls of `method` (then answer normally)."""
        with self._lock:
            self._delays[method.lower()].extend([seconds] * times)

    # -- request handling ------------------------------------------------------------------

    def _all_sent(self, chat_id: int | str | None) -> list[SentMessage]:
        with self._lock:
            sent = list(self._sent.values())
        return [m for m in sent if chat_id is None or m.chat_id == chat_id]

    def handle(self, path: str, params: dict[str, Any], files: dict[str, UploadedFile]) -> tuple[int, dict[str, Any]]:
        """Route one request; returns (HTTP status, JSON answer)."""
        m = re.fullmatch(r"/bot([^/]+)/([A-Za-z]+)", path)
        call = Call(method=m.group(2) if m else path, params=params, files=files, at=time.monotonic())
        with self._lock:
            self._calls.append(call)
        if not m:
            status, body = 404, {"ok": False, "error_code": 404, "description": "Not Found"}
        elif m.group(1) != self.token:
            status, body = 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
        else:
            status, body = self._dispatch(m.group(2).lower(), params, files)
        call.status, call.response = status, body
        return status, body

    def _dispatch(
        self, method: str, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            delay = self._delays[method].popleft() if self._delays[method] else 0.0
            fault = self._faults[method].popleft() if self._faults[method] else None
        if delay:
            time.sleep(delay)
        handler = self._handlers.get(method)
        try:
            if fault is not None:
                raise fault
            if handler is None:
                raise ApiError(404, "Not Found")
            return 200, {"ok": True, "result": handler(params, files)}
        except ApiError as err:
            body: dict[str, Any] = {
                "ok": False, "error_code": err.status, "description": err.description,
            }
            if err.parameters:
                body["parameters"] = err.parameters
            return err.status, body

    # -- methods ---------------------------------------------------------------------------

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id, "is_bot": True, "first_name": "Fake Bot", "username": "fake_bot",
            "can_join_groups": True, "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _get_me(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        return self._bot_user()

    @staticmethod
    def _chat(chat_id: Any) -> dict[str, Any]:
        if isinstance(chat_id, int) and chat_id > 0:
            return {"id": chat_id, "type": "private", "first_name": "Test User"}
        if isinstance(chat_id, int):
            return {"id": chat_id, "type": "supergroup", "title": "Fake group", "is_forum": True}
        return {"id": -1001, "type": "channel", "title": str(chat_id), "username": str(chat_id).lstrip("@")}

    @staticmethod
    def _parse(text: str, parse_mode: str | None, limit: int, what: str) -> tuple[str, list[dict[str, Any]]]:
        mode = (parse_mode or "").lower()
        if mode == "html":
            try:
                plain, entities = parse_telegram_html(text)
            except TelegramHtmlError as exc:
                raise ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
        elif mode in ("", "markdown", "markdownv2"):
            plain, entities = text, []  # Markdown is not validated by this fake
        else:
            raise ApiError(400, "Bad Request: unsupported parse_mode")
        if utf16_len(plain) > limit:
            raise ApiError(400, f"Bad Request: {what} is too long")
        return plain, entities

    def _new_message(
        self, params: dict[str, Any], **content: Any
    ) -> tuple[int | str, int, dict[str, Any]]:
        chat_id = params.get("chat_id")
        if chat_id in (None, ""):
            raise ApiError(400, "Bad Request: chat_id is empty")
        thread_id = params.get("message_thread_id")
        with self._lock:
            message_id = next(self._next_msg_id[chat_id])
        msg: dict[str, Any] = {
            "message_id": message_id, "date": int(time.time()), "chat": self._chat(chat_id),
            "from": self._bot_user(),
        }
        if thread_id is not None:
            msg["message_thread_id"] = thread_id
            msg["is_topic_message"] = True
        if isinstance(params.get("reply_markup"), dict) and "inline_keyboard" in params["reply_markup"]:
            msg["reply_markup"] = params["reply_markup"]
        msg.update({k: v for k, v in content.items() if v not in (None, [])})
        return chat_id, message_id, msg

    def _send_message(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        raw = params.get("text")
        if not isinstance(raw, str) or not raw.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        plain, entities = self._parse(raw, params.get("parse_mode"), MAX_TEXT, "message")
        if not plain.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        chat_id, message_id, msg = self._new_message(params, text=plain, entities=entities)
        sent = SentMessage(
            chat_id=chat_id, message_id=message_id, thread_id=params.get("message_thread_id"),
            text=plain, raw_text=raw, parse_mode=params.get("parse_mode"), entities=entities,
            params=params, json=msg,
        )
        with self._lock:
            self._sent[(chat_id, message_id)] = sent
        return msg

    def _send_document(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        doc = params.get("document")
        upload = files.get("document")
        if isinstance(doc, str) and doc.startswith("attach://"):
            upload = files.get(doc[len("attach://"):])
        if upload is None and not doc:
            raise ApiError(400, "Bad Request: there is no document in the request")
        if upload is None:  # a file_id or URL: pretend we know it
            upload = UploadedFile("document", None, None, b"")
        raw_caption = params.get("caption")
        caption, caption_entities = (None, [])
        if raw_caption:
            caption, caption_entities = self._parse(
                raw_caption, params.get("parse_mode"), MAX_CAPTION, "message caption"
            )
        with self._lock:
            n = next(self._next_file)
        document = {
            "file_id": f"fake-file-{n}", "file_unique_id": f"fake-unique-{n}",
            "file_name": upload.filename, "mime_type": upload.content_type,
            "file_size": len(upload.data),
        }
        chat_id, message_id, msg = self._new_message(
            params, document={k: v for k, v in document.items() if v is not None},
            caption=caption, caption_entities=caption_entities,
        )
        sent = SentMessage(
            chat_id=chat_id, message_id=message_id, thread_id=params.get("message_thread_id"),
            text=None, raw_text=None, parse_mode=params.get("parse_mode"), entities=caption_entities,
            document=upload, caption=caption, raw_caption=raw_caption, params=params, json=msg,
        )
        with self._lock:
            self._sent[(chat_id, message_id)] = sent
        return msg

    def _edit_message_text(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        key = (params.get("chat_id"), params.get("message_id"))
        with self._lock:
            sent = self._sent.get(key)  # type: ignore[arg-type]
        if sent is None or sent.document is not None:
            raise ApiError(400, "Bad Request: message to edit not found")
        raw = params.get("text")
        if not isinstance(raw, str) or not raw.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        plain, entities = self._parse(raw, params.get("parse_mode"), MAX_TEXT, "message")
        if plain == sent.text and entities == sent.entities:
            raise ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message",
            )
        with self._lock:
            sent.text, sent.raw_text, sent.entities = plain, raw, entities
            sent.parse_mode = params.get("parse_mode")
            sent.json = dict(sent.json, text=plain, entities=entities, edit_date=int(time.time()))
            if not entities:
                sent.json.pop("entities")
            return sent.json

    def _delete_message(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        with self._lock:
            if self._sent.pop((params.get("chat_id"), params.get("message_id")), None) is None:  # type: ignore[arg-type]
                raise ApiError(400, "Bad Request: message to delete not found")
        return True

    def _get_updates(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        # Long polling (https://core.telegram.org/bots/api#getupdates), capped to keep tests fast.
        deadline = time.monotonic() + min(float(params.get("timeout") or 0), self.max_long_poll)
        with self._updates_cond:
            while True:
                # An offset confirms (forgets) every update below it.
                while self._updates and self._updates[0]["update_id"] < offset:
                    self._updates.popleft()
                if self._updates or self._server is None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._updates_cond.wait(remaining)
            return list(itertools.islice(self._updates, limit))

    def _delete_webhook(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        self.webhook_url = ""
        return True

    def _set_webhook(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        self.webhook_url = str(params.get("url") or "")
        return True

    def _set_my_commands(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise ApiError(400, "Bad Request: commands are invalid")
        for cmd in commands:
            # https://core.telegram.org/bots/api#botcommand
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(cmd.get("command", ""))):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(cmd.get("description", ""))) <= 256:
                raise ApiError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        self.commands = [dict(c) for c in commands]
        return True

    def _answer_callback_query(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        if not params.get("callback_query_id"):
            raise ApiError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        if len(str(params.get("text") or "")) > 200:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        return True


def _coerce(name: str, value: str) -> Any:
    """Form and multipart values are strings; PTB JSON-encodes non-string ones."""
    if name in _STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, Any], dict[str, UploadedFile]]:
    header = email.message.Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str):
        raise ApiError(400, "Bad Request: multipart boundary is missing")
    params: dict[str, Any] = {}
    files: dict[str, UploadedFile] = {}
    for section in body.split(b"--" + boundary.encode())[1:]:
        if section.startswith(b"--"):
            break
        section = section.removeprefix(b"\r\n")
        head, _, content = section.partition(b"\r\n\r\n")
        content = content.removesuffix(b"\r\n")
        part = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(head + b"\r\n\r\n")
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        if not isinstance(name, str):
            continue
        if filename is not None:
            files[name] = UploadedFile(name, filename, part.get_content_type(), content)
        else:
            params[name] = _coerce(name, content.decode("utf-8"))
    return params, files


class _Server(ThreadingHTTPServer):
    """Threaded server that stays quiet when a client hung up (timeout tests do that on purpose)."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler; the route logic lives in FakeBotAPI."""

    api: FakeBotAPI
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # keep test output clean

    def _serve(self) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ctype = self.headers.get("Content-Type", "")
        params: dict[str, Any] = {k: _coerce(k, v) for k, v in parse_qsl(url.query)}
        files: dict[str, UploadedFile] = {}
        try:
            if ctype.startswith("application/json") and body:
                data = json.loads(body)
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                params.update(data)
            elif ctype.startswith("application/x-www-form-urlencoded"):
                params.update({k: _coerce(k, v) for k, v in parse_qsl(body.decode("utf-8"))})
            elif ctype.startswith("multipart/form-data"):
                more, files = _parse_multipart(body, ctype)
                params.update(more)
            status, answer = self.api.handle(url.path, params, files)
        except ApiError as err:
            status, answer = err.status, {"ok": False, "error_code": err.status, "description": err.description}
        except ValueError as err:
            status, answer = 400, {"ok": False, "error_code": 400, "description": f"Bad Request: {err}"}
        except Exception as err:  # a bug in the fake: make it visible in the client's error
            status, answer = 500, {"ok": False, "error_code": 500, "description": f"fake bug: {err!r}"}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
