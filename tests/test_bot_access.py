"""Who may do what, where; and the confirmations' rules (only the asker, once, before expiry, persisted)."""

from __future__ import annotations

import pytest

from bot.access import CONSOLE_ACTOR, CONSOLE_PLACE, Actor, Place, Policy
from bot.commands import BY_NAME
from bot.confirm import ConfirmStore, callback_data, parse_callback
from bot.redis_stores import RedisAuditLog, RedisConfirmStore
from tests.redis_fixtures import BACKENDS, redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.test_intake import Clock

ALERTS = -100777
POLICY = Policy({1: "viewer", 2: "operator", 3: "admin"}, ALERTS)
VIEWER, OPERATOR, ADMIN, NOBODY = Actor(1, "vic"), Actor(2, "olga"), Actor(3, "ada"), Actor(9, None, "Eve Smith")
ALERTS_CHAT = Place(ALERTS, "supergroup", 7)


def private(actor: Actor) -> Place:
    return Place(actor.user_id, "private")


def check(command: str, actor: Actor, place: Place):
    return POLICY.check(BY_NAME[command], actor, place)


@pytest.mark.parametrize("command, need", [
    ("help", None), ("whoami", None), ("vms", "viewer"), ("vm_status", "viewer"), ("runner_report", "viewer"),
    ("migration_logs", "viewer"), ("vm_start", "operator"), ("vm_stop", "operator"), ("vm_upgrade", "operator"),
    ("vm_keep", "operator"), ("protect_branch", "operator"), ("unprotect_branch", "operator"),
])
def test_roles_follow_the_design_table(command, need):
    ranks = {None: 0, "viewer": 1, "operator": 2, "admin": 3}
    for actor, role in ((VIEWER, "viewer"), (OPERATOR, "operator"), (ADMIN, "admin")):
        refusal = check(command, actor, ALERTS_CHAT)
        assert (refusal is None) == (ranks[role] >= ranks[need]), (command, role)
        assert (check(command, actor, private(actor)) is None) == (refusal is None)


def test_a_role_too_low_is_told_which_role_is_needed():
    refusal = check("vm_stop", VIEWER, ALERTS_CHAT)
    assert refusal.reason == "role"
    assert refusal.text == "Sorry, /vm_stop needs the operator role; you are viewer."


def test_commands_are_taken_only_in_the_alerts_chat_and_known_users_private_chats():
    other_group = Place(-100123, "supergroup")
    assert check("vms", ADMIN, other_group).reason == "chat"
    assert check("help", ADMIN, other_group).reason == "chat"
    refusal = check("vms", NOBODY, private(NOBODY))
    assert refusal.reason == "chat" and "Your Telegram id is 9" in refusal.text
    # In someone else's private chat (impossible in Telegram, but the rule holds): by chat id = user id.
    assert POLICY.chat_allowed(OPERATOR, private(OPERATOR))


def test_an_unlisted_member_of_the_alerts_chat_has_no_role():
    assert check("help", NOBODY, ALERTS_CHAT) is None
    refusal = check("vms", NOBODY, ALERTS_CHAT)
    assert refusal.reason == "no_role" and "Telegram id 9 has no role" in refusal.text


def test_whoami_answers_anyone_anywhere():
    for place in (Place(-100123, "supergroup"), private(NOBODY), ALERTS_CHAT):
        assert check("whoami", NOBODY, place) is None


def test_anonymous_posts_get_no_role():
    anon = Actor(None, None, "Team", anonymous=True)
    assert check("vms", anon, ALERTS_CHAT).reason == "anonymous"
    assert check("help", anon, ALERTS_CHAT) is None
    assert POLICY.role_of(anon) is None


def test_the_console_is_a_local_admin_and_only_the_console_uses_the_console_place():
    assert POLICY.role_of(CONSOLE_ACTOR) == "admin"
    assert all(POLICY.check(spec, CONSOLE_ACTOR, CONSOLE_PLACE) is None for spec in BY_NAME.values())
    assert check("vms", ADMIN, CONSOLE_PLACE).reason == "chat"
    assert CONSOLE_ACTOR.by == "console"


def test_mentions():
    assert VIEWER.mention == "@vic" and NOBODY.mention == "Eve Smith (id 9)"


# --- confirmations ------------------------------------------------------------------------------------


@pytest.fixture
def clock():
    return Clock(1_800_000_000.0)


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path, clock):
    """The confirmation store on SQLite and on Redis (shared by bot replicas): same behaviour."""
    if request.param == "redis":
        return RedisConfirmStore(request.getfixturevalue("redis_url"), ttl=300, clock=clock)
    return ConfirmStore(tmp_path / "intake.db", ttl=300, clock=clock)


def new(store: ConfirmStore, user: int = 2):
    return store.create(user_id=user, asker="@olga", chat_id=ALERTS, thread_id=7,
                        command={"kind": "vm_stop", "vm": "buildfront", "params": {}})


def test_callback_data_is_namespaced_and_short(store):
    conf = new(store)
    for answer in ("y", "n"):
        data = callback_data(conf.token, answer)
        assert data.startswith("cf:") and len(data.encode()) <= 64
        assert parse_callback(data) == (conf.token, answer)
    for junk in (None, "", "cf:", "cf:x:maybe", "other:abc:y", "cf::y", "cf:a:y:z"):
        assert parse_callback(junk) is None


def test_only_the_asker_answers_and_only_once(store):
    conf = new(store)
    assert store.resolve(conf.token, 3, "y").outcome == "not_yours"  # even an admin
    assert store.resolve(conf.token, None, "y").outcome == "not_yours"
    res = store.resolve(conf.token, 2, "y")
    assert res.outcome == "confirmed" and res.confirmation.command["vm"] == "buildfront"
    assert store.resolve(conf.token, 2, "y").outcome == "already"
    assert store.resolve(conf.token, 2, "n").outcome == "already"
    assert store.resolve("nope", 2, "y").outcome == "unknown"


def test_cancel(store):
    conf = new(store)
    assert store.resolve(conf.token, 2, "n").outcome == "cancelled"
    assert store.get(conf.token).state == "cancelled"


def test_a_question_expires(store, clock):
    conf = new(store)
    clock.t += 299
    other = new(store)
    clock.t += 2
    assert store.resolve(conf.token, 2, "y").outcome == "expired"
    assert store.resolve(other.token, 2, "y").outcome == "confirmed"


def test_the_sweep_expires_unanswered_questions_once(store, clock):
    a, b = new(store), new(store)
    store.attach_message(a.token, ALERTS, 42)
    assert store.expire_due() == []
    clock.t += 301
    swept = store.expire_due()
    assert {c.token for c in swept} == {a.token, b.token}
    assert next(c for c in swept if c.token == a.token).message_id == 42
    assert store.expire_due() == []
    assert store.resolve(a.token, 2, "y").outcome == "already"


def test_questions_survive_a_restart(tmp_path, clock):
    conf = new(ConfirmStore(tmp_path / "intake.db", clock=clock))
    again = ConfirmStore(tmp_path / "intake.db", clock=clock)
    assert again.resolve(conf.token, 2, "y").outcome == "confirmed"


def test_answered_questions_are_pruned_after_a_week(store, clock):
    conf, pending = new(store), new(store)
    store.resolve(conf.token, 2, "y")
    clock.t += 8 * 86400
    assert store.prune() == 1
    assert store.get(conf.token) is None and store.get(pending.token) is not None


def test_two_replicas_resolving_one_prompt_apply_exactly_one_tap(redis_url, clock):
    replicas = [RedisConfirmStore(redis_url, clock=clock) for _ in range(2)]
    conf = new(replicas[0])
    outcomes = sorted(r.resolve(conf.token, 2, "y").outcome for r in replicas)
    assert outcomes == ["already", "confirmed"]


def test_redis_audit_trail_is_newest_first_and_shared(redis_url, clock):
    a, b = RedisAuditLog(redis_url, clock=clock), RedisAuditLog(redis_url, clock=clock)
    first = a.record(actor_id=2, actor="@olga", role="operator", chat_id=ALERTS, command="vm_stop",
                     args={"vm": "buildfront"}, outcome="queued")
    second = b.record(actor_id=3, actor="@ops", role="admin", chat_id=None, command="vm_start", args=None,
                      outcome="done", detail="x" * 3000)
    rows = a.recent()
    assert [r.id for r in rows] == [second, first] and rows[1].args == {"vm": "buildfront"}
    assert rows[0].chat_id is None and len(rows[0].detail) == 2000


def test_bot_stores_follow_redis_url(make_settings, redis_url):
    from bot.audit import AuditLog
    from bot.redis_stores import open_bot_stores

    confirms, audit = open_bot_stores(make_settings(REDIS_URL=redis_url))
    assert isinstance(confirms, RedisConfirmStore) and isinstance(audit, RedisAuditLog)
    confirms, audit = open_bot_stores(make_settings())
    assert isinstance(confirms, ConfirmStore) and isinstance(audit, AuditLog)
