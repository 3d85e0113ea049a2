"""Flask app factory and its thin routes: the GitLab webhook, health, readiness and metrics."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from gitlab_hook.intake import IntakeStore
from gitlab_hook.metrics import CONTENT_TYPE, StorageCollector, WebMetrics, storage_exposition
from gitlab_hook.taskqueue import TaskQueue, make_huey
from gitlab_hook.settings import Settings
from gitlab_hook.stores import open_stores
from gitlab_hook.webhook import Answer, Intake, handle_delivery

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, store: IntakeStore | None = None, queue: TaskQueue | None = None,
               metrics: WebMetrics | None = None, webhook_secret: str | None = None) -> Flask:
    """Build the web app; storage and queue come from settings unless handed in (tests)."""
    env = settings.env
    stores = open_stores(settings)  # SQLite in DATA_DIR, or Redis with REDIS_URL
    store = store or stores.intake
    queue = queue or TaskQueue(make_huey(settings))
    metrics = metrics or WebMetrics()
    secret = webhook_secret or (env.GITLAB_WEBHOOK_SECRET.get_secret_value() if env.GITLAB_WEBHOOK_SECRET else None)
    intake = Intake(
        rules=settings.rules, store=store, queue=queue, secret=secret,
        signing_token=env.GITLAB_WEBHOOK_SIGNING_TOKEN.get_secret_value() if env.GITLAB_WEBHOOK_SIGNING_TOKEN else None,
        tolerance=env.WEBHOOK_SIGNATURE_TOLERANCE)
    collector = StorageCollector(store, queue.depth, stores.ledger)

    app = Flask(__name__)
    # Werkzeug refuses a body whose Content-Length is over this before reading it.
    app.config["MAX_CONTENT_LENGTH"] = env.WEBHOOK_MAX_BODY_BYTES
    app.extensions["gitlab_hook"] = {"store": store, "queue": queue, "metrics": metrics, "settings": settings}

    def answer(a: Answer, started: float) -> Response:
        metrics.deliveries.labels(a.event, a.outcome).inc()
        metrics.latency.labels(a.outcome).observe(time.perf_counter() - started)
        resp = jsonify(a.body)
        resp.status_code = a.status
        return resp

    @app.post("/gitlab/webhook")
    def gitlab_webhook() -> Response:
        started = time.perf_counter()
        limit = env.WEBHOOK_MAX_BODY_BYTES
        try:
            if request.content_length is None:
                # A streamed (chunked) body: werkzeug's max-length stream stops at the limit
                # without an error, which would cut the body and parse the head. Allow one byte
                # more, and refuse the body when that byte arrives.
                request.max_content_length = limit + 1
            body = request.get_data(cache=False)
            if len(body) > limit:
                raise RequestEntityTooLarge()
        except RequestEntityTooLarge:
            a = Answer(413, {"error": f"body is larger than {limit} bytes"}, "too_large")
            resp = answer(a, started)
            resp.headers["Connection"] = "close"  # do not wait for the rest of the body
            return resp
        return answer(handle_delivery(intake, request.headers, body), started)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        checks, ok = {}, True
        for name, probe in (("intake_storage", store.ping), ("queue_storage", queue.depth)):
            try:
                probe()
                checks[name] = "ok"
            except Exception as exc:
                ok = False
                checks[name] = f"failing: {type(exc).__name__}"
                log.error("readiness check %s failed: %s", name, exc)
        resp = jsonify({"status": "ok" if ok else "unavailable", "checks": checks})
        resp.status_code = 200 if ok else 503
        return resp

    @app.get("/metrics")
    def metrics_view() -> Response:
        return Response(metrics.exposition() + storage_exposition(collector), content_type=CONTENT_TYPE)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        resp = jsonify({"error": exc.description or exc.name})
        resp.status_code = exc.code or 500
        return resp

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        resp = jsonify({"error": "internal error; see the service log"})
        resp.status_code = 500
        return resp

    return app
