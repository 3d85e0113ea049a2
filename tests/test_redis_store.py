"""The Redis backend: VmState parity, the worker on Redis, races from threads and processes, outages.

The intake and ledger behaviour is checked on both backends by tests/test_intake.py and
tests/test_ledger.py (parametrized); this module adds what only several replicas can break.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time

import pytest

from gitlab_hook.app import create_app
from gitlab_hook.check import _probe_queue
from gitlab_hook.effects import Context, Effect
from gitlab_hook.intake import IntakeStore
from gitlab_hook.ledger import Ledger
from gitlab_hook.redis_store import RedisIntakeStore, RedisLedger, RedisVmState, StorageError, connect
from gitlab_hook.runner_control import RunnerControl, StartPolicy
from gitlab_hook.stores import open_stores
from gitlab_hook.vm_state import VmState
from gitlab_hook.worker import ActionRunner
from tests import test_worker
from tests.conftest import SECRET, push_payload
from tests.processes import free_port
from tests.redis_fixtures import BACKENDS, redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.redis_server import RedisServer
from tests.test_intake import ALERT, START, Clock

PUSH = {"vm": "buildfront", "cause": "push", "project": "group/app", "branch": "stage", "user": "jsmith",
        "sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "title": "Fix the login page"}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=BACKENDS)
def state(request, tmp_path, clock):
    if request.param == "redis":
        return RedisVmState(request.getfixturevalue("redis_url"), clock=clock)
    return VmState(tmp_path / "intake.db", clock=clock)


@pytest.fixture
def rdb(redis_url, clock):
    return RedisIntakeStore(redis_url, clock=clock)


# --- VmState: the same behaviour on both backends ---------------------------------------------

def test_lock_is_exclusive_reentrant_and_expires_by_our_clock(state, clock):
    assert state.try_lock("start:buildfront", "action:1", 60)
    assert not state.try_lock("start:buildfront", "action:2", 60)
    assert state.holder("start:buildfront") == "action:1"
    assert state.try_lock("start:buildfront", "action:1", 120)  # re-entrant, and extends
    clock.t += 100
    assert not state.try_lock("start:buildfront", "action:2", 60)
    clock.t += 21
    assert state.holder("start:buildfront") is None
    assert state.try_lock("start:buildfront", "action:2", 60)  # expired: taken over
    assert state.holder("start:buildfront") == "action:2"


def test_unlock_releases_only_our_own_lock(state):
    state.try_lock("power:vm", "a", 60)
    state.unlock("power:vm", "b")
    assert state.holder("power:vm") == "a"
    state.unlock("power:vm", "a")
    assert state.holder("power:vm") is None and state.try_lock("power:vm", "b", 60)
    assert state.holder("other") is None


def test_progress_merges_and_prunes_by_age(state, clock):
    assert state.progress("start:1") == {}
    state.save_progress("start:1", vm="buildfront", operation_id="op1", at=1795996800.123456)
    assert state.save_progress("start:1", start_told=True) == {
        "vm": "buildfront", "operation_id": "op1", "at": 1795996800.123456, "start_told": True}
    assert state.progress("start:1")["at"] == 1795996800.123456  # floats survive exactly
    clock.t += 100
    state.save_progress("start:2", vm="buildback")
    assert state.prune(older_than=50) == 1
    assert state.progress("start:1") == {} and state.progress("start:2") == {"vm": "buildback"}


def test_concurrent_progress_merges_lose_no_field(state):
    def work(n: int) -> None:
        for i in range(20):
            state.save_progress("p", **{f"t{n}_{i}": i})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(state.progress("p")) == 120


def test_redis_lock_info_and_progress_items(redis_url, clock):
    s = RedisVmState(redis_url, clock=clock)
    s.try_lock("keep:buildfront", "@dev", 7200)
    assert s.lock_info("keep:buildfront") == ("@dev", clock.t + 7200)
    s.save_progress("start:a", vm="a")
    clock.t += 10
    s.save_progress("start:b", vm="b")
    s.save_progress("resize:c", vm="c")
    assert s.progress_items("start:") == [("start:a", {"vm": "a"}), ("start:b", {"vm": "b"})]
    assert s.progress_items("start:", updated_before=clock.t) == [("start:a", {"vm": "a"})]
    assert s.progress_items(updated_after=clock.t - 5) == [("resize:c", {"vm": "c"}), ("start:b", {"vm": "b"})]


# --- the worker and the start path on Redis ----------------------------------------------------

WORKER_TESTS = [
    test_worker.test_success_marks_done_and_journals,
    test_worker.test_transient_failure_retries_with_backoff_then_succeeds,
    test_worker.test_retry_after_from_the_outside_system_is_honoured,
    test_worker.test_gives_up_after_the_window_with_an_alert_that_says_what_failed,
    test_worker.test_permanent_error_fails_at_once_and_alerts,
    test_worker.test_a_bug_in_a_handler_is_retried_not_lost,
    test_worker.test_redriver_at_start_queues_only_rows_without_a_waiting_task,
    test_worker.test_periodic_redrive_picks_up_stale_rows_only,
]


@pytest.mark.parametrize("check", WORKER_TESTS, ids=[f.__name__[5:] for f in WORKER_TESTS])
def test_worker_behaviour_on_redis(check, rdb, clock):
    check(rdb, clock)


def test_concurrent_starts_on_redis_locks_make_one_start_call(redis_url, compute_client, notifier, compute_api,
                                                              bot_api):
    compute_api.add_instance("buildfront")
    # A VmState per thread, each with its own connection pool: like workers on different hosts.
    controls = [RunnerControl(lambda: compute_client, notifier, RedisVmState(redis_url),
                              ledger=RedisLedger(redis_url), policy=StartPolicy(poll_interval=0.02, start_wait=5))
                for _ in range(8)]
    barrier = threading.Barrier(8)

    def go(i: int) -> None:
        barrier.wait()
        controls[i].ensure_running(PUSH, Context(100 + i, 1, lambda: None))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert compute_api.count("POST", ":start") == 1
    assert len(bot_api.messages()) == 2
    assert RedisLedger(redis_url).last("buildfront")[:2] == ("on", "push")


# --- races: threads and processes accepting the same burst -------------------------------------

def test_a_burst_from_threads_gives_one_pending_row_and_one_winner_per_key(rdb):
    results: list = []
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        store = RedisIntakeStore(rdb.r)  # one client: its pool hands each thread a connection
        barrier.wait()
        for i in range(50):
            results.append(store.accept(f"burst:{n}:{i}", "push", [START]))
            results.append(store.accept(f"shared:{i}", "push", [START]))  # every thread: the same 50 keys

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    (row,) = rdb.rows()
    assert row.state == "pending"
    accepted = [a for a in results if not a.duplicate]
    assert len(accepted) == 8 * 50 + 50  # every burst key once, every shared key once
    assert {a.action_ids for a in accepted} == {(row.id,)}
    assert sum(1 for a in accepted if a.new_ids) == 1
    assert rdb.dedupe_size() == 450


def _accept_burst(url: str, n: int, barrier, out) -> None:
    store = RedisIntakeStore(url)
    barrier.wait()
    mine = []
    for i in range(150):
        a = store.accept(f"proc{n}:{i}", "push", [START])
        b = store.accept(f"both:{i}", "build", [ALERT])
        mine.append((a.duplicate, a.action_ids, a.new_ids, b.duplicate, b.new_ids))
    # Then, when every process is done accepting, each races to run the one pending row.
    barrier.wait()
    claimed = [row.id for i in range(20) if (row := store.claim(mine[0][1][0], f"host{n}:1:x", 60))]
    out.put((n, mine, claimed))


def _race_for_lock(url: str, n: int, barrier, out) -> None:
    state = RedisVmState(url)
    wins = []
    for rnd in range(30):
        barrier.wait()
        if state.try_lock(f"start:vm{rnd}", f"worker-{n}", 60):
            wins.append(rnd)
    out.put((n, wins))


def _run_processes(target, url: str, count: int) -> list:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(count), ctx.Queue()
    procs = [ctx.Process(target=target, args=(url, n, barrier, out)) for n in range(count)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return results


def test_a_burst_split_across_processes_gives_one_pending_row_and_one_alert_row(redis_url):
    results = _run_processes(_accept_burst, redis_url, 3)
    store = RedisIntakeStore(redis_url)
    rows = store.rows()
    assert sorted(r.kind for r in rows) == ["ensure_running", "report_migration_failure"]
    start_row = next(r for r in rows if r.kind == "ensure_running")
    pushes = [m for _, mine, _ in results for m in mine]
    assert not any(dup for dup, *_ in pushes)  # every process's own keys were new
    assert {ids for _, ids, *_ in pushes} == {(start_row.id,)}  # ... and all coalesced onto one row
    assert sum(1 for _, _, new, *_ in pushes if new) == 1
    # The shared job keys: each accepted by exactly one process, the alert row created once.
    assert sum(1 for *_, dup, _ in pushes if not dup) == 150
    assert sum(1 for *_, new in pushes if new) == 1
    # Exactly one process won the claim, once.
    assert sorted(c for _, _, claimed in results for c in claimed) == [start_row.id]
    assert store.get(start_row.id).state == "running" and store.get(start_row.id).attempts == 1


def test_try_lock_is_exclusive_across_processes(redis_url):
    results = _run_processes(_race_for_lock, redis_url, 4)
    wins = sorted(rnd for _, w in results for rnd in w)
    assert wins == list(range(30))  # every round: exactly one winner among the processes
    state = RedisVmState(redis_url)
    winners = {rnd: f"worker-{n}" for n, w in results for rnd in w}
    assert all(state.holder(f"start:vm{rnd}") == winners[rnd] for rnd in range(30))


# --- a reply lost after the write: redis-py resends, the store must not do it twice ------------

class Replayed:
    """A script whose every call runs twice with the same arguments, as a resend after a lost reply."""

    def __init__(self, script):
        self.script = script

    def __call__(self, *args, **kwargs):
        self.script(*args, **kwargs)
        return self.script(*args, **kwargs)


def test_resent_writes_are_recognised_not_repeated(rdb, clock):
    for name in ("_accept", "_claim", "_finish_script"):
        setattr(rdb, name, Replayed(getattr(rdb, name)))
    a = rdb.accept("k", "build", [ALERT])
    assert not a.duplicate and len(a.new_ids) == 1  # our own write, not someone's duplicate
    row = rdb.claim(a.new_ids[0], "w:1:a", 60)
    assert row is not None and row.attempts == 1
    assert rdb.complete(row.id, "w:1:a", "sent", ["would send"])
    assert rdb.journal() == [(row.id, "would send")]
    assert rdb.counters("task_outcomes") == {("report_migration_failure", "done"): 1}
    # A true second claim by the same owner is still refused: the replay is recognised by its token.
    (bid,) = rdb.accept("k2", "push", [START]).new_ids
    plain = RedisIntakeStore(rdb.r, clock=clock)
    assert plain.claim(bid, "w:1:a", 60) is not None and plain.claim(bid, "w:1:a", 60) is None


# --- backend choice, key prefix, outages --------------------------------------------------------

def test_open_stores_picks_sqlite_without_redis_url_and_redis_with_it(make_settings, redis_url, tmp_path):
    local = open_stores(make_settings())
    assert local.backend == "sqlite" and isinstance(local.intake, IntakeStore)
    assert isinstance(local.vm_state, VmState) and isinstance(local.ledger, Ledger)
    assert local.intake.path == str(tmp_path / "var" / "intake.db")
    shared = make_settings(REDIS_URL=redis_url, DATA_DIR=str(tmp_path / "replica"))
    stores = open_stores(shared)
    assert stores.backend == "redis" and isinstance(stores.intake, RedisIntakeStore)
    assert isinstance(stores.vm_state, RedisVmState) and isinstance(stores.ledger, RedisLedger)
    stores.intake.accept("k", "push", [START])
    stores.ledger.record("buildfront", "on", "push")
    assert not shared.data_dir.exists()  # nothing went to disk on this host
    other = open_stores(shared)  # another replica
    assert other.intake.accept("k", "push", [START]).duplicate and other.ledger.vms() == ["buildfront"]
    assert "intake on redis" in _probe_queue(shared)


def test_key_prefixes_keep_two_installations_apart(redis_url, clock):
    a = RedisIntakeStore(redis_url, prefix="team-a:", clock=clock)
    b = RedisIntakeStore(redis_url, prefix="team-b:", clock=clock)
    a.accept("k", "push", [START])
    assert not b.accept("k", "push", [START]).duplicate
    assert len(a.rows()) == len(b.rows()) == 1
    keys = connect(redis_url).keys("*")
    assert keys and all(k.startswith(("team-a:", "team-b:")) for k in keys)


def test_unreachable_redis_raises_storage_error_quickly_without_the_password():
    url = f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0"
    for call in (lambda: RedisIntakeStore(url).accept("k", "push", [START]),
                 lambda: RedisIntakeStore(url).ping(),
                 lambda: RedisVmState(url).try_lock("x", "o", 1),
                 lambda: RedisLedger(url).usage(0, 1)):
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            call()
        assert time.monotonic() - started < 2
        assert "s3cret" not in str(info.value) and "ConnectionError" in str(info.value)


def test_redis_stopping_mid_test_gives_503_and_readyz_names_the_part(make_settings, tmp_path):
    port = free_port()
    server = RedisServer(tmp_path / "redis", port=port).start()
    try:
        settings = make_settings(REDIS_URL=server.url)
        client = create_app(settings).test_client()  # stores and huey queue on Redis, as in production
        headers = {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook", "Idempotency-Key": "resend-1",
                   "Content-Type": "application/json"}
        body = json.dumps(push_payload())
        assert client.get("/readyz").status_code == 200
        assert client.post("/gitlab/webhook", data=body, headers=headers).status_code == 202
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'gitlab_hook_actions{kind="ensure_running",state="pending"} 1.0' in metrics

        server.stop()
        started = time.monotonic()
        resp = client.post("/gitlab/webhook", data=body, headers={**headers, "Idempotency-Key": "new-2"})
        assert resp.status_code == 503 and "unavailable" in resp.get_json()["error"]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        checks = ready.get_json()["checks"]
        assert checks["intake_storage"].startswith("failing: StorageError")
        assert checks["queue_storage"].startswith("failing")
        assert time.monotonic() - started < 5  # inside GitLab's 10 s, never hanging on retries

        # Back on the same port and files: the append-only file kept what was accepted.
        server = RedisServer(tmp_path / "redis", port=port).start()
        assert client.get("/readyz").status_code == 200
        again = client.post("/gitlab/webhook", data=body, headers=headers)
        assert again.status_code == 200 and again.get_json()["status"] == "duplicate"
        assert client.post("/gitlab/webhook", data=body, headers={**headers, "Idempotency-Key": "new-3"}
                           ).status_code == 202
    finally:
        server.stop()


def test_a_lua_error_is_a_storage_error_too(rdb):
    rdb.r.set(rdb.k("delivery"), "not a hash")  # a foreign value where a hash should be
    with pytest.raises(StorageError, match="WRONGTYPE|ResponseError"):
        rdb.accept("k", "push", [START])


def test_two_workers_with_their_own_clients_run_a_queued_action_once(rdb, redis_url, clock):
    # The same action delivered to two workers (two store objects, two pools): one effect.
    (aid,) = rdb.accept("k", "build", [ALERT]).new_ids
    calls = []

    def handler(payload, ctx):
        calls.append(ctx.attempt)
        return Effect("sent")

    one = ActionRunner(rdb, {ALERT.kind: handler}, alert=lambda t: None, owner="h1:1:aaaa", clock=clock)
    two = ActionRunner(RedisIntakeStore(redis_url, clock=clock), {ALERT.kind: handler}, alert=lambda t: None,
                       owner="h2:1:bbbb", clock=clock)
    assert one(aid) is None and two(aid) is None
    assert calls == [1] and rdb.get(aid).state == "done"
