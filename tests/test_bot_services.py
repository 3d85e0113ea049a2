"""``ChatOpsServices`` against the fakes of Yandex Compute, GitLab and Kubernetes; the audit trail; error texts."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from bot.audit import AuditLog, announcement
from bot.dispatch import error_text
from bot.services import KEEP_LOCK, ChatOpsServices, NotConfigured, ServiceError, VmNotFound, VmOutOfScope
from gitlab_hook.gitlab_api import GitLabAPI, GitLabUnavailable
from gitlab_hook.intake import IntakeStore
from gitlab_hook.kube import KubeUnreachable, PodLogs, load_api_client
from gitlab_hook.ledger import Ledger
from gitlab_hook.rules import Rules
from gitlab_hook.sqlite_db import StorageError
from gitlab_hook.taskqueue import TaskQueue, make_huey
from gitlab_hook.telegram_format import to_plain
from gitlab_hook.vm_state import VmState
from gitlab_hook.yandex import Unavailable
from tests.fakes.kube_api import running, terminated

RULES = Rules.model_validate({
    "runners": [{"vm": "buildfront", "branches": ["stage"], "projects": ["group/app"], "gitlab_runner_ids": [12],
                 "idle_stop_after": "30m", "timezone": "Europe/Moscow"},
                {"vm": "buildback", "branches": ["stage"], "projects": ["group/*"]}],
    "price_per_hour": {"buildfront": 2.0},
    "vms": {"name_regex": "^build"},
    "migrations": {"tail_lines": 5000, "redact_patterns": [r"token=(\S+)"]},
})


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ids(compute_api):
    return {"buildfront": compute_api.add_instance("buildfront", "RUNNING"),
            "buildback": compute_api.add_instance("buildback", "STOPPED"),
            "prod": compute_api.add_instance("prod", "RUNNING")}


@pytest.fixture
def settings(make_settings):
    return make_settings(RULES.model_dump(mode="json"))


def make(settings, clock, *, compute=None, gitlab=None, pods=None, queue=None, **kw) -> ChatOpsServices:
    db = settings.data_dir / "intake.db"
    return ChatOpsServices(RULES, compute=compute, gitlab=gitlab, pods=pods, store=IntakeStore(db),
                           queue=queue or TaskQueue(make_huey(settings)), state=VmState(db, clock=clock),
                           ledger=Ledger(db, clock=clock), clock=clock, **kw)


@pytest.fixture
def svc(settings, clock, compute_client, gitlab, kube, ids):
    api = GitLabAPI(gitlab.url, gitlab.token, timeout=3, retries=0)
    pods = PodLogs(load_api_client(kubeconfig=None, api_url=kube.url, token=kube.token, ca_file=None,
                                   request_timeout=3))
    return make(settings, clock, compute=lambda: compute_client, gitlab=lambda: api, pods=lambda: pods)


@pytest.fixture
def dry(settings, clock):
    return make(settings, clock)


# --- VMs ---------------------------------------------------------------------------------------------


def test_list_vms_only_those_matching_the_regex_by_name_with_ledger_and_hold(svc, clock):
    svc.ledger.record("buildfront", "on", "push", at=clock.t - 600)
    svc.keep("buildfront", "@alice", 3600)
    views = svc.list_vms()
    assert [v.name for v in views] == ["buildback", "buildfront"]
    front = views[1]
    assert front.power == ("on", "push", clock.t - 600)
    assert front.hold.owner == "@alice" and front.hold.until == pytest.approx(clock.t + 3600)
    assert front.runner.vm == "buildfront" and str(front.tz) == "Europe/Moscow"
    assert views[0].power is None and views[0].hold is None and str(views[0].tz) == "UTC"


def test_an_unknown_vm_lists_close_names_within_the_regex(svc):
    with pytest.raises(VmNotFound) as err:
        svc.find_vm("buildfornt")
    assert err.value.suggestions[0] == "buildfront" and "prod" not in err.value.suggestions
    assert str(err.value).startswith("No VM named buildfornt. Did you mean buildfront")


def test_a_vm_outside_the_regex_is_refused_before_any_call(svc, compute_api):
    compute_api.reset_calls()
    with pytest.raises(VmOutOfScope, match="prod is not one of the build VMs"):
        svc.find_vm("prod")
    assert compute_api.calls == []


def test_an_instance_id_is_accepted_but_only_for_a_vm_in_scope(svc, ids):
    assert svc.find_vm(ids["buildfront"]).name == "buildfront"
    with pytest.raises(VmOutOfScope):
        svc.find_vm(ids["prod"])


def test_missing_integrations_answer_as_dry_run(dry):
    with pytest.raises(NotConfigured) as err:
        dry.list_vms()
    assert str(err.value) == ("dry-run: Yandex Compute is not configured (set YC_FOLDER_ID with YC_IAM_TOKEN or "
                              "YC_SA_KEY_FILE); would list the VMs matching ^build")
    with pytest.raises(NotConfigured, match="would stop buildfront"):
        dry.find_vm("buildfront", "stop")
    with pytest.raises(NotConfigured, match="would stop buildfront"):
        dry.queue_stop("buildfront", "@alice")
    with pytest.raises(NotConfigured, match=r"GitLab is not configured .*would protect branch stage of group/app"):
        dry.protect_branch("stage")
    with pytest.raises(NotConfigured, match=r"Kubernetes is not configured .*namespace work"):
        dry.migration_logs("work")
    assert dry.configured() == {"yandex_compute": False, "gitlab": False, "kubernetes": False}
    assert IntakeStore(dry.store.path).rows() == []


# --- queued operations ----------------------------------------------------------------------------------


def test_queue_start_writes_the_outbox_and_the_queue(svc):
    q = svc.queue_start("buildback", "@alice", {"chat_id": 111, "message_id": 5})
    assert q.new and q.kind == "vm_start"
    (row,) = svc.store.rows()
    assert (row.id, row.kind, row.key) == (q.action_ids[0], "vm_start", "vm_start:buildback")
    assert row.payload == {"vm": "buildback", "by": "@alice", "progress": {"chat_id": 111, "message_id": 5}}
    assert svc.queue.queued_action_ids() == {row.id}


def test_a_pending_operation_is_not_queued_twice(svc):
    first = svc.queue_stop("buildfront", "@alice")
    again = svc.queue_stop("buildfront", "@bob")
    assert not again.new and again.action_ids == first.action_ids
    assert len(svc.store.rows()) == 1


def test_queue_resize_carries_the_size(svc):
    svc.queue_resize("buildfront", "console", 4, 8.0, None)
    (row,) = svc.store.rows()
    assert row.payload == {"vm": "buildfront", "by": "console", "progress": None, "cores": 4, "memory_gb": 8.0,
                           "core_fraction": None}


def test_a_queue_that_fails_after_the_outbox_commit_leaves_the_row_for_the_redriver(settings, clock, compute_client,
                                                                                  ids, caplog):
    class Broken:
        def submit(self, ids):
            raise StorageError("queue.db is locked")

    svc = make(settings, clock, compute=lambda: compute_client, queue=Broken())
    q = svc.queue_start("buildback", "@alice")
    assert q.new and [r.state for r in svc.store.rows()] == ["pending"]
    assert "the worker will re-drive outbox rows" in caplog.text


# --- holds --------------------------------------------------------------------------------------------------


def test_keep_takes_the_lock_the_idle_stopper_honours(svc, clock):
    res = svc.keep("buildfront", "@alice", 7200)
    assert res.changed and res.hold.until == pytest.approx(clock.t + 7200)
    assert svc.state.holder(KEEP_LOCK.format(vm="buildfront")) == "@alice"
    clock.t += 7201
    assert svc.state.holder("keep:buildfront") is None and svc.hold("buildfront") is None


def test_a_longer_hold_of_someone_else_stays_and_a_shorter_one_is_replaced(svc, clock):
    svc.keep("buildfront", "@bob", 4 * 3600)
    res = svc.keep("buildfront", "@alice", 3600)
    assert not res.changed and res.hold.owner == "@bob"
    res = svc.keep("buildfront", "@alice", 6 * 3600)
    assert res.changed and res.previous.owner == "@bob" and svc.hold("buildfront").owner == "@alice"
    res = svc.keep("buildfront", "@alice", 3600)  # one's own hold can be shortened
    assert res.changed and svc.hold("buildfront").until == pytest.approx(clock.t + 3600)


def test_off_releases_anyones_hold(svc):
    assert not svc.keep("buildfront", "@alice", 0).changed
    svc.keep("buildfront", "@bob", 3600)
    res = svc.keep("buildfront", "@alice", 0)
    assert res.changed and res.previous.owner == "@bob" and svc.hold("buildfront") is None


def test_keep_without_the_cloud_checks_the_regex_and_says_what_it_could_not_check(dry):
    res = dry.keep("buildfront", "console", 600)
    assert res.changed and "could not check that this VM exists" in res.note
    with pytest.raises(VmOutOfScope):
        dry.keep("prod", "console", 600)


def test_keep_of_a_missing_vm_is_refused(svc):
    with pytest.raises(VmNotFound):
        svc.keep("buildfrnt", "@alice", 600)


# --- GitLab -------------------------------------------------------------------------------------------------


def test_running_jobs_of_a_vms_runners(svc, gitlab):
    gitlab.add_job(1, 501, "build", "running", runner_id=12, ref="stage")
    gitlab.add_job(1, 502, "old", "success", runner_id=12)
    jobs = svc.running_jobs("buildfront")
    assert jobs.checked and [(j.id, j.name, j.project, j.ref) for j in jobs.jobs] == [(501, "build", "group/app",
                                                                                     "stage")]
    assert jobs.jobs[0].url == "https://gitlab.example.com/group/app/-/jobs/501"


def test_running_jobs_says_why_it_cannot_tell(svc, dry, gitlab):
    assert "no gitlab_runner_ids for buildback" in svc.running_jobs("buildback").note
    assert "GitLab is not configured" in dry.running_jobs("buildfront").note
    gitlab.fail(503, path="/runners/12/jobs", times=None)
    assert svc.running_jobs("buildfront").note.startswith("could not check running jobs: runner 12 jobs")


def test_protect_and_unprotect_against_gitlab(svc, gitlab):
    res = svc.protect_branch("stage")
    assert (res.project, res.branch) == ("group/app", "stage")  # the one concrete project of the rules
    assert "stage" in gitlab.protected[1]
    assert svc.protect_branch("stage").changed  # already protected: still fine
    assert svc.unprotect_branch("stage", "group/app").changed
    assert "stage" not in gitlab.protected[1]
    assert not svc.unprotect_branch("stage").changed


def test_the_project_must_be_named_when_the_rules_do_not_say_which(settings, clock):
    several = Rules.model_validate({"runners": [{"vm": "a", "branches": ["x"], "projects": ["g/one", "g/two"]}]})
    with pytest.raises(ServiceError, match="several .g/one, g/two."):
        ChatOpsServices(several).default_project()
    with pytest.raises(ServiceError, match="name none"):
        ChatOpsServices(Rules()).default_project()


# --- the ledger ----------------------------------------------------------------------------------------------


def test_runner_report_figures_and_chart(svc, clock):
    now = clock.t
    svc.ledger.record("buildfront", "on", "push", at=now - 10 * 3600)
    svc.ledger.record("buildfront", "off", "idle_stop", at=now - 6 * 3600)
    svc.ledger.record("buildfront", "on", "manual", at=now - 2 * 3600)
    report = svc.runner_report(1)
    (back, front) = report.rows
    assert (back.usage.vm, back.recorded) == ("buildback", False)
    assert front.recorded and front.usage.hours_on == pytest.approx(6)
    assert front.usage.cost_saved == pytest.approx(18 * 2.0) and front.usage.wakes == {"push": 1, "manual": 1}
    assert report.chart_png.startswith(b"\x89PNG") and str(report.tz) == "Europe/Moscow"


def test_a_failing_chart_does_not_lose_the_figures(settings, clock, caplog):
    def broken(*a, **k):
        raise RuntimeError("no fonts")

    svc = make(settings, clock, chart=broken)
    report = svc.runner_report(7)
    assert report.chart_png is None and [r.usage.vm for r in report.rows] == ["buildback", "buildfront"]
    assert "runner report chart failed" in caplog.text


# --- Kubernetes ----------------------------------------------------------------------------------------------


def test_migration_logs_of_the_newest_pod_masked_and_fitting_one_message(svc, kube):
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    kube.add_pod("work", "pre-migrate-db-old", t0, containers=[{"name": "pre-migrate-db", "state": running()}])
    kube.add_pod("work", "pre-migrate-db-new", t0.replace(day=2),
                 containers=[{"name": "pre-migrate-db", "state": terminated("Error", 3), "restartCount": 1}])
    big = "".join(f"step {i} <ok> & fine token=sekrit{i}\n" for i in range(3000)) + "FATAL: boom\n"
    kube.add_log("work", "pre-migrate-db-new", "pre-migrate-db", big)
    res = svc.migration_logs("work")
    text = to_plain(res.html)
    assert res.pod == "pre-migrate-db-new" and res.filename == "migration-logs-work.txt"
    assert text.startswith("📜 Migration logs · namespace work\nPod: pre-migrate-db-new (container pre-migrate-db, "
                           "terminated: Error, exit 3, restarts 1)")
    assert text.rstrip().endswith("FATAL: boom") and len(text) <= 4096 and "sekrit" not in text
    assert "&lt;ok&gt; &amp; fine" in res.html
    doc = res.document.decode()
    assert doc.count("step ") == 3000 and "sekrit" not in doc


def test_migration_logs_problems_become_notes(svc, kube):
    res = svc.migration_logs("nope")
    assert "⚠️ namespace nope does not exist" in to_plain(res.html) and res.pod is None
    kube.fail("/pods", status=503, times=10)
    assert "Kubernetes API unreachable" in to_plain(svc.migration_logs("work").html)


# --- audit trail and texts -------------------------------------------------------------------------------------


def test_the_audit_trail_keeps_who_did_what(tmp_path):
    audit = AuditLog(tmp_path / "intake.db", clock=lambda: 1000.0)
    audit.record(actor_id=111, actor="@alice", role="operator", chat_id=111, command="vm_stop",
                 args={"vm": "buildfront"}, outcome="queued", detail="actions #1")
    audit.record(actor_id=222, actor="@vic", role="viewer", chat_id=-1, command="vm_start", args=None,
                 outcome="refused", detail="role")
    (last, first) = AuditLog(tmp_path / "intake.db").recent()
    assert (first.actor, first.command, first.args, first.outcome, first.at) == (
        "@alice", "vm_stop", {"vm": "buildfront"}, "queued", 1000.0)
    assert (last.actor, last.outcome, last.detail) == ("@vic", "refused", "role")


def test_announcements_are_escaped_html():
    assert announcement("@alice", "stopped", "buildfront") == "⏹ <b>@alice</b> stopped <b>buildfront</b>"
    assert announcement("console", "protected", "a<b> of g/app") == (
        "🔒 <b>console</b> protected <b>a&lt;b&gt; of g/app</b>")


@pytest.mark.parametrize("exc, text", [
    (Unavailable("Service is unavailable, try again later", http_status=503, request="GET /x"),
     "Yandex Compute failed: "),
    (GitLabUnavailable("runner 12 jobs: GitLab answered 503"), "GitLab failed: runner 12 jobs: GitLab answered 503"),
    (KubeUnreachable("timed out"), "Kubernetes failed: timed out"),
    (StorageError("disk full"), "the local storage failed: disk full"),
    (ZeroDivisionError("x"), "an internal error (ZeroDivisionError; details are in the bot's log)"),
])
def test_error_texts_are_brief_and_name_the_system(exc, text):
    assert error_text(exc).startswith(text)
