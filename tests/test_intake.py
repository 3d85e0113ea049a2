"""The durable intake store: dedupe, coalescing, leases, retries, orphans, pruning (SQLite and Redis)."""

from __future__ import annotations

import threading

import pytest

from gitlab_hook.intake import IntakeStore, StorageError
from gitlab_hook.planner import Action
from gitlab_hook.redis_intake import RedisIntakeStore
from tests.redis_fixtures import BACKENDS, redis_server_fixture, redis_url_fixture  # noqa: F401

START = Action("ensure_running", "ensure_running:buildfront", {"vm": "buildfront"})
ALERT = Action("report_migration_failure", "report_migration_failure:job/7", {"job_id": 7}, once=True)


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=BACKENDS)
def open_store(request, tmp_path, clock):
    """Open a store on the backend under test; each call is a new store on the same data (file or Redis)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return lambda: RedisIntakeStore(url, clock=clock)
    return lambda: IntakeStore(tmp_path / "intake.db", clock=clock)


@pytest.fixture
def db(open_store):
    return open_store()


def test_accept_records_delivery_and_actions_and_spots_duplicates(db):
    first = db.accept("idem:a", "push", [START])
    assert not first.duplicate and first.new_ids == first.action_ids and len(first.new_ids) == 1
    again = db.accept("idem:a", "push", [START])
    assert again.duplicate and again.delivery == first.delivery and again.new_ids == ()
    assert len(db.rows()) == 1


def test_dedupe_survives_a_new_store_on_the_same_data(open_store):
    first = open_store().accept("idem:x", "push", [START])
    again = open_store().accept("idem:x", "push", [START])
    assert again.duplicate and again.delivery == first.delivery


def test_pending_actions_coalesce_but_a_running_one_does_not(db):
    a = db.accept("k1", "push", [START])
    b = db.accept("k2", "push", [START])
    assert b.action_ids == a.action_ids and b.new_ids == ()
    assert db.claim(a.action_ids[0], "w:1:x", 60) is not None
    c = db.accept("k3", "push", [START])
    assert c.new_ids and c.new_ids != a.action_ids


def test_once_actions_happen_once_ever_unless_they_failed(db):
    a = db.accept("k1", "build", [ALERT])
    (aid,) = a.new_ids
    db.claim(aid, "w:1:x", 60)
    assert db.accept("k2", "pipeline", [ALERT]).action_ids == (aid,)  # running: coalesces onto it
    db.complete(aid, "w:1:x", "sent")
    done = db.accept("k3", "pipeline", [ALERT])
    assert done.new_ids == () and done.action_ids == (aid,)
    # A given-up alert may be tried again when GitLab resends the event.
    other = Action("report_migration_failure", "report_migration_failure:job/8", {"job_id": 8}, once=True)
    (bid,) = db.accept("k4", "build", [other]).new_ids
    db.claim(bid, "w:1:x", 60)
    assert db.fail(bid, "w:1:x", "Telegram unreachable")
    retried = db.accept("k5", "build", [other])
    assert len(retried.new_ids) == 1 and retried.new_ids != (bid,)
    assert db.accept("k6", "build", [other]).action_ids == retried.new_ids  # and once again only


def test_claim_is_exclusive_and_respects_due_time(db, clock):
    (aid,) = db.accept("k", "push", [START]).new_ids
    row = db.claim(aid, "w:1:a", 60)
    assert row is not None and row.attempts == 1 and row.payload == {"vm": "buildfront"}
    assert db.claim(aid, "w:2:b", 60) is None  # leased
    assert db.retry_later(aid, "w:1:a", "boom", delay=10)
    assert db.claim(aid, "w:2:b", 60) is None  # not due yet
    clock.t += 10
    row = db.claim(aid, "w:2:b", 60)
    assert row is not None and row.attempts == 2 and row.last_error == "boom"


def test_expired_lease_can_be_taken_over_and_the_old_owner_cannot_finish(db, clock):
    (aid,) = db.accept("k", "push", [START]).new_ids
    db.claim(aid, "w:1:a", 60)
    clock.t += 61
    assert db.claim(aid, "w:2:b", 60) is not None
    assert db.complete(aid, "w:1:a", "late") is False
    assert db.complete(aid, "w:2:b", "ok") is True
    assert db.get(aid).state == "done" and db.get(aid).result == "ok"


def test_renew_extends_the_lease(db, clock):
    (aid,) = db.accept("k", "push", [START]).new_ids
    db.claim(aid, "w:1:a", 60)
    clock.t += 50
    assert db.renew(aid, "w:1:a", 60)
    clock.t += 50
    assert db.claim(aid, "w:2:b", 60) is None


def test_journal_commits_with_completion_and_outcomes_are_counted(db):
    (aid,) = db.accept("k", "build", [ALERT]).new_ids
    db.claim(aid, "w:1:a", 60)
    db.complete(aid, "w:1:a", "ok", ["would send alert"])
    assert db.journal() == [(aid, "would send alert")]
    assert db.counters("task_outcomes") == {("report_migration_failure", "done"): 1}


def test_release_orphans_and_redrivable(db, clock):
    ids = [db.accept(f"k{i}", "build", [Action("report_migration_failure", f"r:{i}", {}, once=True)]).new_ids[0]
           for i in range(3)]
    db.claim(ids[0], "host:111:dead", 600)
    db.claim(ids[1], "host:222:alive", 600)
    released = db.release_orphans(lambda owner: owner.endswith(":dead"))
    assert released == [ids[0]]
    assert db.redrivable(grace=0) == [ids[0], ids[2]]
    assert db.redrivable(grace=30) == []  # all touched just now
    clock.t += 601
    assert db.redrivable(grace=30) == ids  # the live owner's lease ran out too


def test_prune_forgets_old_dedupe_records_by_age_and_count(db, clock):
    for i in range(5):
        db.accept(f"k{i}", "push", [])
        clock.t += 1
    assert db.prune(dedupe_ttl=3.5, dedupe_max=100) == 2  # k0 and k1 are older than 3.5 s
    assert db.dedupe_size() == 3
    db.prune(dedupe_ttl=3600, dedupe_max=1)
    assert db.dedupe_size() == 1
    assert db.accept("k4", "push", []).duplicate  # the newest is kept
    assert not db.accept("k0", "push", []).duplicate  # a forgotten one is new again


def test_latency_histogram_and_state_counts(db, clock):
    (aid,) = db.accept("k", "push", [START]).new_ids
    assert db.state_counts() == {("ensure_running", "pending"): 1}
    db.claim(aid, "w:1:a", 60)
    clock.t += 0.3
    db.complete(aid, "w:1:a", "started")
    buckets, count, total = db.latency_histograms()["ensure_running"]
    assert dict(buckets)["0.25"] == 0 and dict(buckets)["0.5"] == 1 and dict(buckets)["+Inf"] == 1
    assert count == 1 and total == pytest.approx(0.3, abs=0.001)
    (bid,) = db.accept("k2", "push", [START]).new_ids
    db.claim(bid, "w:1:a", 60)
    db.retry_later(bid, "w:1:a", "503", delay=5)
    assert db.state_counts() == {("ensure_running", "done"): 1, ("ensure_running", "pending"): 1}
    assert db.counters("task_outcomes") == {("ensure_running", "done"): 1, ("ensure_running", "retry"): 1}
    assert [r.id for r in db.rows("pending")] == [bid] and [r.id for r in db.rows()] == [aid, bid]


def test_prune_forgets_long_finished_rows_and_their_journal(db, clock):
    (done,) = db.accept("k1", "build", [ALERT]).new_ids
    db.claim(done, "w:1:a", 60)
    db.complete(done, "w:1:a", "sent", ["would send"])
    other = Action("report_migration_failure", "report_migration_failure:job/8", {}, once=True)
    (failed,) = db.accept("k2", "build", [other]).new_ids
    db.claim(failed, "w:1:a", 60)
    db.fail(failed, "w:1:a", "no")
    (pending,) = db.accept("k3", "push", [START]).new_ids
    clock.t += 13 * 86400
    assert db.prune(dedupe_ttl=30 * 86400, dedupe_max=100) == 0
    clock.t += 2 * 86400
    assert db.prune(dedupe_ttl=30 * 86400, dedupe_max=100) == 3  # two rows and one journal entry
    assert db.get(done) is None and db.get(failed) is None and db.journal() == []
    assert [r.id for r in db.rows()] == [pending] and db.dedupe_size() == 3
    assert db.state_counts() == {("ensure_running", "pending"): 1}
    # The finished alert is forgotten with its row: a resend long after is a new alert, as in SQLite.
    assert db.accept("k4", "build", [ALERT]).new_ids != ()


def test_concurrent_accepts_from_threads_lose_nothing(db):
    errors = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                db.accept(f"t{n}-{i}", "build",
                          [Action("report_migration_failure", f"r:{n}:{i}", {}, once=True)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(db.rows()) == 400 and db.dedupe_size() == 400


def test_unusable_storage_raises_storage_error(tmp_path):
    bad = tmp_path / "dir.db"
    bad.mkdir()
    with pytest.raises(StorageError):
        IntakeStore(bad)
