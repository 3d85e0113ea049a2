"""Secret masking for logs that leave the cluster (Telegram messages and attached files).

Every built-in pattern is written to run in linear time on a megabyte of hostile text:

- a pattern that starts with a run of characters has a negative look-behind for that run, so a
  match can only start at the beginning of a run, never at each of its characters;
- repeats are possessive (``{m,n}+``, Python 3.11+) or bounded, so a failed attempt does not
  backtrack through a long run;
- private key blocks are found by a single forward scan over their markers, not by a regex
  that searches for the end marker from every begin marker.

Patterns from the rules file (``migrations.redact_patterns``) cannot be proven safe, so they are
checked when the Redactor is built (nested unbounded repeats such as ``(a+)+`` and patterns that
match the empty string are refused) and applied line by line, long lines in overlapping windows of
``USER_PATTERN_WINDOW`` characters (a match up to half a window long is always found), which bounds
what a slow pattern can cost. A user pattern with a group masks only group 1, else the whole match.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable

MASK = "***"

# User patterns see at most this many characters at once (a line, or a window of a long line).
USER_PATTERN_WINDOW = 1024

# --- key = value, key: value, "key": "value", <key>value</key>, --key value ----------------

_KEYWORDS = (
    r"password|passwd|passphrase|pwd|token|secret|api[_-]?key|access[_-]?key|private[_-]?key"
)
# Characters a key name may carry after its keyword: DB_PASSWORD_FILE, api_key_id, secret.value.
_KEY_SUFFIX = r"[A-Za-z0-9_.\-]{0,40}+"
# What may stand between key and value: a closing quote, spaces, one of = : => :=.
_DELIM = r"[\"']?[ \t]{0,5}+(?:=>|:=|=|:)[ \t]{0,5}+"

_KV = re.compile(
    rf"(?P<key>(?i:{_KEYWORDS}){_KEY_SUFFIX}{_DELIM})"
    r"(?:"
    r"\"(?P<dq>(?:[^\"\\\r\n]|\\.){1,4096}+)\""  # "double quoted", escapes allowed
    r"|'(?P<sq>[^'\r\n]{1,4096}+)'"  # 'single quoted'
    r"|(?P<q>[\"']?)(?P<bare>[^\s\"'&;]{1,4096}+)"  # bare (or an unclosed quote): ends at space, quote, & or ;
    r")"
)
# A bare value after ':' is YAML or a header: the rest of the line is the value.
_AFTER_COLON = re.compile(r"[^\r\n]{0,4096}+")

_XML = re.compile(
    rf"(?P<open><(?P<tag>[A-Za-z0-9_.\-]{{0,40}}(?i:{_KEYWORDS})[A-Za-z0-9_.\-]{{0,40}})>)"
    r"(?P<value>[^<\r\n]{1,4096}+)(?=</)"
)

_CLI_FLAG = re.compile(
    r"(?<![\w-])--(?:[a-z0-9]{1,20}+-){0,3}+"
    r"(?i:password|passwd|token|secret|api-key|apikey|access-key)"
    r"(?P<sep>[ \t]{1,5}+)(?P<value>[^\s-][^\s]{0,511}+)"
)
_CURL_USER = re.compile(r"(?<![\w-])(?:-u|--user)[ \t]{1,5}+[^\s:]{1,256}+:(?P<value>[^\s]{1,512}+)")

# --- credentials inside URLs: scheme://user:PASSWORD@host ------------------------------------

_URL_CREDENTIALS = re.compile(
    r"(?<![A-Za-z0-9+.\-])(?P<pre>[A-Za-z][A-Za-z0-9+.\-]{0,30}+://[^\s:/@\"'<>]{0,256}+:)"
    # Up to the last '@' before the first '/', so a password holding '@' is masked whole; else, for
    # a password holding an unencoded '/', up to the first '@'. A host must follow.
    r"(?P<value>[^\s/\"'<>]{1,256}(?=@[^\s@/\"'<>])|[^\s\"'<>@]{1,256}+(?=@[^\s@/\"'<>]))"
)

# --- HTTP authorization ------------------------------------------------------------------------

_AUTH_HEADER = re.compile(
    r"(?<![\w-])(?P<pre>(?i:proxy-authorization|authorization)[\"']?[ \t]{0,5}+[:=][ \t]{0,5}+[\"']?"
    r"(?:(?i:bearer|basic|token|bot|digest|negotiate|ntlm|apikey|key|oauth)[ \t]{1,5}+)?)"
    r"(?P<value>[^\s\"',;]{1,8192}+)"
)
_BEARER = re.compile(r"(?<![\w-])(?P<pre>(?i:bearer)[ \t]{1,5}+)(?P<value>[A-Za-z0-9._~+/=\-]{8,8192}+)")
# "Basic" is an English word: mask what follows only when it is base64 of "user:password".
_BASIC = re.compile(r"(?<![\w-])(?P<pre>(?i:basic)[ \t]{1,5}+)(?P<value>[A-Za-z0-9+/]{6,4096}+={0,2}+)(?![\w+/=])")

# --- tokens recognisable by their shape --------------------------------------------------------

_SHAPED: tuple[re.Pattern[str], ...] = (
    # JWT: header.payload.signature, base64url, the header always starts with '{"' = eyJ.
    re.compile(r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{1,4096}+\.[A-Za-z0-9_\-]{1,65536}+\.[A-Za-z0-9_\-]{0,4096}+"),
    # GitLab tokens: personal/project/group (glpat), OAuth (gloas), deploy (gldt), runner (glrt,
    # glrtr), CI job (glcbt), trigger (glptt), feed (glft), incoming mail (glimt), agent (glagent),
    # SCIM (glsoat), feature flags (glffct), workspace (glwt); runner registration (GR1348941...).
    re.compile(
        r"(?<![A-Za-z0-9_\-])(?:gl(?:pat|oas|dt|rtr|rt|cbt|ptt|ft|imt|agent|soat|ffct|wt)-[A-Za-z0-9_.\-]{16,}+"
        r"|GR1348941[A-Za-z0-9_\-]{16,}+)"
    ),
    # AWS access key ids (long-term AKIA, temporary ASIA).
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"),
    # Telegram bot tokens: bot id, ':', 35 characters starting with AA (also inside /bot<token>/).
    re.compile(r"(?<![0-9])[0-9]{5,12}+:AA[A-Za-z0-9_\-]{30,64}+(?![A-Za-z0-9_\-])"),
)

# --- private key blocks ------------------------------------------------------------------------

_PEM_MARKER = re.compile(r"-----(?P<kind>BEGIN|END) (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----")
# A line of a key body: 16+ base64 characters, or a shorter one that is not just a word ("Done").
_B64_LINE = r"(?:[A-Za-z0-9+/=]{16,200}+|[A-Za-z]{0,15}+[0-9+/=][A-Za-z0-9+/=]{0,14}+)"
# What an unterminated block's body looks like: base64 on the marker's line (also with JSON "\n"
# escapes), then whole lines of base64, PEM headers or nothing.
_PEM_BODY = re.compile(
    r"(?:[A-Za-z0-9+/=]|\\[nr])*+"
    rf"(?:\r?\n[ \t]*+(?:{_B64_LINE}|(?:Proc-Type|DEK-Info|Comment|Version|Hash):[^\r\n]{{0,300}}+)?"
    r"[ \t]*+(?=\r?\n|$))*+"
)
_PEM_BODY_LINE = re.compile(rf"[ \t]*{_B64_LINE}[ \t]*\r?")


def _sub_group(pattern: re.Pattern[str], text: str, group: str = "value") -> str:
    """Replace one named group of every match by the mask, keeping the rest of the match."""

    def repl(m: re.Match[str]) -> str:
        start, end = m.span(group)
        base = m.start()
        whole = m.group(0)
        return whole[: start - base] + MASK + whole[end - base :]

    return pattern.sub(repl, text)


def _mask_kv(m: re.Match[str]) -> str:
    """The key/value match with its value masked, quotes kept."""
    key = m.group("key")
    if m.group("dq") is not None:
        return f'{key}"{MASK}"'
    if m.group("sq") is not None:
        return f"{key}'{MASK}'"
    return key + (m.group("q") or "") + MASK


def _mask_basic(m: re.Match[str]) -> str:
    """Mask a 'Basic' credential only when it decodes to user:password."""
    value = m.group("value")
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return m.group(0)
    # user:password is printable text; a word that happens to be base64 decodes to noise.
    if b":" not in decoded or not all(0x20 <= b < 0x7F for b in decoded):
        return m.group(0)
    return m.group("pre") + MASK


def _mask_bearer(m: re.Match[str]) -> str:
    """Mask a token after a bare 'Bearer' when it looks like one (prose: "bearer of bad news")."""
    value = m.group("value")
    if len(value) < 20 and value.rstrip(".-=/").isalpha():
        return m.group(0)
    return m.group("pre") + MASK


def _redact_kv(text: str) -> str:
    """Mask key/value pairs; a bare value after ':' extends to the end of its line."""
    out: list[str] = []
    pos = 0
    for m in _KV.finditer(text):
        if m.start() < pos:
            continue  # inside the rest of a line already masked
        value = m.group("dq") or m.group("sq") or m.group("bare") or ""
        if value.startswith(MASK):
            continue  # a more precise rule got here first (user:***@host, Bearer ***)
        out.append(text[pos : m.start()])
        pos = m.end()
        if m.group("bare") is not None and m.group("key").rstrip(" \t").endswith(":"):
            pos = _AFTER_COLON.match(text, pos).end()
        out.append(_mask_kv(m))
    out.append(text[pos:])
    return "".join(out)


def _redact_pem(text: str) -> str:
    """Mask the bodies of private key blocks, also unterminated ones and ones cut off at the top."""
    if "PRIVATE KEY" not in text:
        return text
    spans: list[tuple[int, int, str]] = []  # (start, end, replacement), in order
    open_at: int | None = None  # end of a BEGIN marker still waiting for its END
    floor = 0  # end of the previous marker: a backward scan never crosses it

    def unterminated(start: int, limit: int) -> None:
        body = _PEM_BODY.match(text, start, limit)
        if body and body.end() > start:
            spans.append((start, body.end(), f"\n{MASK}" if "\n" in body.group(0) else MASK))

    for m in _PEM_MARKER.finditer(text):
        if m.group("kind") == "BEGIN":
            if open_at is not None:
                unterminated(open_at, m.start())
            open_at = m.end()
        elif open_at is not None:
            body = text[open_at : m.start()]
            spans.append((open_at, m.start(), f"\n{MASK}\n" if "\n" in body else MASK))
            open_at = None
        else:
            # An END whose BEGIN was cut off (a log tail): mask the base64 lines right above it.
            pos = m.start()
            while pos > floor and text[pos - 1] == "\n":
                nl = text.rfind("\n", floor, pos - 1)
                line_start = nl + 1 if nl >= 0 else floor
                if not _PEM_BODY_LINE.fullmatch(text, line_start, pos - 1):
                    break
                pos = line_start
            if pos < m.start():
                spans.append((pos, m.start(), f"{MASK}\n"))
        floor = m.end()
    if open_at is not None:
        unterminated(open_at, len(text))
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for start, end, replacement in spans:
        out.append(text[pos:start])
        out.append(replacement)
        pos = end
    out.append(text[pos:])
    return "".join(out)


# --- user patterns -----------------------------------------------------------------------------

try:  # The parser is internal to the re package; without it the check below is skipped.
    import re._constants as _sre_c
    import re._parser as _sre_parse
except ImportError:  # pragma: no cover - other Python versions
    _sre_parse = None  # type: ignore[assignment]
    _sre_c = None  # type: ignore[assignment]


def _nested_repeat(items: Iterable, inside_unbounded: bool) -> bool:
    """True when an unbounded repeat sits inside another one (the classic catastrophic form)."""
    c = _sre_c
    for op, av in items:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            _lo, hi, sub = av
            unbounded = hi == c.MAXREPEAT or hi > 1000
            if unbounded and inside_unbounded and op != c.POSSESSIVE_REPEAT:
                return True
            if _nested_repeat(sub, inside_unbounded or (unbounded and op != c.POSSESSIVE_REPEAT)):
                return True
        elif op == c.SUBPATTERN:
            if _nested_repeat(av[-1], inside_unbounded):
                return True
        elif op == c.BRANCH:
            if any(_nested_repeat(alt, inside_unbounded) for alt in av[1]):
                return True
        elif op in (c.ASSERT, c.ASSERT_NOT):
            if _nested_repeat(av[1], inside_unbounded):
                return True
        elif op == c.GROUPREF_EXISTS:
            if any(_nested_repeat(alt, inside_unbounded) for alt in av[1:] if alt is not None):
                return True
        # ATOMIC_GROUP never backtracks from outside: its content is checked on its own.
        elif op == getattr(c, "ATOMIC_GROUP", None):
            if _nested_repeat(av, False):
                return True
    return False


def validate_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a user redaction pattern or raise ValueError saying what is wrong with it."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"redact pattern {pattern!r} is not a valid regular expression: {exc}") from None
    if compiled.match("") is not None:
        raise ValueError(f"redact pattern {pattern!r} matches the empty string")
    if _sre_parse is not None and _nested_repeat(_sre_parse.parse(pattern), False):
        raise ValueError(
            f"redact pattern {pattern!r} nests an unbounded repeat inside another one (like (a+)+), "
            "which can take exponential time on a long log line; rewrite it without the nesting"
        )
    return compiled


def _mask_user_match(m: re.Match[str]) -> str:
    """Mask group 1 of a user pattern that has groups, else the whole match."""
    if m.re.groups == 0:
        return MASK if m.group(0) else ""
    start, end = m.span(1)
    if start < 0 or start == end:
        return m.group(0)
    base = m.start()
    whole = m.group(0)
    return whole[: start - base] + MASK + whole[end - base :]


def _apply_per_line(pattern: re.Pattern[str], text: str, window: int) -> str:
    """Apply a pattern to each line; a long line in windows, twice, the second time shifted by half.

    A match up to window/2 characters long lies wholly inside a window of one of the two passes,
    and a pattern that is quadratic in its input costs O(len × window) instead of O(len²).
    """
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        if len(line) <= window:
            out.append(pattern.sub(_mask_user_match, line))
            continue
        for offset in (0, window // 2):
            pieces = [line[:offset]] if offset else []
            pieces += [pattern.sub(_mask_user_match, line[i : i + window]) for i in range(offset, len(line), window)]
            line = "".join(pieces)
        out.append(line)
    return "".join(out)


class Redactor:
    """Masks credentials in free text with '***', keeping enough around them to stay readable."""

    def __init__(self, extra_patterns: Iterable[str | re.Pattern[str]] = ()) -> None:
        """Build with the rules file's extra patterns (ValueError names a bad one)."""
        self._extra = [
            validate_pattern(p.pattern if isinstance(p, re.Pattern) else p) for p in extra_patterns
        ]
        self._steps: list[Callable[[str], str]] = [
            _redact_pem,
            *(lambda t, p=p: p.sub(MASK, t) for p in _SHAPED),
            lambda t: _sub_group(_URL_CREDENTIALS, t),
            lambda t: _sub_group(_AUTH_HEADER, t),
            lambda t: _BEARER.sub(_mask_bearer, t),
            lambda t: _BASIC.sub(_mask_basic, t),
            lambda t: _sub_group(_CURL_USER, t),
            lambda t: _sub_group(_CLI_FLAG, t),
            lambda t: _sub_group(_XML, t),
            _redact_kv,
        ]

    def redact(self, text: str) -> str:
        """Return text with every recognised secret replaced by '***'."""
        if not text:
            return text
        for step in self._steps:
            text = step(text)
        for pattern in self._extra:
            text = _apply_per_line(pattern, text, USER_PATTERN_WINDOW)
        return text

    __call__ = redact
