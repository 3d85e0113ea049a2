"""GitLabAPI through the real python-gitlab against the fake GitLab REST API."""

from __future__ import annotations

import email.utils
import time
import tracemalloc

import pytest

from gitlab_hook.gitlab_api import (
    GitLabAPI,
    GitLabAuthError,
    GitLabError,
    GitLabForbidden,
    GitLabInvalidInput,
    GitLabNotFound,
    GitLabUnavailable,
    clean_trace,
    validate_branch,
    validate_project,
)
from tests.fakes.gitlab_api import FakeGitLab, GeneratedTrace, sample_trace

TRACE_ROUTE = "GET /projects/:id/jobs/:job_id/trace"


@pytest.fixture
def fake():
    with FakeGitLab() as gl:
        gl.add_project(1, "group/app")
        gl.add_project(2, "group/sub/api")
        yield gl


@pytest.fixture
def api(fake):
    with GitLabAPI(fake.url, fake.token, timeout=2, retries=2) as client:
        yield client


def assert_no_token(exc: BaseException, token: str) -> None:
    """The token appears nowhere in what an error shows or carries along."""
    assert token not in str(exc)
    assert token not in repr(exc)
    assert all(token not in str(a) for a in exc.args)
    assert exc.__cause__ is None and exc.__suppress_context__


# --- version and errors --------------------------------------------------------------------------


def test_version(api, fake):
    assert api.version() == "17.5.1-ee"
    (call,) = fake.calls
    assert call.route == "GET /version" and call.token == fake.token


def test_wrong_token_is_an_auth_error_without_the_token(fake):
    bad = "glpat-WrongTokenWrongToken1234"
    with GitLabAPI(fake.url, bad, retries=2) as client, pytest.raises(GitLabAuthError) as err:
        client.version()
    assert err.value.status == 401
    assert_no_token(err.value, bad)
    assert fake.count("/version") == 1  # a 401 is not retried
    assert bad not in repr(client)


def test_read_only_token_gets_forbidden_on_writes(fake):
    fake.add_runner(12, projects=[1])
    token = "glpat-ReadOnlyToken-abcdefghij"
    fake.add_token(token, scopes=("read_api",))
    with GitLabAPI(fake.url, token) as client:
        assert client.runner(12)["id"] == 12
        with pytest.raises(GitLabForbidden) as err:
            client.pause_runner(12)
    assert err.value.status == 403
    assert "scope" in str(err.value) and "insufficient_scope" in str(err.value)
    assert_no_token(err.value, token)
    assert fake.runners[12]["paused"] is False


def test_injected_403_is_forbidden(api, fake):
    fake.fail(403, path="/projects/group/app/hooks")
    with pytest.raises(GitLabForbidden) as err:
        api.project_hooks("group/app")
    assert "403 Forbidden" in str(err.value)


def test_not_found(api, fake):
    with pytest.raises(GitLabNotFound):
        api.job_log_tail(1, 999)
    with pytest.raises(GitLabNotFound):
        api.runner(77)
    with pytest.raises(GitLabNotFound):
        api.project_hooks("group/nope")


def test_429_with_retry_after_then_success(api, fake):
    fake.fail(429, path="/version", retry_after=1)
    started = time.monotonic()
    assert api.version() == "17.5.1-ee"
    elapsed = time.monotonic() - started
    assert [c.status for c in fake.requests("/version")] == [429, 200]
    assert 0.9 <= elapsed < 5  # python-gitlab slept for Retry-After, not its 0.1 s backoff


def test_retry_after_is_capped(fake):
    fake.fail(429, path="/version", retry_after=3600)
    with GitLabAPI(fake.url, fake.token, max_retry_after=0.2) as client:
        started = time.monotonic()
        assert client.version() == "17.5.1-ee"
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("value", ["soon", "0.4", "", "-3"])
def test_unreadable_or_odd_retry_after_does_not_crash_python_gitlab(api, fake, value):
    # python-gitlab does int(headers["Retry-After"]): "1.5" or "soon" would raise a bare ValueError.
    fake.fail(429, path="/version", headers={"Retry-After": value})
    started = time.monotonic()
    assert api.version() == "17.5.1-ee"
    assert time.monotonic() - started < 4


def test_retry_after_as_http_date(api, fake):
    fake.fail(503, path="/version", headers={"Retry-After": email.utils.formatdate(time.time() + 1, usegmt=True)})
    assert api.version() == "17.5.1-ee"
    assert [c.status for c in fake.requests("/version")] == [503, 200]


def test_transient_5xx_is_retried(api, fake):
    fake.fail(502, path="/runners/:id", times=2)
    fake.add_runner(12)
    assert api.runner(12)["id"] == 12
    assert [c.status for c in fake.requests("GET /runners/:id")] == [502, 502, 200]


def test_5xx_exhaustion_is_unavailable(api, fake):
    fake.fail(503, path="/version", times=None)
    with pytest.raises(GitLabUnavailable) as err:
        api.version()
    assert err.value.status == 503
    assert fake.count("/version") == 3  # first try + retries=2
    assert_no_token(err.value, fake.token)


def test_429_exhaustion_is_unavailable(api, fake):
    fake.fail(429, path="/version", times=None, retry_after=0)
    with pytest.raises(GitLabUnavailable) as err:
        api.version()
    assert err.value.status == 429


def test_timeouts_are_retried_then_unavailable(fake):
    fake.delay(1.0, path="/version", times=None)
    with GitLabAPI(fake.url, fake.token, timeout=0.2, retries=1) as client, pytest.raises(GitLabUnavailable) as err:
        client.version()
    assert "did not answer" in str(err.value)
    assert fake.count("/version") == 2


def test_unreachable_gitlab_is_unavailable():
    with FakeGitLab() as gone:
        url = gone.url
    with GitLabAPI(url, "glpat-whatever-0123456789ab", timeout=0.5, retries=1) as client:
        with pytest.raises(GitLabUnavailable) as err:
            client.version()
    assert "cannot reach GitLab" in str(err.value)


def test_non_json_answer_is_a_gitlab_error(api, fake):
    fake.fail(200, path="/version", body="<html>login</html>")
    with pytest.raises(GitLabError):
        api.version()


def test_constructor_refuses_bad_settings():
    with pytest.raises(GitLabInvalidInput):
        GitLabAPI("gitlab.example.com", "t")
    with pytest.raises(GitLabInvalidInput):
        GitLabAPI("https://gitlab.example.com", "")


# --- job log tails ---------------------------------------------------------------------------------


def test_tail_strips_ansi_sections_and_cr_overwrites(api, fake):
    fake.add_job(1, 501, "migrate-db", "failed")  # sample_trace: sections, colours, progress bar
    text = api.job_log_tail("group/app", 501)
    assert "\x1b" not in text and "\r" not in text and "section_" not in text
    lines = text.split("\n")
    assert lines[0] == "Running with gitlab-runner 17.5.0 (66269445)"
    assert 'Preparing the "docker" executor' in lines
    assert "Receiving objects: 100% (10/10), done." in lines
    assert not any("50%" in line for line in lines)
    assert "" not in lines  # lines that held only section_end markers are gone
    assert lines[-2:] == ["Cleaning up project directory and file based variables", "ERROR: Job failed: exit code 1"]
    # the project path went URL-encoded into one path segment
    (call,) = fake.requests(TRACE_ROUTE)
    assert call.raw_path == "/api/v4/projects/group%2Fapp/jobs/501/trace"


def test_tail_returns_the_last_lines(api, fake):
    trace = "".join(f"\x1b[32mline {i}\x1b[0m\r\n" for i in range(1000))
    fake.add_job(2, 600, "build", "running", trace=trace)
    text = api.job_log_tail(2, 600, lines=5)
    assert text == "\n".join(f"line {i}" for i in range(995, 1000))


def test_tail_window_drops_the_cut_first_line(api, fake):
    trace = "".join(f"row {i:05d} " + "y" * 50 + "\n" for i in range(2000))
    fake.add_job(1, 601, "build", "success", trace=trace)
    text = api.job_log_tail(1, 601, max_bytes=1000, lines=1000)
    lines = text.split("\n")
    assert lines[-1].startswith("row 01999 ")
    assert all(len(line) == len("row 00000 ") + 50 for line in lines)  # no partial line at the top
    assert len(text.encode()) <= 1000


def test_tail_of_an_empty_trace(api, fake):
    fake.add_job(1, 602, "build", "pending", trace="")
    assert api.job_log_tail(1, 602) == ""


def test_tail_of_a_50mb_trace_stays_in_bounded_memory(api, fake):
    tail = "".join(f"\x1b[31;1mfinal line {i}\x1b[0;m\n" for i in range(3)) + "section_end:1714557610:step_script\r\x1b[0K\n"
    fake.add_job(1, 700, "migrate-db", "failed", trace=GeneratedTrace(50 * 2**20, tail))
    tracemalloc.start()
    try:
        text = api.job_log_tail(1, 700, lines=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    lines = text.split("\n")
    assert lines[1:] == ["final line 0", "final line 1", "final line 2"]
    assert lines[0].startswith("[filler ") and lines[0].endswith("x" * 40)
    (call,) = fake.requests(TRACE_ROUTE)
    assert call.status == 200


def test_tail_download_deadline(api, fake):
    fake.add_job(1, 701, "build", "success", trace=GeneratedTrace(8 * 2**20))
    with pytest.raises(GitLabUnavailable) as err:
        api.job_log_tail(1, 701, deadline=0.0)
    assert "longer than" in str(err.value)


def test_tail_is_retried_after_429(api, fake):
    fake.add_job(1, 702, "migrate-db", "failed")
    fake.fail(429, path=TRACE_ROUTE, retry_after=0)
    assert api.job_log_tail(1, 702).endswith("ERROR: Job failed: exit code 1")
    assert fake.count(TRACE_ROUTE) == 2


def test_clean_trace_details():
    raw = (
        "section_start:1714557600:build_step[collapsed=true,hide_duration=true]\r\x1b[0K\x1b[36;1mBuild\x1b[0;m\n"
        "\x1b]8;;https://example.com\x07link\x1b]8;;\x07 text\n"
        "bell\x07 and backspace\x08 gone\n"
        "progress 1%\rprogress 2%\r\n"
        "section_end:1714557601:build_step\r\x1b[0Ksection_start:1714557601:next\r\x1b[0KNext step\n"
        "\n\n"
    )
    assert clean_trace(raw) == "Build\nlink text\nbell and backspace gone\nprogress 2%\nNext step"


# --- runners ---------------------------------------------------------------------------------------


def test_pause_and_unpause(api, fake):
    fake.add_runner(12, projects=[1])
    assert api.pause_runner(12)["paused"] is True
    assert fake.runners[12]["paused"] is True
    put = fake.requests("PUT /runners/:id")[-1]
    assert put.body == {"paused": True}
    assert api.unpause_runner(12)["paused"] is False
    assert fake.runners[12]["paused"] is False
    assert fake.requests("PUT /runners/:id")[-1].body == {"paused": False}


def test_runner_jobs(api, fake):
    fake.add_runner(12, projects=[1])
    fake.add_job(1, 801, "build", "running", runner_id=12)
    fake.add_job(1, 802, "test", "success", runner_id=12)
    fake.add_job(1, 803, "deploy", "running", runner_id=13)
    jobs = api.runner_jobs(12)
    assert [j["id"] for j in jobs] == [801]
    assert jobs[0]["project"]["path_with_namespace"] == "group/app"
    assert fake.requests("GET /runners/:id/jobs")[0].query["status"] == ["running"]
    assert [j["id"] for j in api.runner_jobs(12, status="success")] == [802]


def test_runner_jobs_follows_pagination(api, fake):
    fake.add_runner(12, projects=[1])
    for job_id in range(1000, 1150):
        fake.add_job(1, job_id, "build", "running", runner_id=12, trace="")
    jobs = api.runner_jobs(12)
    assert len(jobs) == 150 and jobs[0]["id"] == 1149
    assert fake.count("GET /runners/:id/jobs") == 2


def test_runner_jobs_refuses_unknown_status(api, fake):
    with pytest.raises(GitLabInvalidInput):
        api.runner_jobs(12, status="running&x=1")
    assert fake.calls == []


def test_pending_jobs_for_runner(api, fake):
    fake.add_project(3, "other/app")
    fake.add_runner(12, projects=[1, 2], tag_list=["build", "docker"])
    fake.add_job(1, 901, "untagged", "pending")
    fake.add_job(1, 902, "tagged", "pending", tag_list=["build"])
    fake.add_job(2, 903, "gpu", "pending", tag_list=["gpu"])  # this runner cannot take it
    fake.add_job(2, 904, "running", "running", runner_id=12)
    fake.add_job(3, 905, "elsewhere", "pending")  # not one of the runner's projects
    assert api.pending_jobs_for_runner(12) == 2
    jobs_calls = fake.requests("GET /projects/:id/jobs")
    assert {c.path for c in jobs_calls} == {"/projects/1/jobs", "/projects/2/jobs"}
    assert all(c.query["scope[]"] == ["pending"] for c in jobs_calls)

    fake.set_runner(12, run_untagged=False)
    assert api.pending_jobs_for_runner(12) == 1
    fake.set_job_status(902, "running", runner_id=12)
    assert api.pending_jobs_for_runner(12) == 0


def test_pending_jobs_skip_vanished_projects_and_instance_runners(api, fake):
    fake.add_runner(12, projects=[1, 2])
    fake.add_job(1, 910, "build", "pending")
    fake.add_job(2, 911, "build", "pending")
    fake.fail(404, path="/projects/1/jobs")  # deleted between the two calls
    fake.add_runner(20)  # instance runner: GitLab lists no projects for it
    assert api.pending_jobs_for_runner(12) == 1
    assert api.pending_jobs_for_runner(20) == 0
    fake.fail(403, path="/projects/2/jobs")  # a permission problem is not hidden
    with pytest.raises(GitLabForbidden):
        api.pending_jobs_for_runner(12)


# --- branches ----------------------------------------------------------------------------------------


def test_protect_and_unprotect_branch_with_slash(api, fake):
    rule = api.protect_branch("group/app", "release/1.2")
    assert rule["name"] == "release/1.2"
    assert rule["push_access_levels"][0]["access_level"] == 40
    assert "release/1.2" in fake.protected[1]
    post = fake.requests("POST /projects/:id/protected_branches")[0]
    assert post.body == {"name": "release/1.2", "push_access_level": 40, "merge_access_level": 40}

    assert api.unprotect_branch("group/app", "release/1.2") is True
    delete = fake.requests("DELETE /projects/:id/protected_branches/:name")[0]
    assert delete.raw_path == "/api/v4/projects/group%2Fapp/protected_branches/release%2F1.2"
    assert fake.protected[1] == {}
    assert api.unprotect_branch("group/app", "release/1.2") is False  # already gone


def test_protect_is_idempotent_and_levels_map(api, fake):
    api.protect_branch(1, "stage", push_level="no_access", merge_level="developer")
    rule = fake.protected[1]["stage"]
    assert rule["push_access_levels"][0]["access_level"] == 0
    assert rule["merge_access_levels"][0]["access_level"] == 30
    again = api.protect_branch(1, "stage")  # 409 → the existing rule, unchanged
    assert again["id"] == rule["id"]
    with pytest.raises(GitLabInvalidInput):
        api.protect_branch(1, "stage", push_level="owner")


@pytest.mark.parametrize(
    "branch",
    [
        "", "..", "a..b", "../../etc/passwd", "main\n", "ma\x00in", "with space", "tab\tbranch",
        "wild*", "what?", "tilde~1", "caret^", "colon:x", "back\\slash", "[bracket", "/lead", "trail/",
        "double//slash", "end.", ".hidden", "x/.hidden", "x.lock", "a/b.lock/c", "@", "a@{1}", "-flag",
        "refs/heads/main", "HEAD", "rtl\u202eevil", "zero\u200bwidth", "x" * 256, "del\x7f",
    ],
)
def test_hostile_branch_names_are_refused_before_any_request(api, fake, branch):
    with pytest.raises(GitLabInvalidInput):
        api.protect_branch(1, branch)
    with pytest.raises(GitLabInvalidInput):
        api.unprotect_branch(1, branch)
    assert fake.calls == []


@pytest.mark.parametrize("branch", ["main", "release/1.2", "feature/JIRA-12_x", "v1.0.0-rc1", "ветка", "a/b/c"])
def test_reasonable_branch_names_pass(branch):
    assert validate_branch(branch) == branch


@pytest.mark.parametrize(
    "project",
    ["", "app", "group/../app", "../group/app", "group/app/", "/group/app", "group//app", "group/app?x=1",
     "group/app#x", "group/a pp", "group/.hidden", "group/app.git", "group/%2e%2e", 0, -1, True, 1.5, None],
)
def test_hostile_projects_are_refused_before_any_request(api, fake, project):
    with pytest.raises(GitLabInvalidInput):
        api.job_log_tail(project, 1)
    with pytest.raises(GitLabInvalidInput):
        api.project_hooks(project)
    assert fake.calls == []


@pytest.mark.parametrize("job_id", [0, -5, True, "1/2", "12a", 2**63, None, "../1"])
def test_hostile_ids_are_refused(api, fake, job_id):
    with pytest.raises(GitLabInvalidInput):
        api.job_log_tail(1, job_id)
    with pytest.raises(GitLabInvalidInput):
        api.pause_runner(job_id)
    assert fake.calls == []


def test_project_forms():
    assert validate_project(7) == 7
    assert validate_project("7") == 7
    assert validate_project("group/sub/my-app.v2") == "group/sub/my-app.v2"


# --- hooks ------------------------------------------------------------------------------------------


def test_project_hooks_show_alert_status(api, fake):
    ok = fake.add_hook(1, "https://hook.example/gitlab/webhook")
    off = fake.add_hook(1, "https://old.example/hook", alert_status="temporarily_disabled",
                        disabled_until=1_900_000_000)
    fake.add_hook(2, "https://other.example/hook")
    hooks = {h["id"]: h for h in api.project_hooks("group/app")}
    assert set(hooks) == {ok["id"], off["id"]}
    assert hooks[ok["id"]]["alert_status"] == "executable" and hooks[ok["id"]]["disabled_until"] is None
    assert hooks[off["id"]]["alert_status"] == "temporarily_disabled"
    assert hooks[off["id"]]["disabled_until"].startswith("2030-03-17T")


# --- the fake itself ---------------------------------------------------------------------------------


def test_fake_requires_a_token(fake):
    import requests

    r = requests.get(fake.api_url + "/version", timeout=2)
    assert r.status_code == 401 and r.json() == {"message": "401 Unauthorized"}
    r = requests.get(fake.api_url + "/version", headers={"Authorization": f"Bearer {fake.token}"}, timeout=2)
    assert r.status_code == 200


def test_fake_counts_and_sample_trace(api, fake):
    fake.add_job(1, 1, "migrate", "failed")
    api.job_log_tail(1, 1)
    api.job_log_tail(1, 1)
    api.version()
    assert fake.counts == {TRACE_ROUTE: 2, "GET /version": 1}
    assert "section_start:" in sample_trace() and "\x1b[" in sample_trace()
    fake.reset_calls()
    assert fake.count() == 0
