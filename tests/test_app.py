"""app.py + webhook.py: every row of the design's HTTP table, through the Flask test client."""

from __future__ import annotations

import base64
import io
import json
import os
import sqlite3
import threading
from datetime import datetime, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

from gitlab_hook.app import create_app
from gitlab_hook.intake import IntakeStore
from gitlab_hook.taskqueue import TaskQueue, make_huey
from tests.conftest import SECRET, failed_job_payload, payload, push_payload

SIGNING_KEY = "whsec_" + base64.b64encode(b"k" * 32).decode()


def pipeline_payload(status="pending", ref="stage", builds=None):
    p = payload("pipeline.json")
    p["object_attributes"].update({"status": status, "ref": ref})
    p["project"]["path_with_namespace"] = "group/app"
    if builds is not None:
        p["builds"] = builds
    return p


def snapshot(store, queue):
    return [(r.id, r.key, r.state) for r in store.rows()], queue.depth()


def assert_error(resp, status):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]
    assert SECRET not in resp.get_data(as_text=True)
    return body["error"]


# --- 202 queued -----------------------------------------------------------------------------


def test_push_to_watched_branch_is_queued(post, store, queue):
    resp = post(push_payload())
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["status"] == "queued"
    assert body["actions"] == ["ensure_running:buildfront"]
    assert isinstance(body["delivery"], str) and body["delivery"]
    rows = store.rows()
    assert [(r.key, r.kind, r.state, r.delivery) for r in rows] == [
        ("ensure_running:buildfront", "ensure_running", "pending", body["delivery"])]
    assert rows[0].payload["user"] == "jsmith"
    assert rows[0].payload["vm"] == "buildfront"
    assert queue.depth() == (1, 0)


def test_failed_migration_job_is_queued(post, store, queue):
    resp = post(failed_job_payload(job_id=555), event="Job Hook")
    assert resp.status_code == 202
    assert resp.get_json()["actions"] == ["report_migration_failure:job/555"]
    [row] = store.rows()
    assert row.kind == "report_migration_failure"
    assert row.payload["job_id"] == 555
    assert queue.depth() == (1, 0)


def test_pending_pipeline_is_queued(post, store, queue):
    resp = post(pipeline_payload(), event="Pipeline Hook")
    assert resp.status_code == 202
    assert resp.get_json()["actions"] == ["ensure_running:buildfront"]
    assert [r.key for r in store.rows()] == ["ensure_running:buildfront"]


def test_system_hook_push_is_queued(post, store):
    resp = post(push_payload(), event="System Hook")
    assert resp.status_code == 202
    assert len(store.rows()) == 1


def test_signature_alone_authenticates(make_settings, store, queue):
    settings = make_settings(GITLAB_WEBHOOK_SIGNING_TOKEN=SIGNING_KEY)
    client = create_app(settings, store=store, queue=queue).test_client()
    body = json.dumps(push_payload())
    now = datetime.now(timezone.utc)
    headers = {"X-Gitlab-Event": "Push Hook", "webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(SIGNING_KEY).sign("msg_1", now, body)}
    resp = client.post("/gitlab/webhook", data=body, headers=headers)
    assert resp.status_code == 202
    assert len(store.rows()) == 1
    # The same signature over another body is refused.
    resp = client.post("/gitlab/webhook", data=body.replace("stage", "stagf"), headers=headers)
    assert_error(resp, 401)


def test_non_ascii_secret_over_wsgi(make_settings, store, queue):
    secret = "\u0441\u0435\u043a\u0440\u0435\u0442-caf\u00e9"
    client = create_app(make_settings(GITLAB_WEBHOOK_SECRET=secret), store=store, queue=queue).test_client()
    # GitLab sends the token's UTF-8 bytes; the WSGI server hands them over latin-1 decoded.
    wire = secret.encode("utf-8").decode("latin-1")
    resp = client.post("/gitlab/webhook", data=json.dumps(push_payload()),
                       headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": wire})
    assert resp.status_code == 202
    resp = client.post("/gitlab/webhook", data=json.dumps(push_payload()),
                       headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": wire[:-1]})
    assert_error(resp, 401)


# --- 200 ignored ----------------------------------------------------------------------------


@pytest.mark.parametrize("body, event, reason_part", [
    (push_payload(branch="feature/x"), "Push Hook", "feature/x"),
    (push_payload(project="other/app"), "Push Hook", "other/app"),
    (push_payload(after="0" * 40, checkout_sha=None), "Push Hook", "deleted"),
    (payload("tag_push.json"), "Tag Push Hook", "tag"),
    (payload("pipeline.json"), "Pipeline Hook", "success"),
    (pipeline_payload(status="success"), "Pipeline Hook", "success"),
    (failed_job_payload(name="lint"), "Job Hook", "lint"),
    (payload("job.json"), "Job Hook", "created"),
    ({"object_kind": "merge_request", "object_attributes": {}}, "Merge Request Hook", "Merge Request Hook"),
    ({"object_kind": "note"}, "Note Hook", "Note Hook"),
    ({"object_kind": "merge_request"}, "System Hook", "merge_request"),
])
def test_ignored_events(post, store, queue, body, event, reason_part):
    resp = post(body, event=event)
    assert resp.status_code == 200
    data = resp.get_json()
    assert data["status"] == "ignored"
    assert reason_part in data["reason"]
    assert store.rows() == []
    assert queue.depth() == (0, 0)


# --- 200 duplicate --------------------------------------------------------------------------


def test_same_idempotency_key_is_duplicate(post, store, queue):
    h = {"Idempotency-Key": "idem-1", "X-Gitlab-Event-UUID": "ev-1"}
    first = post(push_payload(), headers=h)
    assert first.status_code == 202
    before = snapshot(store, queue)
    again = post(push_payload(), headers=h)
    assert again.status_code == 200
    assert again.get_json() == {"status": "duplicate", "delivery": first.get_json()["delivery"]}
    assert snapshot(store, queue) == before


def test_duplicate_enqueues_nothing_even_when_body_differs(post, store, queue):
    # A non-duplicate of this body would add a buildback row; a duplicate adds nothing.
    first = post(push_payload(), headers={"Idempotency-Key": "idem-2"})
    before = snapshot(store, queue)
    again = post(push_payload(project="group/api"), headers={"Idempotency-Key": "idem-2"})
    assert again.get_json() == {"status": "duplicate", "delivery": first.get_json()["delivery"]}
    assert snapshot(store, queue) == before
    other = post(push_payload(project="group/api"), headers={"Idempotency-Key": "idem-3"})
    assert other.status_code == 202
    assert sorted(r.key for r in store.rows()) == ["ensure_running:buildback", "ensure_running:buildfront"]


def test_same_event_uuid_and_event_is_duplicate(post, store, queue):
    first = post(failed_job_payload(job_id=1), event="Job Hook", headers={"X-Gitlab-Event-UUID": "uuid-9"})
    assert first.status_code == 202
    before = snapshot(store, queue)
    again = post(failed_job_payload(job_id=2), event="Job Hook", headers={"X-Gitlab-Event-UUID": "uuid-9"})
    assert again.status_code == 200
    assert again.get_json() == {"status": "duplicate", "delivery": first.get_json()["delivery"]}
    assert snapshot(store, queue) == before


def test_same_event_uuid_with_other_event_is_not_duplicate(post, store, queue):
    first = post(push_payload(), event="Push Hook", headers={"X-Gitlab-Event-UUID": "uuid-7"})
    second = post(failed_job_payload(job_id=31), event="Job Hook", headers={"X-Gitlab-Event-UUID": "uuid-7"})
    assert second.status_code == 202
    assert second.get_json()["status"] == "queued"
    assert second.get_json()["delivery"] != first.get_json()["delivery"]
    assert sorted(r.key for r in store.rows()) == ["ensure_running:buildfront", "report_migration_failure:job/31"]
    assert queue.depth() == (2, 0)


def test_idempotency_key_wins_over_event_uuid(post, store):
    a = post(failed_job_payload(job_id=1), event="Job Hook",
             headers={"Idempotency-Key": "k-a", "X-Gitlab-Event-UUID": "same"})
    b = post(failed_job_payload(job_id=2), event="Job Hook",
             headers={"Idempotency-Key": "k-b", "X-Gitlab-Event-UUID": "same"})
    assert (a.status_code, b.status_code) == (202, 202)
    assert len(store.rows()) == 2


def test_no_dedupe_headers_means_every_delivery_is_new(post, store):
    a = post(failed_job_payload(job_id=1), event="Job Hook")
    b = post(failed_job_payload(job_id=2), event="Job Hook")
    assert a.get_json()["delivery"] != b.get_json()["delivery"]
    assert len(store.rows()) == 2


# --- 401 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "wrong", SECRET[:-1], SECRET + "x", SECRET.upper()])
def test_missing_or_wrong_token_is_401(post, store, queue, token):
    before = snapshot(store, queue)
    resp = post(push_payload(), token=token)
    error = assert_error(resp, 401)
    assert "X-Gitlab-Token" in error
    assert snapshot(store, queue) == before


def test_401_before_parsing(post, store, queue):
    assert_error(post(b"{not json", token="wrong"), 401)
    assert_error(post(push_payload(), event="Merge Request Hook", token=None), 401)
    assert store.rows() == [] and queue.depth() == (0, 0)


def test_401_does_not_consume_the_idempotency_key(post, store):
    h = {"Idempotency-Key": "idem-401"}
    assert_error(post(push_payload(), token="wrong", headers=h), 401)
    resp = post(push_payload(), headers=h)
    assert resp.status_code == 202


# --- 400 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"{not json", b"", b"   ", b"\xff\xfe\xfa\x00garbage", b'{"ref": "refs/heads/stage"', b"NaNa", b"[" * 100000,
    b'{"a":' * 50000, b"1" * 5000,
])
def test_malformed_json_is_400(post, store, queue, body):
    error = assert_error(post(body), 400)
    assert "JSON" in error
    assert store.rows() == [] and queue.depth() == (0, 0)


@pytest.mark.parametrize("body, kind", [
    ([push_payload()], "list"), ('"push"', "str"), ("42", "int"), ("null", "NoneType"), ("true", "bool"),
])
def test_json_that_is_not_an_object_is_400(post, body, kind):
    data = body if isinstance(body, str) else json.dumps(body)
    error = assert_error(post(data), 400)
    assert "object" in error and kind in error


@pytest.mark.parametrize("event, body, field", [
    ("Push Hook", push_payload(ref=12), "ref"),
    ("Push Hook", {k: v for k, v in push_payload().items() if k != "ref"}, "ref"),
    ("Push Hook", {k: v for k, v in push_payload().items() if k != "project"}, "project"),
    ("Push Hook", push_payload(ref="refs/heads/../../etc"), "ref"),
    ("Push Hook", push_payload(ref="refs/heads/a\x00b"), "ref"),
    ("Push Hook", push_payload(commits={"id": 1}), "commits"),
    ("Job Hook", failed_job_payload(build_id="1977"), "build_id"),
    ("Pipeline Hook", {**pipeline_payload(), "builds": "none"}, "builds"),
    ("Tag Push Hook", push_payload(), "object_kind"),
])
def test_wrong_fields_are_400_naming_the_field(post, store, queue, event, body, field):
    error = assert_error(post(body, event=event), 400)
    assert f": {field}: " in error
    assert store.rows() == [] and queue.depth() == (0, 0)


# --- 413 ------------------------------------------------------------------------------------


@pytest.fixture
def small_client(make_settings, store, queue):
    settings = make_settings(WEBHOOK_MAX_BODY_BYTES="2048")
    return create_app(settings, store=store, queue=queue).test_client()


def _padded_push(size):
    """A small push to a watched branch, padded to exactly ``size`` bytes of JSON."""
    body = {"object_kind": "push", "ref": "refs/heads/stage", "after": "a" * 40, "user_username": "jsmith",
            "project": {"path_with_namespace": "group/app"}, "padding": ""}
    raw = json.dumps(body)
    body["padding"] = "x" * (size - len(raw))
    out = json.dumps(body).encode()
    assert len(out) == size
    return out


def test_body_over_limit_is_413(small_client, store, queue):
    resp = small_client.post("/gitlab/webhook", data=_padded_push(2049),
                             headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET})
    error = assert_error(resp, 413)
    assert "2048" in error
    assert store.rows() == [] and queue.depth() == (0, 0)


def test_body_at_limit_is_accepted(small_client, store):
    resp = small_client.post("/gitlab/webhook", data=_padded_push(2048),
                             headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET})
    assert resp.status_code == 202
    assert len(store.rows()) == 1


class ExplodingStream(io.RawIOBase):
    """A request body that must not be read."""

    def __init__(self):
        self.reads = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        return 0

    def tell(self):
        return 0

    def readinto(self, b):
        self.reads += 1
        raise AssertionError("the body was read")


def test_413_is_answered_without_reading_the_body(small_client):
    stream = ExplodingStream()
    resp = small_client.post("/gitlab/webhook", input_stream=stream,
                             environ_overrides={"CONTENT_LENGTH": str(10 * 1024 * 1024 + 1)},
                             headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET})
    assert_error(resp, 413)
    assert stream.reads == 0
    assert resp.headers.get("Connection") == "close"


def _post_chunked(client, data):
    # No Content-Length (chunked): gunicorn terminates the stream itself (wsgi.input_terminated).
    return client.post("/gitlab/webhook", input_stream=io.BytesIO(data),
                       environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": "",
                                          "HTTP_TRANSFER_ENCODING": "chunked"},
                       headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET})


def test_chunked_body_over_limit_is_413(small_client, store):
    assert_error(_post_chunked(small_client, _padded_push(5000)), 413)
    # Valid JSON in the first 2048 bytes and padding after it: must not be cut and accepted.
    head = _padded_push(1500)
    assert_error(_post_chunked(small_client, head + b" " * 3000), 413)
    assert_error(_post_chunked(small_client, head + b" " * 549), 413)  # 2049 bytes
    assert store.rows() == []


def test_chunked_body_within_limit_is_read_whole(small_client, store):
    assert _post_chunked(small_client, _padded_push(2048)).status_code == 202
    assert _post_chunked(small_client, _padded_push(1000)).status_code == 202
    assert len(store.rows()) == 1


def test_413_before_authentication(small_client):
    resp = small_client.post("/gitlab/webhook", data=b"x" * 4096, headers={"X-Gitlab-Event": "Push Hook"})
    assert_error(resp, 413)


# --- 503: storage really broken -------------------------------------------------------------


def _store_opened_elsewhere(path):
    """An IntakeStore whose schema was made by another thread: this thread connects lazily, like a new
    web server thread does."""
    holder = {}
    t = threading.Thread(target=lambda: holder.setdefault("store", IntakeStore(path)))
    t.start()
    t.join()
    return holder["store"]


def _replace_with_directory(path):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(str(path) + suffix):
            os.remove(str(path) + suffix)
    os.makedirs(path)


def test_503_when_intake_database_is_gone(settings, queue):
    path = settings.data_dir / "broken" / "intake.db"
    store = _store_opened_elsewhere(path)
    _replace_with_directory(path)
    client = create_app(settings, store=store, queue=queue).test_client()
    resp = client.post("/gitlab/webhook", data=json.dumps(push_payload()),
                       headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET})
    error = assert_error(resp, 503)
    assert "storage" in error
    assert queue.depth() == (0, 0)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    checks = ready.get_json()["checks"]
    assert checks["intake_storage"] != "ok"
    assert checks["queue_storage"] == "ok"
    # Ignored events need no storage: still 200, so GitLab does not count failures for them.
    resp = client.post("/gitlab/webhook", data=json.dumps(push_payload(branch="other")),
                       headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET})
    assert resp.status_code == 200


def test_503_when_intake_database_is_locked_then_recovers(settings, queue):
    path = settings.data_dir / "locked" / "intake.db"
    store = IntakeStore(path, busy_timeout=0.05)
    client = create_app(settings, store=store, queue=queue).test_client()
    other = sqlite3.connect(str(path), isolation_level=None, timeout=0)
    other.execute("begin exclusive")  # another process holding the write lock for too long
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET, "Idempotency-Key": "while-locked"}
    try:
        resp = client.post("/gitlab/webhook", data=json.dumps(push_payload()), headers=headers)
        assert_error(resp, 503)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.get_json()["status"] != "ok"
        assert ready.get_json()["checks"]["intake_storage"].startswith("failing")
        assert queue.depth() == (0, 0)
    finally:
        other.execute("rollback")
        other.close()
    # Nothing was half-recorded: GitLab's retry of the same delivery is accepted, not a "duplicate".
    resp = client.post("/gitlab/webhook", data=json.dumps(push_payload()), headers=headers)
    assert resp.status_code == 202
    assert resp.get_json()["status"] == "queued"
    assert len(store.rows()) == 1
    assert client.get("/readyz").status_code == 200


def test_readyz_names_broken_queue_storage(settings, store):
    queue = TaskQueue(make_huey(settings))
    client = create_app(settings, store=store, queue=queue).test_client()
    assert client.get("/readyz").status_code == 200
    queue.huey.storage.close()
    _replace_with_directory(settings.data_dir / "queue.db")
    ready = client.get("/readyz")
    assert ready.status_code == 503
    checks = ready.get_json()["checks"]
    assert checks["queue_storage"].startswith("failing")
    assert checks["intake_storage"] == "ok"
    # The outbox row is durable and re-driven, so a 202 here is true: the row must exist.
    resp = client.post("/gitlab/webhook", data=json.dumps(push_payload()),
                       headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET})
    assert resp.status_code == 202
    assert [r.state for r in store.rows()] == ["pending"]


# --- health, readiness, metrics -------------------------------------------------------------


def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok"}


def test_readyz_ok(client):
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok", "checks": {"intake_storage": "ok", "queue_storage": "ok"}}


def _samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics(client, post):
    assert post(push_payload()).status_code == 202
    assert post(push_payload(branch="other")).status_code == 200
    assert post(push_payload(), token="wrong").status_code == 401
    assert post(b"{", event="Weird Custom Hook").status_code == 400
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.content_type.startswith("text/plain")
    text = resp.get_data(as_text=True)
    assert 'gitlab_hook_deliveries_total{event="Push Hook",outcome="queued"} 1.0' in text
    s = _samples(text)
    assert s[("gitlab_hook_deliveries_total", (("event", "Push Hook"), ("outcome", "ignored")))] == 1
    assert s[("gitlab_hook_deliveries_total", (("event", "Push Hook"), ("outcome", "unauthorized")))] == 1
    # Label values stay a small set whatever the client sends.
    assert s[("gitlab_hook_deliveries_total", (("event", "other"), ("outcome", "bad_request")))] == 1
    assert "Weird Custom Hook" not in text
    assert s[("gitlab_hook_webhook_seconds_count", (("outcome", "queued"),))] == 1
    assert s[("gitlab_hook_webhook_seconds_bucket", (("le", "+Inf"), ("outcome", "queued")))] == 1
    assert s[("gitlab_hook_queue_depth", (("queue", "ready"),))] == 1
    assert s[("gitlab_hook_queue_depth", (("queue", "scheduled"),))] == 0
    assert s[("gitlab_hook_actions", (("kind", "ensure_running"), ("state", "pending")))] == 1


def test_metrics_survive_broken_storage(settings, queue):
    path = settings.data_dir / "broken" / "intake.db"
    store = _store_opened_elsewhere(path)
    _replace_with_directory(path)
    client = create_app(settings, store=store, queue=queue).test_client()
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert "gitlab_hook_queue_depth" in resp.get_data(as_text=True)


# --- coalescing and once semantics ----------------------------------------------------------


def test_burst_of_pushes_coalesces_into_one_pending_row(post, store, queue):
    deliveries = set()
    for i in range(50):
        body = push_payload(after=f"{i + 1:040x}", checkout_sha=f"{i + 1:040x}")
        resp = post(body, headers={"Idempotency-Key": f"burst-{i}", "X-Gitlab-Event-UUID": f"ev-{i}"})
        assert resp.status_code == 202
        assert resp.get_json()["actions"] == ["ensure_running:buildfront"]
        deliveries.add(resp.get_json()["delivery"])
    assert len(deliveries) == 50
    rows = store.rows()
    assert [(r.key, r.state) for r in rows] == [("ensure_running:buildfront", "pending")]
    assert queue.depth() == (1, 0)
    assert store.dedupe_size() == 50


def test_push_after_the_pending_row_was_taken_gets_a_new_row(post, store, queue):
    post(push_payload())
    [row] = store.rows()
    assert store.claim(row.id, "worker-1", 60) is not None
    resp = post(push_payload())
    assert resp.status_code == 202
    assert [(r.key, r.state) for r in store.rows()] == [
        ("ensure_running:buildfront", "running"), ("ensure_running:buildfront", "pending")]
    assert queue.depth() == (2, 0)


def test_job_and_pipeline_events_for_one_failed_job_give_one_report(post, store, queue):
    job = post(failed_job_payload(job_id=9001), event="Job Hook")
    builds = [{"id": 9001, "name": "migrate-db", "stage": "deploy", "status": "failed",
               "failure_reason": "script_failure", "allow_failure": False}]
    pipe = post(pipeline_payload(status="failed", builds=builds), event="Pipeline Hook")
    assert job.status_code == 202 and pipe.status_code == 202
    assert pipe.get_json()["actions"] == ["report_migration_failure:job/9001"]
    rows = store.rows()
    assert [r.key for r in rows] == ["report_migration_failure:job/9001"]
    assert queue.depth() == (1, 0)
    # Even after the report was sent, a late event does not report it again.
    owner = "worker-1"
    assert store.claim(rows[0].id, owner, 60) is not None
    assert store.complete(rows[0].id, owner, "sent")
    again = post(failed_job_payload(job_id=9001), event="Job Hook")
    assert again.status_code == 202
    assert len(store.rows()) == 1
    assert queue.depth() == (1, 0)


# --- other requests and secrets -------------------------------------------------------------


def test_other_methods_and_paths_answer_json(client):
    resp = client.get("/gitlab/webhook")
    assert resp.status_code == 405
    assert "error" in resp.get_json()
    resp = client.get("/nope")
    assert resp.status_code == 404
    assert "error" in resp.get_json()


def test_error_bodies_never_contain_the_secrets(make_settings, store, queue):
    settings = make_settings(GITLAB_WEBHOOK_SIGNING_TOKEN=SIGNING_KEY)
    client = create_app(settings, store=store, queue=queue).test_client()
    requests = [
        ({"X-Gitlab-Token": SECRET + "x"}, json.dumps(push_payload())),
        ({"X-Gitlab-Token": SECRET[:-1]}, json.dumps(push_payload())),
        ({"X-Gitlab-Token": "x", "webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"},
         json.dumps(push_payload())),
        ({"X-Gitlab-Token": SECRET}, "{broken"),
        ({"X-Gitlab-Token": SECRET}, json.dumps(push_payload(ref=5))),
        ({"X-Gitlab-Token": SECRET}, "[]"),
    ]
    for extra, data in requests:
        resp = client.post("/gitlab/webhook", data=data, headers={"X-Gitlab-Event": "Push Hook", **extra})
        assert resp.status_code in (400, 401)
        text = resp.get_data(as_text=True)
        assert SECRET not in text
        assert SIGNING_KEY[len("whsec_"):] not in text
