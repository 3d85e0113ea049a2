"""``gitlab-hook bot --console``: the bot's commands on stdin/stdout, as a local operator (admin role).

Lines are ``/cmd args`` or ``!cmd args`` (errbot's text mode), or the bare aliases ``man`` and
``helps``. A command that asks to confirm reads the next line as the answer (``y`` or ``yes``;
anything else, or the end of input, cancels). Files (the report chart, a whole log) are written
under ``DATA_DIR/console/``. Announcements go to the alerts chat through the worker's notifier
(dry-run: logged) when Telegram is configured. Exits 0 at the end of input.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from bot.access import CONSOLE_ACTOR, CONSOLE_PLACE, Policy
from bot.confirm import NO, YES
from bot.dispatch import Dispatcher, Reply
from bot.redis_stores import open_bot_stores
from bot.services import ChatOpsServices
from gitlab_hook.integrations import integrations
from gitlab_hook.telegram_format import to_plain

log = logging.getLogger("bot.console")

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class Console:
    """Reads commands, prints answers; one instance per run."""

    def __init__(self, dispatcher: Dispatcher, out: TextIO, files_dir: Path,
                 announce: Callable[[str], None] | None = None):
        self.d, self.out, self.files_dir, self.announce = dispatcher, out, files_dir, announce

    def say(self, html: str) -> None:
        text = to_plain(html).strip()
        if text:
            print(text, file=self.out, flush=True)

    def show(self, reply: Reply) -> None:
        self.say(reply.html)
        for f in reply.files:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            path = self.files_dir / _SAFE_NAME.sub("_", f.filename)
            path.write_bytes(f.data)
            print(f"[file] {path} ({len(f.data)} bytes)" + (f": {to_plain(f.caption)}" if f.caption else ""),
                  file=self.out, flush=True)
        if reply.announce and self.announce is not None:
            try:
                self.announce(reply.announce)
            except Exception as exc:  # the command is done; only the announcement failed
                log.warning("could not announce in the alerts chat: %s", exc)

    def run(self, lines: Iterator[str]) -> int:
        for raw in lines:
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            try:
                self.one(text, lines)
            except Exception as exc:  # the one error handler of the console: log, answer, go on
                self.say(self.d.report_error(exc, text.split(None, 1)[0][:40], CONSOLE_ACTOR, CONSOLE_PLACE))
        return 0

    def one(self, text: str, lines: Iterator[str]) -> None:
        reply = self.d.handle_text(text, CONSOLE_ACTOR, CONSOLE_PLACE)
        if reply is None:
            print("Not a command: start it with / or ! (try /help).", file=self.out, flush=True)
            return
        if reply.confirm_token:
            self.say(reply.html)
            print("Confirm? [y/N] ", end="", file=self.out, flush=True)
            answer = next(lines, None)
            print(answer.strip() if answer is not None else "(end of input)", file=self.out, flush=True)
            yes = answer is not None and answer.strip().lower() in ("y", "yes")
            tap = self.d.tap(reply.confirm_token, YES if yes else NO, CONSOLE_ACTOR, CONSOLE_PLACE)
            self.say(tap.edit_html or tap.callback_text)
            if tap.pending is not None:
                self.show(self.d.commit(tap.pending, CONSOLE_ACTOR, CONSOLE_PLACE, None))
            return
        self.show(reply)
        if reply.pending is not None:
            self.show(self.d.commit(reply.pending, CONSOLE_ACTOR, CONSOLE_PLACE, None))


def run_console(settings: Any, stdin: TextIO, stdout: TextIO, *, services: ChatOpsServices | None = None) -> int:
    """Run commands from stdin until its end; exit code 0."""
    services = services or ChatOpsServices.from_settings(settings)
    env = settings.env
    confirms, audit = open_bot_stores(settings)
    d = Dispatcher(services, Policy(dict(settings.rules.telegram.users), env.TELEGRAM_CHAT_ID), confirms, audit)
    notifier: list[Any] = []

    def announce(html: str) -> None:
        if not notifier:
            from gitlab_hook.wiring import make_notifier

            notifier.append(make_notifier(settings))
        notifier[0].send_html(html)

    if stdin.isatty():
        dry = [i.name for i in integrations(settings) if not i.live and i.name != "queue"]
        print("gitlab-hook console: you are the local operator (admin). /help lists the commands; Ctrl-D ends."
              + (f"\ndry-run (not configured): {', '.join(dry)}" if dry else ""), file=stdout, flush=True)
    try:
        return Console(d, stdout, settings.data_dir / "console", announce).run(iter(stdin))
    except KeyboardInterrupt:
        print(file=stdout)
        return 130
    finally:
        for n in notifier:
            n.close()
