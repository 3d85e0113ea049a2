"""``gitlab-hook bot [--console]``: run the Telegram bot until a signal, or the console until end of input.

Without a bot token the Telegram bot is idle (dry-run, said once in the log) instead of exiting:
under ``serve`` a quickly exiting child would be restarted over and over. A Telegram that cannot
be reached at start (network, a refused token) is retried with backoff; the bot never gives up.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

log = logging.getLogger("bot")

MAX_RETRY_DELAY = 300.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def webhook_config(settings: Any):
    """The webhook settings when TELEGRAM_WEBHOOK_URL is set, else None (long polling)."""
    from bot.app import WebhookConfig

    env = settings.env
    if not env.TELEGRAM_WEBHOOK_URL:
        return None
    secret = env.TELEGRAM_WEBHOOK_SECRET.get_secret_value() if env.TELEGRAM_WEBHOOK_SECRET else None
    return WebhookConfig.build(env.TELEGRAM_WEBHOOK_URL, secret, env.TELEGRAM_WEBHOOK_LISTEN,
                               env.TELEGRAM_WEBHOOK_PORT)


def run_bot(settings: Any, console: bool, *, stdin: Any = None, stdout: Any = None) -> int:
    """Entry point of ``gitlab-hook bot``; returns the exit code."""
    if console:
        from bot.console import run_console

        return run_console(settings, stdin or sys.stdin, stdout or sys.stdout)
    try:
        webhook = webhook_config(settings)
    except ValueError as exc:
        print(f"gitlab-hook: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if settings.env.TELEGRAM_BOT_TOKEN is None:
        msg = ("dry-run: TELEGRAM_BOT_TOKEN is not set, so the Telegram bot is idle; "
               "`gitlab-hook bot --console` runs the same commands locally")
        log.warning(msg)
        print(f"gitlab-hook bot: {msg}", file=sys.stderr, flush=True)
        asyncio.run(_idle())
        return 0
    from bot.services import ChatOpsServices

    services = ChatOpsServices.from_settings(settings)
    asyncio.run(_serve(settings, services, webhook))
    return 0


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread / platform
            pass
    return stop


async def _idle() -> None:
    await _stop_event().wait()


async def _serve(settings: Any, services: Any, webhook: Any) -> None:
    from telegram.error import TelegramError

    from bot.app import create_bot, running

    stop = _stop_event()
    delay = 1.0
    while not stop.is_set():
        app = create_bot(settings, services)
        try:
            async with running(app, webhook=webhook):
                delay = 1.0
                await stop.wait()
            return
        except TelegramError as exc:  # unreachable, or a token Telegram refuses: say so, retry later
            log.error("cannot start the Telegram bot: %s; retrying in %.0fs", exc, delay)
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass
        delay = min(delay * 2, MAX_RETRY_DELAY)
