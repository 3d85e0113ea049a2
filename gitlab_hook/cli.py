"""``gitlab-hook`` command line: serve, web, worker, bot, check."""

from __future__ import annotations

import argparse
import secrets
import sys

from gitlab_hook.integrations import banner
from gitlab_hook.logs import setup_logging
from gitlab_hook.settings import ConfigError, Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gitlab-hook", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "web + worker (+ bot) in one process tree"), ("web", "the webhook HTTP server only")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--host", default="127.0.0.1")
        sp.add_argument("--port", type=int, default=8080)
        sp.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("worker", help="run queued tasks and periodic chores")
    bp = sub.add_parser("bot", help="the Telegram bot (or --console for stdin/stdout)")
    bp.add_argument("--console", action="store_true")
    sub.add_parser("check", help="validate config, show it (secrets masked), probe integrations")
    return p


def _ensure_secret(settings: Settings) -> tuple[Settings, str | None]:
    """No GITLAB_WEBHOOK_SECRET: make one for this run and print it, so the endpoint is never open."""
    if settings.env.GITLAB_WEBHOOK_SECRET is not None:
        return settings, None
    secret = secrets.token_urlsafe(24)
    print(f"GITLAB_WEBHOOK_SECRET was not set; generated for this run: {secret}\n"
          "Paste it into GitLab's webhook 'Secret token', or set the variable to keep one.", flush=True)
    return settings.with_env(GITLAB_WEBHOOK_SECRET=secret), secret


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gitlab-hook`` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"gitlab-hook: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    env = settings.env
    setup_logging(env.LOG_LEVEL, env.LOG_FORMAT, settings.secret_values())

    if args.command == "check":
        from gitlab_hook.check import run_check

        return run_check(settings)
    if args.command == "worker":
        from gitlab_hook.roles import run_worker

        run_worker(settings)
        return 0
    if args.command == "bot":
        from bot.run import run_bot

        return run_bot(settings, console=args.console)
    settings, generated = _ensure_secret(settings)
    if not args.quiet:
        print(banner(settings, host=args.host, port=args.port, generated_secret=bool(generated)), flush=True)
    if args.command == "web":
        from gitlab_hook.roles import run_web

        run_web(settings, host=args.host, port=args.port)
        return 0
    from gitlab_hook.roles import Supervisor, child_env, serve_commands

    secret = settings.env.GITLAB_WEBHOOK_SECRET.get_secret_value() if generated else None
    return Supervisor(serve_commands(args.host, args.port), child_env(secret)).run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
