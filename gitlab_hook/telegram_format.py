"""Telegram HTML: escaping helpers and splitting long text without breaking tags or entities."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

# https://core.telegram.org/bots/api#sendmessage (text limit).
MAX_TEXT = 4096
LONG_TEXT_FILENAME = "message.txt"

# --------------------------------------------------------------------------------------------
# HTML helpers (https://core.telegram.org/bots/api#html-style)


def escape(text: str) -> str:
    """Escape <, > and & for Telegram HTML (quotes stay as they are)."""
    return html.escape(text, quote=False)


def pre(text: str, language: str | None = None) -> str:
    """A preformatted block holding `text` verbatim, optionally with a language for highlighting."""
    if language:
        return f'<pre><code class="language-{html.escape(language)}">{escape(text)}</code></pre>'
    return f"<pre>{escape(text)}</pre>"


def code(text: str) -> str:
    """Inline monospace text."""
    return f"<code>{escape(text)}</code>"


def link(url: str, text: str) -> str:
    """A link with visible `text`."""
    return f'<a href="{html.escape(url, quote=True)}">{escape(text)}</a>'


def to_plain(html_text: str) -> str:
    """Drop the tags and unescape the entities: what a reader sees, as plain text."""
    return html.unescape(_TAG_RE.sub("", html_text))


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


# --------------------------------------------------------------------------------------------
# Splitting long text. Telegram counts the limit after entity parsing; we count UTF-16 code
# units (never fewer than characters), so a part we accept is short enough either way.

_TAG_RE = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)(?:\s[^<>]*)?(/?)>")
_HTML_TOKEN_RE = re.compile(
    r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)(?:\s[^<>]*)?(/?)>"
    r"|&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[a-zA-Z][a-zA-Z0-9]*);"
    r"|\n"
)


@dataclass(frozen=True)
class _Tok:
    raw: str
    width: int  # visible UTF-16 units
    kind: str  # "text", "entity", "open", "close", "void"
    name: str = ""


def _tokenize(text: str, html_mode: bool) -> list[_Tok]:
    tokens: list[_Tok] = []
    pattern = _HTML_TOKEN_RE if html_mode else re.compile(r"\n")
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            chunk = text[pos : m.start()]
            tokens.append(_Tok(chunk, utf16_len(chunk), "text"))
        raw = m.group(0)
        if raw == "\n":
            tokens.append(_Tok(raw, 1, "text"))
        elif raw.startswith("&"):
            tokens.append(_Tok(raw, utf16_len(html.unescape(raw)), "entity"))
        else:
            closing, name, selfclosing = m.group(1), m.group(2).lower(), m.group(3)
            kind = "void" if selfclosing else ("close" if closing else "open")
            tokens.append(_Tok(raw, 0, kind, name))
        pos = m.end()
    if pos < len(text):
        tokens.append(_Tok(text[pos:], utf16_len(text[pos:]), "text"))
    return tokens


def _lines(tokens: list[_Tok]) -> list[list[_Tok]]:
    lines: list[list[_Tok]] = [[]]
    for tok in tokens:
        lines[-1].append(tok)
        if tok.raw == "\n":
            lines.append([])
    return [line for line in lines if line]


def _cut(text: str, room: int) -> tuple[str, str]:
    """Longest head of `text` within `room` UTF-16 units, and the rest."""
    used = 0
    for i, ch in enumerate(text):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > room:
            return text[:i], text[i:]
    return text, ""


class _Splitter:
    """Greedy packer: whole lines while they fit; tags open at a cut are closed and reopened."""

    def __init__(self, limit: int) -> None:
        if limit < 16:
            raise ValueError("limit is too small")
        self.limit = limit
        self.parts: list[str] = []
        self.stack: list[_Tok] = []  # open tags at the current point
        self.cur: list[_Tok] = []
        self.width = 0
        self.has_content = False

    def add_line(self, line: list[_Tok]) -> None:
        width = sum(t.width for t in line)
        if self.width + width > self.limit and self.width > 0:
            self.flush()
        if self.width + width <= self.limit:
            for tok in line:
                self.put(tok)
            return
        # One line longer than a whole message: cut between tokens, or inside plain text.
        for tok in line:
            if tok.kind != "text":
                if self.width + tok.width > self.limit:
                    self.flush()
                self.put(tok)
                continue
            rest = tok.raw
            while rest:
                head, rest = _cut(rest, self.limit - self.width)
                if not head and self.width == 0:  # cannot happen with limit >= 2; stay safe
                    head, rest = rest[0], rest[1:]
                if head:
                    self.put(_Tok(head, utf16_len(head), "text"))
                if rest:
                    self.flush()

    def put(self, tok: _Tok) -> None:
        if tok.kind == "open":
            self.stack.append(tok)
        elif tok.kind == "close":
            names = [t.name for t in self.stack]
            if tok.name in names:
                del self.stack[len(names) - 1 - names[::-1].index(tok.name) :]
        self.cur.append(tok)
        self.width += tok.width
        if tok.kind == "entity" or (tok.kind == "text" and tok.raw.strip()):
            self.has_content = True

    def flush(self) -> None:
        toks = self.cur
        # Drop the newline at the cut: Telegram trims trailing whitespace anyway.
        for i in range(len(toks) - 1, -1, -1):
            if toks[i].width:
                if toks[i].raw == "\n":
                    del toks[i]
                break
        if self.has_content:  # a whitespace-only part would be rejected as empty
            closing = "".join(f"</{t.name}>" for t in reversed(self.stack))
            self.parts.append("".join(t.raw for t in toks) + closing)
        self.cur = list(self.stack)  # reopen what is still open, attributes included
        self.width = 0
        self.has_content = False


def split_message(text: str, limit: int = MAX_TEXT, *, html_mode: bool = True) -> list[str]:
    """Split text into parts of at most `limit` visible units at line boundaries, each valid HTML."""
    splitter = _Splitter(limit)
    for line in _lines(_tokenize(text, html_mode)):
        splitter.add_line(line)
    splitter.flush()
    return splitter.parts


def truncate_html(text: str, limit: int, *, html_mode: bool = True) -> str:
    """The text cut to `limit` visible units (tags kept balanced), with … when something was cut."""
    parts = split_message(text, limit, html_mode=html_mode)
    if len(parts) <= 1:
        return parts[0] if parts else text
    return split_message(text, limit - 1, html_mode=html_mode)[0] + "…"


@dataclass(frozen=True)
class Outgoing:
    """One planned send: a message (`text`) or a document (`filename`, `data`)."""

    text: str | None = None
    filename: str | None = None
    data: bytes = b""


def plan_text(text: str, *, html_mode: bool, max_parts: int, limit: int = MAX_TEXT) -> list[Outgoing]:
    """What to send for `text`: up to max_parts messages, else a head message plus a .txt file."""
    parts = split_message(text, limit, html_mode=html_mode)
    if len(parts) <= max_parts:
        return [Outgoing(text=p) for p in parts]
    note = f"\n… too long for chat: the whole text is in {LONG_TEXT_FILENAME}"
    head = split_message(text, limit - utf16_len(note), html_mode=html_mode)[0] + note
    whole = to_plain(text) if html_mode else text
    return [Outgoing(text=head), Outgoing(filename=LONG_TEXT_FILENAME, data=whole.encode("utf-8"))]
