"""The benchmark's baseline: a bare Flask route, served exactly as ``gitlab-hook web`` serves the real one.

``POST /gitlab/webhook`` reads the body (as the real handler must) and answers 204; nothing is
verified, parsed or stored. ``GET /readyz`` answers 200 so the benchmark can wait for it.

Run: ``python bench/bare_app.py --host 127.0.0.1 --port 8081 --workers 2 --threads 8``
(the same gunicorn options as the service, from ``gitlab_hook.server.gunicorn_options``).
"""

from __future__ import annotations

import argparse

from flask import Flask, Response, request

from gitlab_hook.server import gunicorn_options, run_gunicorn
from gitlab_hook.settings import EnvSettings


def create_bare_app() -> Flask:
    """The smallest Flask app on the same path: what the server and framework alone cost."""
    app = Flask(__name__)

    @app.post("/gitlab/webhook")
    def webhook() -> Response:
        request.get_data(cache=False)  # the body crosses the wire either way; read it like the service
        return Response(status=204)

    @app.get("/readyz")
    def readyz() -> Response:
        return Response('{"status": "ok"}', content_type="application/json")

    return app


def main(argv: list[str] | None = None) -> int:
    defaults = EnvSettings.model_fields
    p = argparse.ArgumentParser(prog="bare_app", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--workers", type=int, default=defaults["WEB_WORKERS"].default)
    p.add_argument("--threads", type=int, default=defaults["WEB_THREADS"].default)
    args = p.parse_args(argv)
    opts = gunicorn_options(host=args.host, port=args.port, workers=args.workers, threads=args.threads)
    run_gunicorn(create_bare_app, opts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
