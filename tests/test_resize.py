"""Resize: size validation per platform, and stop → update → start through the real clients."""

from __future__ import annotations

import pytest

from gitlab_hook.effects import TransientError
from gitlab_hook.ledger import Ledger
from gitlab_hook.power import PowerControl
from gitlab_hook.resize import Resizer, SizeError, validate_size
from gitlab_hook.vm_state import VmState
from tests.conftest import IAM_TOKEN
from tests.lifecycle_support import (
    FAST,
    PROJECT_ID,
    RUNNER_ID,
    FlakyCompute,
    HookedGitLab,
    compute_client,
    ctx,
    make_world,
)

GIB = 2**30
PRIVATE = 123456789
RESIZE = {"vm": "buildfront", "by": "@ops", "progress": None, "cores": 4, "memory_gb": 8, "core_fraction": None}


# --- sizes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("platform, cores, mem, fraction", [
    ("standard-v1", 2, 1, 5), ("standard-v1", 4, 16, 20), ("standard-v1", 32, 256, 100), ("standard-v1", 2, 2, 100),
    ("standard-v2", 2, 0.5, 5), ("standard-v2", 4, 16, 50), ("standard-v2", 80, 80, 100), ("standard-v2", 12, 192, 100),
    ("standard-v3", 2, 1, 20), ("standard-v3", 4, 16, 50), ("standard-v3", 20, 320, 100),
    ("standard-v3", 24, 312, 100), ("standard-v3", 96, 576, 100), ("standard-v3", 36, 576, 100),
])
def test_allowed_sizes_pass(platform, cores, mem, fraction):
    validate_size(platform, cores, mem, fraction)


@pytest.mark.parametrize("platform, cores, mem, fraction, message", [
    ("standard-v1", 2, 4, 50, "standard-v1 does not offer a 50% core fraction; choose 5%, 20%, 100%"),
    ("standard-v1", 6, 12, 20, "standard-v1 at 20% takes 2 or 4 cores, not 6"),
    ("standard-v1", 18, 36, 100, "standard-v1 at 100% takes 2 to 16 (even), 20, 24, 28 or 32 cores, not 18"),
    ("standard-v1", 2, 20, 100, "standard-v1 with 2 cores at 100% takes 2–16 GB (1–8 GB per core), "
                                "not 20 GB (10 GB per core)"),
    ("standard-v1", 4, 1, 5, "standard-v1 with 4 cores at 5% takes 2–8 GB (0.5–2 GB per core), not 1 GB"),
    ("standard-v2", 6, 6, 5, "standard-v2 at 5% takes 2 or 4 cores, not 6"),
    ("standard-v2", 84, 84, 100, "standard-v2 at 100% takes 2 to 16 (even), then every 4 up to 80 cores, not 84"),
    ("standard-v2", 4, 10, 5, "standard-v2 with 4 cores at 5% takes 1–8 GB (0.25–2 GB per core), not 10 GB"),
    ("standard-v2", 18, 36, 100, "not 18"),
    ("standard-v3", 2, 2, 5, "standard-v3 does not offer a 5% core fraction; choose 20%, 50%, 100%"),
    ("standard-v3", 32, 400, 100, "standard-v3 with 32 cores at 100% takes 32–320 GB (1–10 GB per core), "
                                  "not 400 GB (12.5 GB per core)"),
    ("standard-v3", 24, 320, 100, "takes 24–312 GB (1–13 GB per core)"),
    ("standard-v3", 96, 600, 100, "takes 96–576 GB (1–6 GB per core)"),
    ("standard-v3", 2, 0.5, 100, "takes 2–32 GB (1–16 GB per core), not 0.5 GB"),
    ("standard-v3", 3, 6, 100, "not 3"),
    ("gpu-standard-v3", 8, 96, 100, "sizes of platform gpu-standard-v3 are not known here (only standard-v1, "
                                    "standard-v2, standard-v3)"),
    ("standard-v3", 0, 4, 100, "cores must be a positive whole number"),
    ("standard-v3", 2, -4, 100, "memory must be a positive number of GB"),
])
def test_refused_sizes_say_what_is_allowed(platform, cores, mem, fraction, message):
    with pytest.raises(SizeError) as err:
        validate_size(platform, cores, mem, fraction)
    assert message in str(err.value)


# --- the handler ------------------------------------------------------------------------------------


@pytest.fixture
def flaky():
    with FlakyCompute(tokens=(IAM_TOKEN,), transition_seconds=0.05) as api:
        yield api


@pytest.fixture
def gitlab_fake():
    with HookedGitLab() as gl:
        yield gl


@pytest.fixture
def make(tmp_path, flaky, gitlab_fake, bot_api, notifier):
    clients = []

    def build(status="RUNNING", **vm):
        client = compute_client(flaky)
        clients.append(client)
        w = make_world(tmp_path, flaky, client, gitlab_fake, bot_api, notifier)
        w.vm = flaky.add_instance("buildfront", status=status, **{"cores": 2, "memory_gb": 4, **vm})
        return w

    yield build
    for c in clients:
        c.close()


@pytest.fixture
def world(make):
    return make()


def size(w) -> tuple[int, float, int, str]:
    inst = w.compute_api.instance(w.vm)
    r = inst["resources"]
    return int(r["cores"]), int(r["memory"]) / GIB, int(r["coreFraction"]), inst["status"]


def mutations(w) -> list[str]:
    return [f"{c.method} {c.path.rsplit(':', 1)[-1] if ':' in c.path else ''}".strip()
            for c in w.compute_api.calls if c.method in ("POST", "PATCH")]


def test_resize_happy_path_edits_one_message_and_comes_back_running(world):
    w = world
    (msg_id,) = w.notifier.send_html("🔧 resizing buildfront…", chat_id=PRIVATE)
    effect = w.resizer.resize({**RESIZE, "progress": {"chat_id": PRIVATE, "message_id": msg_id}}, ctx(1))
    assert size(w) == (4, 8, 100, "RUNNING")
    assert mutations(w) == ["POST stop", "PATCH", "POST start"]
    (patch,) = w.compute_api.calls_matching("PATCH")
    assert patch.body == {"updateMask": "resourcesSpec.cores,resourcesSpec.memory",
                          "resourcesSpec": {"cores": "4", "memory": str(8 * GIB)}}
    (progress,) = w.bot_api.messages(PRIVATE)
    assert progress.text.split("\n") == [
        "🔧 Resizing buildfront from 2 cores / 4 GB to 4 cores / 8 GB, asked by @ops",
        "⏳ stopping buildfront…",
        "✅ buildfront is STOPPED",
        "⏳ changing buildfront to 4 cores / 8 GB…",
        "✅ buildfront now has 4 cores / 8 GB",
        "⏳ starting buildfront…",
        "✅ @ops resized buildfront to 4 cores / 8 GB (was 2 cores / 4 GB); it is RUNNING again (took 0 s)",
    ]
    assert w.texts() == ["✅ @ops resized buildfront to 4 cores / 8 GB (was 2 cores / 4 GB); it is RUNNING again"]
    assert "resized" in effect.summary
    rows = w.ledger.db.conn().execute("select state, cause, detail from power_events order by id").fetchall()
    assert rows == [("off", "resize", "by @ops"), ("on", "resize", "by @ops")]


def test_a_stopped_vm_is_resized_and_left_stopped(make):
    w = make(status="STOPPED")
    w.resizer.resize({**RESIZE, "cores": 2, "memory_gb": 2, "core_fraction": 20}, ctx(1))
    assert size(w) == (2, 2, 20, "STOPPED")
    assert mutations(w) == ["PATCH"]
    (patch,) = w.compute_api.calls_matching("PATCH")
    assert patch.body["updateMask"] == "resourcesSpec.memory,resourcesSpec.coreFraction"
    assert w.texts()[-1].endswith("it is left STOPPED, as it was (took 0 s)")


def test_an_invalid_size_is_refused_before_anything_changes(world):
    w = world
    effect = w.resizer.resize({**RESIZE, "cores": 32, "memory_gb": 400}, ctx(1))
    assert mutations(w) == [] and size(w) == (2, 4, 100, "RUNNING")
    assert w.texts() == ["❌ Not resizing buildfront: standard-v3 with 32 cores at 100% takes 32–320 GB "
                         "(1–10 GB per core), not 400 GB (12.5 GB per core)."]
    assert effect.summary.startswith("❌ Not resizing buildfront")


def test_an_unknown_platform_is_left_to_yandex_cloud_and_said_so(make):
    w = make(platform_id="gpu-standard-v3", status="STOPPED")
    w.resizer.resize({**RESIZE, "cores": 8, "memory_gb": 96}, ctx(1))
    assert size(w) == (8, 96, 100, "STOPPED")
    assert w.texts()[0] == ("🔧 Resizing buildfront from 2 cores / 4 GB to 8 cores / 96 GB, asked by @ops "
                            "(sizes of gpu-standard-v3 are not checked here)")


def test_resize_is_refused_while_jobs_run(world, gitlab_fake):
    w = world
    gitlab_fake.add_job(PROJECT_ID, 801, "build", "running", runner_id=RUNNER_ID)
    w.resizer.resize(RESIZE, ctx(1))
    assert mutations(w) == [] and size(w) == (2, 4, 100, "RUNNING")
    assert w.texts() == ["❌ Not resizing buildfront: 1 job running on it (#801 build). A resize restarts the VM "
                         "and would kill it; try again when they are done."]


def test_resize_is_refused_when_gitlab_cannot_say(world, gitlab_fake):
    gitlab_fake.fail(503, times=None)
    world.resizer.resize(RESIZE, ctx(1))
    assert mutations(world) == []
    assert world.texts()[0].startswith("❌ Not resizing buildfront: GitLab cannot say whether jobs run on it")


def test_same_size_does_nothing(world):
    world.resizer.resize({**RESIZE, "cores": 2, "memory_gb": 4}, ctx(1))
    assert mutations(world) == [] and world.texts() == ["✅ buildfront already has 2 cores / 4 GB."]


def test_a_failed_update_brings_the_vm_back_with_its_old_size_and_says_so(world):
    w = world
    w.compute_api.fail_next("update", 9, "Not enough resources in zone ru-central1-a")
    w.resizer.resize(RESIZE, ctx(1))
    assert size(w) == (2, 4, 100, "RUNNING")
    assert mutations(w) == ["POST stop", "PATCH", "POST start"]
    told = w.texts()[-1]
    assert told.startswith("❌ Resizing buildfront failed at the update step: operation ")
    assert "Not enough resources" in told
    assert told.endswith("\nbuildfront is RUNNING with its old size 2 cores / 4 GB")
    assert w.ledger.last("buildfront")[0] == "on"


def test_a_failed_update_and_a_failed_restart_leave_a_stopped_vm_and_say_how_to_start_it(world):
    w = world
    w.compute_api.fail_next("update", 13, "Internal error")
    w.compute_api.fail_next("start", 13, "Internal error")
    w.resizer.resize(RESIZE, ctx(1))
    assert size(w) == (2, 4, 100, "STOPPED")
    told = w.texts()[-1].split("\n")
    assert told[0].startswith("❌ Resizing buildfront failed at the update step")
    assert told[1].startswith("Starting it again with its old size failed too: operation ")
    assert told[2] == "buildfront is STOPPED with its old size 2 cores / 4 GB; start it with /vm_start buildfront"
    assert w.ledger.last("buildfront")[0] == "off"


def test_a_failed_start_with_the_new_size_goes_back_to_the_old_size(world):
    w = world
    w.compute_api.fail_next("start", 8, "Quota exceeded: cores")
    w.resizer.resize(RESIZE, ctx(1))
    assert size(w) == (2, 4, 100, "RUNNING")
    assert mutations(w) == ["POST stop", "PATCH", "POST start", "PATCH", "POST start"]
    assert w.texts()[-1].startswith("❌ Resizing buildfront failed at the start step")
    assert w.texts()[-1].endswith("buildfront is RUNNING with its old size 2 cores / 4 GB")


def test_a_failed_stop_changes_nothing_and_says_so(world):
    w = world
    w.compute_api.fail_next("stop", 13, "Internal error")
    w.resizer.resize(RESIZE, ctx(1))
    assert size(w) == (2, 4, 100, "RUNNING") and mutations(w) == ["POST stop"]
    assert w.texts()[-1].endswith("buildfront is RUNNING with its old size 2 cores / 4 GB")
    assert w.ledger.last("buildfront")[0] == "on"


class Crash(Exception):
    """The worker process dies here."""


def test_resume_after_a_crash_right_after_the_update_call_applies_no_step_twice(world):
    w = world

    class CrashAfterPatch:
        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def update_resources(self, *a, **kw):
            self.real.update_resources(*a, **kw)
            raise Crash("killed before the operation id was saved")

    crashing = CrashAfterPatch(w.compute)
    w.power.compute = lambda: crashing
    with pytest.raises(Crash):
        w.resizer.resize(RESIZE, ctx(9))
    assert mutations(w) == ["POST stop", "PATCH"]
    for lock in ("power:buildfront", "start:buildfront"):
        assert w.state.holder(lock) is None  # released on the way out
    # A new worker picks the action up again: new services on the same database file.
    db = w.state.path
    power = PowerControl(lambda: w.compute, w.notifier, VmState(db, clock=w.clock), Ledger(db, clock=w.clock),
                         gitlab=lambda: w.gitlab, rules=w.rules, clock=w.clock, policy=FAST)
    Resizer(power).resize(RESIZE, ctx(9))
    assert mutations(w) == ["POST stop", "PATCH", "POST start"]
    assert size(w) == (4, 8, 100, "RUNNING")
    assert w.texts()[-1].startswith("✅ @ops resized buildfront to 4 cores / 8 GB")
    assert sum("resized buildfront" in t for t in w.texts()) == 1


def test_resume_after_the_operation_api_failed_while_waiting(world):
    w = world
    w.compute_api.inject("GET", "/operations/", 503, times=6)  # every retry of the first wait
    with pytest.raises(TransientError):
        w.resizer.resize(RESIZE, ctx(10))
    assert mutations(w) == ["POST stop"]
    w.resizer.resize(RESIZE, ctx(10))
    w.resizer.resize(RESIZE, ctx(10))  # redelivered after it finished
    assert mutations(w) == ["POST stop", "PATCH", "POST start"]
    assert size(w) == (4, 8, 100, "RUNNING")
    texts = w.texts()
    assert len(texts) == len(set(texts)), texts  # no step told twice
