"""The ChatOps commands: the table, the original chatops aliases, parsing and usage texts. Pure.

``parse(text)`` turns one chat or console line into a ``Command`` with typed, validated
arguments, returns None for text that is not meant for us, or raises ``UsageError`` /
``UnknownCommand`` whose text is the answer to give (with the usage line).

Accepted forms, for every command:

- ``/vm_stop buildfront`` and ``/vm_stop@our_bot buildfront`` (groups); ``!vm_stop buildfront`` (console,
  errbot's text mode); a command addressed to another bot (``/vm_stop@other_bot``) is not ours.
- The original chatops forms: ``/stop_vm --name_vm buildfront``, ``/upgrade_vm --name_vm x --core 4
  --mem 8 --fraction 50``, ``/list build vm``, ``man``, ``helps``. Options also work as ``--core=4``,
  and phones that turn ``--`` into a dash (``—core``) are forgiven.
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable

from gitlab_hook.durations import format_duration, parse_duration
from gitlab_hook.gitlab_api import GitLabInvalidInput, validate_branch, validate_project
from gitlab_hook.rules import NAMESPACE_RE, VM_NAME_RE
from gitlab_hook.telegram_format import escape

ANYONE = "anyone"  # even outside the allowed chats (/whoami: how people learn their id)
MEMBER = "member"  # anyone in an allowed chat (/help)
MAX_KEEP_SECONDS = 24 * 3600
MAX_REPORT_DAYS = 90
DEFAULT_REPORT_DAYS = 7
MAX_CORES = 96
MAX_MEMORY_GB = 1536


@dataclass(frozen=True)
class Param:
    """One argument: its name in usage texts, how it is read, and whether it may be left out."""

    key: str
    label: str
    convert: Callable[[str], Any]
    optional: bool = False
    default: Any = None


@dataclass(frozen=True)
class Spec:
    """One command of the design's table."""

    name: str
    summary: str
    need: str  # ANYONE, MEMBER, or a role: viewer | operator | admin
    params: tuple[Param, ...] = ()
    aliases: tuple[str, ...] = ()  # other command words (without the slash)
    alias_usage: str = ""  # the original chatops form, shown in usage texts
    flags: dict[str, str] = field(default_factory=dict)  # --option → param key
    confirm: bool = False
    changes_state: bool = False
    hidden_aliases: tuple[str, ...] = ()  # accepted, never advertised (/start)

    @property
    def usage(self) -> str:
        args = " ".join(f"[{p.label}]" if p.optional else p.label for p in self.params)
        return f"/{self.name}" + (f" {args}" if args else "")

    def usage_line(self) -> str:
        """'Usage: /vm_stop NAME (or /stop_vm --name_vm NAME)'."""
        text = f"Usage: {self.usage}"
        if self.alias_usage:
            text += f" (or {self.alias_usage})"
        return text


class CommandError(Exception):
    """A line that was meant for us but cannot be run; the text is the answer (plain text)."""

    def __init__(self, message: str, spec: Spec | None = None):
        super().__init__(message)
        self.spec = spec


class UsageError(CommandError):
    """Bad or missing arguments; the message ends with the usage line."""

    def __init__(self, spec: Spec, problem: str):
        super().__init__(f"{problem}\n{spec.usage_line()}", spec)
        self.problem = problem


class UnknownCommand(CommandError):
    """A command word we do not know; suggests the close ones."""

    def __init__(self, word: str, suggestions: list[str]):
        hint = f" Did you mean {', '.join('/' + s for s in suggestions)}?" if suggestions else ""
        super().__init__(f"Unknown command /{word}.{hint} Send /help for the list.")
        self.word, self.suggestions = word, suggestions


@dataclass(frozen=True)
class Command:
    """A parsed command: the spec, typed arguments and the line as typed (for the audit trail)."""

    spec: Spec
    args: dict[str, Any]
    text: str
    addressed: bool = False  # named our bot explicitly (/cmd@our_bot)

    @property
    def name(self) -> str:
        return self.spec.name


# --- argument readers (raise ValueError with a short reason) ----------------------------------


def vm_name(value: str) -> str:
    """A VM name or instance id; Yandex names are lowercase, so case is forgiven."""
    v = value.strip().lower()
    if not (VM_NAME_RE.fullmatch(v) or re.fullmatch(r"[a-z0-9]{20}", v)):
        raise ValueError(f"{value!r} is not a VM name (lowercase letters, digits and '-', starting with a letter)")
    return v


def cores(value: str) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise ValueError(f"CORES must be a whole number, not {value!r}") from None
    if not 1 <= n <= MAX_CORES:
        raise ValueError(f"CORES must be between 1 and {MAX_CORES}, not {n}")
    return n


def memory_gb(value: str) -> float:
    """Gigabytes as Yandex counts them (2^30 bytes): '8', '8.5', '8G', '8GB', '8GiB'."""
    m = re.fullmatch(r"\s*(\d+(?:[.,]\d+)?)\s*(g|gb|gib)?\s*", value, re.IGNORECASE)
    if not m:
        raise ValueError(f"MEM_GB must be a number of gigabytes such as 8 or 0.5, not {value!r}")
    gb = float(m.group(1).replace(",", "."))
    if not 0 < gb <= MAX_MEMORY_GB:
        raise ValueError(f"MEM_GB must be more than 0 and at most {MAX_MEMORY_GB}, not {gb:g}")
    return gb


def fraction(value: str) -> int:
    v = value.strip().rstrip("%").strip()
    if v not in ("5", "20", "50", "100"):
        raise ValueError(f"FRACTION must be 5, 20, 50 or 100 (per cent of a core), not {value!r}")
    return int(v)


def keep_duration(value: str) -> float:
    """Seconds to hold off the auto-stop; 0 for 'off' (release the hold)."""
    if value.strip().lower() in ("off", "release", "cancel", "none", "0"):
        return 0.0
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError(f"DURATION must look like 2h, 90m or 1h30m (or 'off'), not {value!r}") from None
    if seconds < 60:
        raise ValueError("DURATION must be at least 1m (or 'off' to release the hold)")
    if seconds > MAX_KEEP_SECONDS:
        raise ValueError(f"DURATION can be at most {format_duration(MAX_KEEP_SECONDS)}: for longer, "
                         "set keep_running in the rules file")
    return seconds


def days(value: str) -> int:
    v = value.strip().lower().removesuffix("d")
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"DAYS must be a whole number, not {value!r}") from None
    if not 1 <= n <= MAX_REPORT_DAYS:
        raise ValueError(f"DAYS must be between 1 and {MAX_REPORT_DAYS}, not {n}")
    return n


def namespace(value: str) -> str:
    v = value.strip()
    if not NAMESPACE_RE.fullmatch(v):
        raise ValueError(f"{value!r} is not a Kubernetes namespace (lowercase letters, digits and '-')")
    return v


def branch(value: str) -> str:
    try:
        return validate_branch(value)
    except GitLabInvalidInput as exc:
        raise ValueError(str(exc)) from None


def project(value: str) -> str:
    try:
        return str(validate_project(value))
    except GitLabInvalidInput as exc:
        raise ValueError(str(exc)) from None


def command_name(value: str) -> str:
    return value.strip().lstrip("/!").lower()


# --- the table ---------------------------------------------------------------------------------

_NAME = Param("vm", "NAME", vm_name)
_VM_FLAGS = {"name_vm": "vm", "name": "vm", "vm": "vm"}

SPECS: tuple[Spec, ...] = (
    Spec("help", "what I can do (/help COMMAND for one)", MEMBER,
         (Param("topic", "COMMAND", command_name, optional=True),),
         aliases=("man", "helps"), hidden_aliases=("start",)),
    Spec("vms", "list the build VMs with status and size", "viewer",
         aliases=("list_build_vm",), alias_usage="/list_build_vm or /list build vm"),
    Spec("vm_status", "one VM in detail: status, size, uptime, holds, running jobs", "viewer", (_NAME,),
         aliases=("status_vm",), alias_usage="/status_vm --name_vm NAME", flags=_VM_FLAGS),
    Spec("vm_start", "start a VM", "operator", (_NAME,),
         aliases=("start_vm",), alias_usage="/start_vm --name_vm NAME", flags=_VM_FLAGS, changes_state=True),
    Spec("vm_stop", "stop a VM (asks to confirm)", "operator", (_NAME,),
         aliases=("stop_vm",), alias_usage="/stop_vm --name_vm NAME", flags=_VM_FLAGS, confirm=True,
         changes_state=True),
    Spec("vm_upgrade", "resize a VM: cores, memory in GB, core fraction % (asks to confirm)", "operator",
         (_NAME, Param("cores", "CORES", cores), Param("memory_gb", "MEM_GB", memory_gb),
          Param("core_fraction", "FRACTION", fraction, optional=True)),
         aliases=("upgrade_vm",), alias_usage="/upgrade_vm --name_vm NAME --core 4 --mem 8 [--fraction 50]",
         flags={**_VM_FLAGS, "core": "cores", "cores": "cores", "mem": "memory_gb", "memory": "memory_gb",
                "fraction": "core_fraction", "core_fraction": "core_fraction"},
         confirm=True, changes_state=True),
    Spec("vm_keep", "no auto-stop for a while, e.g. /vm_keep buildfront 2h ('off' to release)", "operator",
         (_NAME, Param("seconds", "DURATION", keep_duration)),
         flags={**_VM_FLAGS, "for": "seconds", "duration": "seconds"}, changes_state=True),
    Spec("runner_report", "hours on, hours and money saved, what woke each VM, a chart", "viewer",
         (Param("days", "DAYS", days, optional=True, default=DEFAULT_REPORT_DAYS),),
         flags={"days": "days"}),
    Spec("migration_logs", "the latest migration pod's logs in a namespace", "viewer",
         (Param("namespace", "NAMESPACE", namespace),),
         aliases=("logs_migrated",), alias_usage="/logs_migrated --namespace NAMESPACE",
         flags={"namespace": "namespace", "ns": "namespace"}),
    Spec("protect_branch", "protect a GitLab branch (maintainers only may push and merge)", "operator",
         (Param("branch", "BRANCH", branch), Param("project", "PROJECT", project, optional=True)),
         aliases=("protected_gitlab",), alias_usage="/protected_gitlab --name BRANCH [--project PROJECT]",
         flags={"name": "branch", "branch": "branch", "project": "project"}, changes_state=True),
    Spec("unprotect_branch", "remove a GitLab branch's protection", "operator",
         (Param("branch", "BRANCH", branch), Param("project", "PROJECT", project, optional=True)),
         aliases=("unprotect_gitlab",), alias_usage="/unprotect_gitlab --name BRANCH [--project PROJECT]",
         flags={"name": "branch", "branch": "branch", "project": "project"}, changes_state=True),
    Spec("whoami", "your Telegram id and role", ANYONE),
)

BY_NAME: dict[str, Spec] = {s.name: s for s in SPECS}
_WORDS: dict[str, Spec] = {w: s for s in SPECS for w in (s.name, *s.aliases, *s.hidden_aliases)}
# Words that work without a slash when they are the whole line (errbot's habits).
_BARE = {"man": "help", "helps": "help", "help": "help"}
_DASHES = ("\u2014", "\u2013", "\u2212")  # em dash, en dash, minus: what phones make of "--"


def menu() -> list[tuple[str, str]]:
    """(command, description) pairs for setMyCommands, in table order."""
    return [(s.name, s.summary[:256]) for s in SPECS]


def _tokens(spec: Spec, rest: str) -> list[str]:
    try:
        return shlex.split(rest)
    except ValueError as exc:
        raise UsageError(spec, f"Cannot read the arguments: {exc}.") from None


def _bind(spec: Spec, tokens: list[str]) -> dict[str, Any]:
    """Options (--core 4, --core=4) and positional values onto the spec's params, then convert each."""
    raw: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        for dash in _DASHES:
            if tok.startswith(dash):
                tok = "--" + tok[len(dash):]
        if tok.startswith("--") and len(tok) > 2:
            flag, eq, value = tok[2:].partition("=")
            key = spec.flags.get(flag.lower().replace("-", "_"))
            if key is None:
                known = ", ".join(f"--{f}" for f in spec.flags) or "none"
                raise UsageError(spec, f"Unknown option --{flag} (options: {known}).")
            if not eq:
                if i + 1 >= len(tokens):
                    raise UsageError(spec, f"Option --{flag} needs a value.")
                i += 1
                value = tokens[i]
            if key in raw:
                raise UsageError(spec, f"{_label(spec, key)} is given twice.")
            raw[key] = value
        else:
            positional.append(tok)
        i += 1
    free = [p for p in spec.params if p.key not in raw]
    if len(positional) > len(free):
        extra = " ".join(positional[len(free):])
        raise UsageError(spec, f"Too many arguments: {extra!r}.")
    for p, value in zip(free, positional):
        raw[p.key] = value
    args: dict[str, Any] = {}
    for p in spec.params:
        if p.key not in raw:
            if not p.optional:
                raise UsageError(spec, f"{p.label} is missing.")
            args[p.key] = p.default
            continue
        try:
            args[p.key] = p.convert(raw[p.key])
        except ValueError as exc:
            raise UsageError(spec, _sentence(str(exc))) from None
    return args


def _label(spec: Spec, key: str) -> str:
    return next((p.label for p in spec.params if p.key == key), key)


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "?", "!")) else ".")


def suggest(word: str) -> list[str]:
    """Command names close to a mistyped word: shared prefixes first (/vms_list → /vms), then by similarity."""
    word = word.lower()
    words = [w for w in _WORDS if w not in ("start",)]
    close = [w for w in words if len(w) >= 3 and (word.startswith(w) or w.startswith(word))]
    close += difflib.get_close_matches(word, words, n=3, cutoff=0.6)
    names: list[str] = []
    for c in close:
        if _WORDS[c].name not in names:
            names.append(_WORDS[c].name)
    return names[:3]


def parse(text: str, bot_username: str | None = None) -> Command | None:
    """Parse one line; None when it is not a command for us. Raises UsageError or UnknownCommand."""
    line = (text or "").strip()
    if not line:
        return None
    if line[0] not in "/!":
        word = line.lower()
        if word in _BARE:
            return Command(BY_NAME[_BARE[word]], {"topic": None}, line)
        return None
    parts = re.split(r"\s+", line[1:], maxsplit=1)  # a space, a tab or a newline
    head, rest = parts[0], (parts[1].strip() if len(parts) > 1 else "")
    word, at, target = head.partition("@")
    addressed = False
    if at:
        if bot_username and target.lower() != bot_username.lower().lstrip("@"):
            return None  # /cmd@other_bot: for another bot in the group
        addressed = True
    word = word.lower()
    if not word:
        return None
    if word == "list":
        if " ".join(rest.lower().split()) in ("build vm", "build vms", "build_vm"):
            return Command(BY_NAME["vms"], {}, line, addressed)
        raise UnknownCommand("list " + rest if rest else "list", ["vms"])
    spec = _WORDS.get(word)
    if spec is None:
        raise UnknownCommand(word, suggest(word))
    return Command(spec, _bind(spec, _tokens(spec, rest)), line, addressed)


# --- help texts (HTML) -------------------------------------------------------------------------

_ROLE_RANK = {"viewer": 1, "operator": 2, "admin": 3}


def _need_text(spec: Spec) -> str:
    if spec.need in (ANYONE, MEMBER):
        return "anyone"
    return spec.need + ("+" if spec.need != "admin" else "")


def may(role: str | None, spec: Spec) -> bool:
    """Whether this role is enough for this command (chats are checked elsewhere)."""
    if spec.need in (ANYONE, MEMBER):
        return True
    return role is not None and _ROLE_RANK.get(role, 0) >= _ROLE_RANK[spec.need]


def help_html(role: str | None, topic: str | None = None) -> str:
    """The command list (marking what this role may not do), or one command in detail."""
    if topic:
        spec = _WORDS.get(topic.lower())
        if spec is None:
            close = suggest(topic)
            hint = f" Did you mean {', '.join('/' + c for c in close)}?" if close else ""
            return escape(f"No command /{topic}.{hint} Send /help for the list.")
        lines = [f"<b>{escape(spec.usage)}</b>", escape(spec.summary[:1].upper() + spec.summary[1:]) + "."]
        if spec.alias_usage:
            lines.append(f"Also: {escape(spec.alias_usage)}")
        lines.append(f"Needs: {escape(_need_text(spec))}" + (" · asks to confirm" if spec.confirm else ""))
        if not may(role, spec):
            lines.append("🔒 Your role is not enough for this one.")
        return "\n".join(lines)
    who = f"You are <b>{escape(role)}</b>." if role else "You have no role yet (send /whoami)."
    lines = [f"<b>gitlab-hook ChatOps</b> · {who}"]
    for spec in SPECS:
        lock = "" if may(role, spec) else "🔒 "
        lines.append(f"{lock}{escape(spec.usage)} — {escape(spec.summary)} [{escape(_need_text(spec))}]")
    lines.append("Original forms work too: /list_build_vm, /stop_vm --name_vm NAME, /upgrade_vm --name_vm NAME "
                 "--core 4 --mem 8, /logs_migrated --namespace NS, /protected_gitlab --name BRANCH, man.")
    lines.append("MEM_GB counts gigabytes as Yandex Cloud does (2^30 bytes).")
    return "\n".join(lines)


def describe(cmd: Command) -> str:
    """A short plain rendering of what was asked, for logs and the audit trail."""
    shown = {k: (format_duration(v) if k == "seconds" and isinstance(v, float) and v and math.isfinite(v) else v)
             for k, v in cmd.args.items() if v is not None}
    return f"/{cmd.name}" + "".join(f" {k}={v}" for k, v in shown.items())
