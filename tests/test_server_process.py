"""The HTTP contract through the real ``gitlab-hook serve`` process tree (gunicorn web + huey worker).

One server is shared by the HTTP tests (module scope); the start-up, crash and shutdown tests
start their own, the way ``make run`` does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
import yaml

from gitlab_hook.intake import IntakeStore
from tests.conftest import RULES, SECRET, failed_job_payload, payload, push_payload
from tests.processes import ROOT, ServiceProcess, free_port

MAX_BODY = 32 * 1024


def _wait(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Server:
    """A running ``serve`` tree: base URL, its store, and a poster with GitLab's headers."""

    def __init__(self, proc: ServiceProcess, port: int, data_dir: Path, secret: str | None):
        self.proc, self.port, self.secret = proc, port, secret
        self.base = f"http://127.0.0.1:{port}"
        self.store = IntakeStore(data_dir / "intake.db")

    def post(self, body: Any, event: str | None = "Push Hook", token: str | None = "default",
             headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        h = {"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex}
        if event is not None:
            h["X-Gitlab-Event"] = event
        token = self.secret if token == "default" else token
        if token is not None:
            h["X-Gitlab-Token"] = token
        h.update(headers or {})
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(self.base + "/gitlab/webhook", data=data, headers=h, timeout=10, **kw)

    def pids(self, name: str) -> list[int]:
        """Pids the supervisor logged for a child, oldest first."""
        return [int(p) for p in re.findall(rf"started {name} \(pid (\d+)\)", self.proc.log())]


def _stop(srv: "Server") -> int:
    """Stop the tree; whatever outlives its leader (a failed test) is killed, not left running."""
    code = srv.proc.stop()
    try:
        os.killpg(srv.proc.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return code


def _start(tmp: Path, env: dict[str, str], secret: str | None) -> Server:
    port = free_port()
    proc = ServiceProcess("serve", env, tmp / "serve.log", ["--port", str(port)]).start()
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/readyz")
        _wait(lambda: "worker start:" in proc.log(), 20, "the worker to start")
    except BaseException:
        proc.stop()
        try:
            os.killpg(proc.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        raise
    return Server(proc, port, Path(env["DATA_DIR"]), secret)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    cfg = tmp / "rules.yaml"
    cfg.write_text(yaml.safe_dump(RULES))
    env = {"DATA_DIR": str(tmp / "var"), "GITLAB_HOOK_CONFIG": str(cfg), "GITLAB_WEBHOOK_SECRET": SECRET,
           "WEBHOOK_MAX_BODY_BYTES": str(MAX_BODY)}
    srv = _start(tmp, env, SECRET)
    yield srv
    assert _stop(srv) == 0, srv.proc.log()


def _make_run_env(tmp: Path) -> dict[str, str]:
    """What ``make run`` gives ``gitlab-hook serve``: the example rules, no secret, no integrations."""
    return {"DATA_DIR": str(tmp / "var"), "GITLAB_HOOK_CONFIG": str(ROOT / "config.example.yaml")}


@pytest.fixture(scope="module")
def make_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("make-run")
    srv = _start(tmp, _make_run_env(tmp), None)
    m = re.search(r"GITLAB_WEBHOOK_SECRET was not set; generated for this run: (\S+)", srv.proc.log())
    assert m, srv.proc.log()
    srv.secret = m.group(1)
    yield srv
    assert _stop(srv) == 0, srv.proc.log()


# --- the HTTP table, row by row --------------------------------------------------------------


def test_push_to_a_watched_branch_is_queued_with_its_actions(server):
    records = server.store.dedupe_size()
    r = server.post(push_payload("stage"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued"
    assert re.fullmatch(r"[0-9a-f]{32}", body["delivery"])
    assert body["actions"] == ["ensure_running:buildfront"]
    assert server.store.dedupe_size() == records + 1


def test_the_worker_of_the_same_tree_runs_the_queued_action(server):
    job_id = 880_000 + os.getpid() % 1000
    r = server.post(failed_job_payload(job_id=job_id), event="Job Hook")
    assert r.status_code == 202, r.text
    assert r.json()["actions"] == [f"report_migration_failure:job/{job_id}"]
    delivery = r.json()["delivery"]
    (row,) = [row for row in server.store.rows() if row.delivery == delivery]

    entries = _wait(lambda: [e for aid, e in server.store.journal() if aid == row.id], 15,
                    "the dry-run journal entry", step=0.05)
    assert len(entries) == 1 and f"#{job_id}" in entries[0] and "would report failed migration job" in entries[0]
    assert server.store.get(row.id).state == "done"


@pytest.mark.parametrize("body, event, reason", [
    (push_payload("feature/x"), "Push Hook", "no runner watches branch feature/x"),
    (payload("tag_push.json"), "Tag Push Hook", "tag push"),
])
def test_an_event_we_do_not_act_on_is_ignored_with_200(server, body, event, reason):
    records, rows = server.store.dedupe_size(), len(server.store.rows())
    r = server.post(body, event=event)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ignored" and reason in r.json()["reason"]
    assert (server.store.dedupe_size(), len(server.store.rows())) == (records, rows)


def test_the_same_idempotency_key_again_is_a_duplicate_and_enqueues_nothing(server):
    key = {"Idempotency-Key": f"dup-{uuid.uuid4()}"}
    job = failed_job_payload(job_id=770_000 + os.getpid() % 1000)
    first = server.post(job, event="Job Hook", headers=key)
    assert first.status_code == 202, first.text
    records, rows = server.store.dedupe_size(), len(server.store.rows())
    again = server.post(job, event="Job Hook", headers=key)
    assert again.status_code == 200, again.text
    assert again.json() == {"status": "duplicate", "delivery": first.json()["delivery"]}
    assert (server.store.dedupe_size(), len(server.store.rows())) == (records, rows)


@pytest.mark.parametrize("token", [None, "wrong-secret", ""])
def test_a_missing_or_wrong_token_gets_401_and_nothing_is_enqueued(server, token):
    records, rows = server.store.dedupe_size(), len(server.store.rows())
    r = server.post(push_payload("stage"), token=token)
    assert r.status_code == 401, r.text
    assert r.json()["error"] and SECRET not in r.text
    assert (server.store.dedupe_size(), len(server.store.rows())) == (records, rows)


@pytest.mark.parametrize("data, what", [(b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"),
                                        (b"", "not valid JSON")])
def test_a_body_that_is_not_a_json_object_gets_400(server, data, what):
    r = server.post(data)
    assert r.status_code == 400, r.text
    assert what in r.json()["error"]


def test_a_body_over_the_limit_gets_413(server):
    big = push_payload("stage", padding="x" * (MAX_BODY + 10))
    records = server.store.dedupe_size()
    r = server.post(big)
    assert r.status_code == 413, r.text
    assert str(MAX_BODY) in r.json()["error"]
    assert server.store.dedupe_size() == records


def test_a_huge_declared_body_is_refused_without_waiting_for_the_rest(server):
    """Content-Length says 50 MB, only 64 KB arrive: the 413 comes at once and the server lets go."""
    records = server.store.dedupe_size()
    head = (f"POST /gitlab/webhook HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\nX-Gitlab-Event: Push Hook\r\nX-Gitlab-Token: {SECRET}\r\n"
            f"Content-Length: {50 * 1024 * 1024}\r\n\r\n").encode()
    answered = closed = float("inf")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        started = time.monotonic()
        s.sendall(head + b'{"padding": "' + b"x" * (64 * 1024 - 13))
        s.settimeout(2.0)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            answered = time.monotonic() - started
            # Then the server closes this connection instead of waiting for 50 MB that never come.
            while chunk:
                chunk = s.recv(65536)
                data += chunk
            closed = time.monotonic() - started
        except ConnectionResetError:
            closed = time.monotonic() - started
            answered = min(answered, closed)
        except TimeoutError:
            pass  # the asserts below say which part did not come in time
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert answered < 2.0 and closed < 2.5, (answered, closed)
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert f"larger than {MAX_BODY} bytes" in body["error"]
    assert server.store.dedupe_size() == records
    assert requests.get(server.base + "/healthz", timeout=5).status_code == 200


def test_healthz_readyz_and_metrics(server):
    h = requests.get(server.base + "/healthz", timeout=5)
    assert h.status_code == 200 and h.json()["status"] == "ok"

    r = requests.get(server.base + "/readyz", timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["checks"] and set(body["checks"].values()) == {"ok"}

    assert server.post(push_payload("stage")).status_code == 202
    m = requests.get(server.base + "/metrics", timeout=5)
    assert m.status_code == 200
    assert m.headers["Content-Type"].startswith("text/plain")
    text = m.text
    # Counters are shared by both gunicorn workers (multiprocess mode): the queued push shows.
    queued = re.search(r'^gitlab_hook_deliveries_total\{event="Push Hook",outcome="queued"\} (\S+)$', text, re.M)
    assert queued and float(queued.group(1)) >= 1, text
    assert "gitlab_hook_webhook_seconds_bucket" in text
    assert "gitlab_hook_queue_depth" in text
    assert SECRET not in text


# --- start-up the make-run way, crashes, shutdown ---------------------------------------------


def test_make_run_prints_a_generated_secret_and_the_banner_with_dry_run_lines(make_run):
    log = make_run.proc.log()
    assert "gitlab-hook listening on http://127.0.0.1:%d/gitlab/webhook" % make_run.port in log
    assert "webhook secret: generated for this run" in log
    dry = [line for line in log.splitlines() if "DRY-RUN" in line]
    assert {line.split()[0] for line in dry} >= {"telegram", "gitlab", "yandex_compute", "kubernetes"}, log
    assert "config.example.yaml" in log


def test_make_run_accepts_the_printed_secret_and_refuses_a_wrong_one(make_run):
    ok = make_run.post(push_payload("stage"))
    assert ok.status_code == 202, ok.text
    assert ok.json()["actions"] == ["ensure_running:buildfront"]
    wrong = make_run.post(push_payload("stage"), token=make_run.secret + "x")
    assert wrong.status_code == 401
    assert make_run.secret not in wrong.text


def test_a_crashed_worker_is_restarted_by_the_supervisor(make_run):
    (worker,) = make_run.pids("worker")
    os.kill(worker, signal.SIGKILL)
    _wait(lambda: len(make_run.pids("worker")) == 2, 10, "the supervisor to restart the worker")
    restarted = make_run.pids("worker")[-1]
    assert restarted != worker and _alive(restarted)
    assert re.search(r"worker exited with -9; restarting it", make_run.proc.log())
    # The new worker does the work.
    job_id = 990_000 + os.getpid() % 1000
    r = make_run.post(failed_job_payload(job_id=job_id), event="Job Hook")
    assert r.status_code == 202, r.text
    _wait(lambda: any(f"#{job_id}" in e for _, e in make_run.store.journal()), 15, "the restarted worker's run")
    assert make_run.proc.proc.poll() is None


def test_sigterm_drains_and_stops_both_children(tmp_path):
    srv = _start(tmp_path, _make_run_env(tmp_path), None)
    try:
        (web,), (worker,) = srv.pids("web"), srv.pids("worker")
        assert _alive(web) and _alive(worker)
        srv.proc.signal(signal.SIGTERM)
        started = time.monotonic()
        code = srv.proc.proc.wait(timeout=30)
        assert code == 0, srv.proc.log()
        assert time.monotonic() - started < 30
        assert not _alive(web) and not _alive(worker)
        # Nothing of the tree is left (gunicorn's own workers included).
        assert not _group_alive(srv.proc.proc.pid)
        log = srv.proc.log()
        assert "web stopped (exit 0)" in log and "worker stopped (exit 0)" in log
    finally:
        _stop(srv)


def test_a_terminal_hangup_stops_the_whole_tree(tmp_path):
    """Closing the terminal of ``make run`` sends SIGHUP to the foreground group: nothing may stay behind."""
    srv = _start(tmp_path, _make_run_env(tmp_path), None)
    try:
        pgid = srv.proc.proc.pid
        os.killpg(pgid, signal.SIGHUP)
        srv.proc.proc.wait(timeout=30)
        _wait(lambda: not _group_alive(pgid), 10, "every process of the tree to exit")
        with pytest.raises(requests.ConnectionError):
            requests.get(srv.base + "/healthz", timeout=2)
    finally:
        _stop(srv)


def test_worker_drains_and_exits_cleanly_on_sighup(tmp_path):
    """A closed terminal sends SIGHUP: the worker stops like on SIGTERM, it does not re-exec itself."""
    import signal as _signal

    cfg = tmp_path / "rules.yaml"
    cfg.write_text("runners: []\n")
    worker = ServiceProcess("worker", {"DATA_DIR": str(tmp_path / "var"), "GITLAB_HOOK_CONFIG": str(cfg)},
                            tmp_path / "worker.log").start()
    deadline = time.monotonic() + 20
    while "worker started" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.signal(_signal.SIGHUP)
    assert worker.proc.wait(timeout=20) == 0, worker.log()
    assert "Traceback" not in worker.log()
