"""events.py: GitLab's example payloads → typed events; bad payloads → PayloadError naming the field."""

from __future__ import annotations

import pytest

from gitlab_hook.events import (
    ZERO_SHA,
    JobEvent,
    PayloadError,
    PipelineEvent,
    PushEvent,
    TagPushEvent,
    UnsupportedEvent,
    event_kind,
    parse_event,
)
from tests.conftest import failed_job_payload, payload, push_payload

# --- GitLab's documented examples ----------------------------------------------------------


def test_push_example_parses():
    ev = parse_event("Push Hook", payload("push.json"))
    assert isinstance(ev, PushEvent)
    assert ev.branch == "master"
    assert ev.project.path_with_namespace == "mike/diaspora"
    assert ev.project.web_url == "http://example.com/mike/diaspora"
    assert ev.user_username == "jsmith"
    assert ev.checkout_sha == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    assert len(ev.commits) == 2
    assert ev.total_commits_count == 4
    assert not ev.deleted


def test_push_head_commit_is_the_one_after_points_at():
    body = payload("push.json")
    # Put the head commit first: the lookup must go by id, not by position.
    body["commits"].reverse()
    ev = parse_event("Push Hook", body)
    assert ev.head_commit is not None
    assert ev.head_commit.id == body["after"]
    assert ev.head_commit.title == "fixed readme"


def test_push_head_commit_falls_back_to_last_listed_commit():
    body = payload("push.json")
    body["after"] = "f" * 40  # GitLab lists at most 20 commits; the head may be missing
    ev = parse_event("Push Hook", body)
    assert ev.head_commit.title == "fixed readme"


def test_push_without_commits_has_no_head_commit():
    body = push_payload(commits=[])
    assert parse_event("Push Hook", body).head_commit is None


def test_push_branch_deleted():
    body = push_payload(after=ZERO_SHA, checkout_sha=None, commits=[], total_commits_count=0)
    ev = parse_event("Push Hook", body)
    assert ev.deleted
    assert ev.checkout_sha is None
    assert ev.branch == "stage"


def test_push_branch_created():
    body = push_payload(before=ZERO_SHA)
    ev = parse_event("Push Hook", body)
    assert ev.before == ZERO_SHA
    assert not ev.deleted
    assert ev.branch == "stage"


def test_push_branch_with_slashes():
    ev = parse_event("Push Hook", push_payload(branch="release/2024.1"))
    assert ev.branch == "release/2024.1"


def test_push_to_non_branch_ref_has_no_branch():
    body = push_payload()
    body["ref"] = "refs/merge-requests/1/head"
    assert parse_event("Push Hook", body).branch is None


def test_tag_push_example_parses():
    ev = parse_event("Tag Push Hook", payload("tag_push.json"))
    assert isinstance(ev, TagPushEvent)
    assert ev.ref == "refs/tags/v1.0.0"
    assert ev.project.path_with_namespace == "jsmith/example"


def test_pipeline_example_parses_with_builds():
    ev = parse_event("Pipeline Hook", payload("pipeline.json"))
    assert isinstance(ev, PipelineEvent)
    attrs = ev.object_attributes
    assert (attrs.id, attrs.iid, attrs.ref, attrs.status, attrs.tag) == (31, 3, "master", "success", False)
    assert attrs.created_at == "2016-08-12 15:23:28 UTC"
    assert [b.id for b in ev.builds] == [380, 377, 378, 376, 379]
    failed = [b for b in ev.builds if b.status == "failed"]
    assert [(b.id, b.name, b.stage, b.failure_reason) for b in failed] == [
        (378, "test-build", "test", "script_failure")]
    assert ev.user.username == "root"
    assert ev.project.id == 1


def test_job_example_parses():
    ev = parse_event("Job Hook", payload("job.json"))
    assert isinstance(ev, JobEvent)
    assert (ev.build_id, ev.build_name, ev.build_stage, ev.build_status) == (1977, "test", "test", "created")
    assert ev.pipeline_id == 2366
    assert ev.project_id == 380
    assert ev.retries_count == 2
    assert ev.ref == "gitlab-script-trigger"


def test_job_failure_reason_only_trusted_when_failed():
    created = parse_event("Job Hook", payload("job.json"))
    # GitLab sends build_failure_reason even for a job that has not failed.
    assert created.build_failure_reason == "script_failure"
    assert created.failure_reason is None
    failed = parse_event("Job Hook", failed_job_payload())
    assert failed.failure_reason == "script_failure"


def test_unknown_extra_fields_are_ignored():
    body = push_payload(something_new_in_gitlab_18={"x": [1, 2]})
    assert isinstance(parse_event("Push Hook", body), PushEvent)


# --- routing: header vs object_kind --------------------------------------------------------


@pytest.mark.parametrize("name, cls", [
    ("push.json", PushEvent), ("tag_push.json", TagPushEvent),
    ("pipeline.json", PipelineEvent), ("job.json", JobEvent),
])
def test_system_hook_routed_by_object_kind(name, cls):
    assert isinstance(parse_event("System Hook", payload(name)), cls)


def test_system_hook_of_unsupported_kind():
    with pytest.raises(UnsupportedEvent) as exc:
        parse_event("System Hook", {"object_kind": "merge_request"})
    assert exc.value.name == "merge_request"


def test_system_hook_without_object_kind_is_unsupported():
    with pytest.raises(UnsupportedEvent):
        parse_event("System Hook", {"event_name": "project_create"})


@pytest.mark.parametrize("header, name", [
    ("Tag Push Hook", "push.json"), ("Push Hook", "tag_push.json"),
    ("Job Hook", "pipeline.json"), ("Pipeline Hook", "job.json"),
])
def test_header_and_object_kind_mismatch(header, name):
    with pytest.raises(PayloadError) as exc:
        parse_event(header, payload(name))
    assert exc.value.field == "object_kind"
    assert header in str(exc.value)


@pytest.mark.parametrize("header", ["Merge Request Hook", "Note Hook", "Issue Hook", "Wiki Page Hook", "push"])
def test_unknown_header_is_unsupported(header):
    with pytest.raises(UnsupportedEvent) as exc:
        parse_event(header, push_payload())
    assert exc.value.name == header


def test_unsupported_name_is_bounded():
    with pytest.raises(UnsupportedEvent) as exc:
        parse_event("X" * 5000, {})
    assert len(exc.value.name) <= 100


def test_header_without_object_kind_uses_the_header():
    body = push_payload()
    del body["object_kind"]
    assert isinstance(parse_event("Push Hook", body), PushEvent)


def test_event_kind_table():
    assert event_kind("Push Hook", {}) == "push"
    assert event_kind("Job Hook", {"object_kind": "build"}) == "build"
    assert event_kind(None, {"object_kind": "pipeline"}) == "pipeline"


@pytest.mark.parametrize("body", [[], "push", 3, None, [push_payload()]])
def test_body_that_is_not_an_object(body):
    with pytest.raises(PayloadError) as exc:
        parse_event("Push Hook", body)
    assert exc.value.field == "(body)"


# --- wrong field types ---------------------------------------------------------------------


def _mutated(name, path, value):
    body = payload(name) if name != "failed_job" else failed_job_payload()
    target = body
    for p in path[:-1]:
        target = target[p]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


_DELETE = object()


@pytest.mark.parametrize("header, name, path, value, field", [
    ("Push Hook", "push.json", ["ref"], 123, "ref"),
    ("Push Hook", "push.json", ["ref"], None, "ref"),
    ("Push Hook", "push.json", ["ref"], _DELETE, "ref"),
    ("Push Hook", "push.json", ["project"], _DELETE, "project"),
    ("Push Hook", "push.json", ["project"], "mike/diaspora", "project"),
    ("Push Hook", "push.json", ["project", "path_with_namespace"], ["a"], "project.path_with_namespace"),
    ("Push Hook", "push.json", ["commits"], "abc", "commits"),
    ("Push Hook", "push.json", ["commits", 0, "title"], 7, "commits.0.title"),
    ("Push Hook", "push.json", ["total_commits_count"], "4", "total_commits_count"),
    ("Push Hook", "push.json", ["checkout_sha"], 5, "checkout_sha"),
    ("Job Hook", "job.json", ["build_id"], "1977", "build_id"),
    ("Job Hook", "job.json", ["build_id"], 1977.5, "build_id"),
    ("Job Hook", "job.json", ["build_status"], _DELETE, "build_status"),
    ("Job Hook", "job.json", ["build_allow_failure"], "false", "build_allow_failure"),
    ("Pipeline Hook", "pipeline.json", ["builds"], {"id": 1}, "builds"),
    ("Pipeline Hook", "pipeline.json", ["builds", 0, "id"], "380", "builds.0.id"),
    ("Pipeline Hook", "pipeline.json", ["object_attributes"], _DELETE, "object_attributes"),
    ("Pipeline Hook", "pipeline.json", ["object_attributes", "id"], "31", "object_attributes.id"),
    ("Pipeline Hook", "pipeline.json", ["object_attributes", "tag"], "no", "object_attributes.tag"),
    ("Pipeline Hook", "pipeline.json", ["project"], _DELETE, "project"),
    ("Tag Push Hook", "tag_push.json", ["ref"], {"x": 1}, "ref"),
])
def test_wrong_field_type_names_the_field(header, name, path, value, field):
    with pytest.raises(PayloadError) as exc:
        parse_event(header, _mutated(name, path, value))
    assert exc.value.field == field
    assert f": {field}: " in str(exc.value)


def test_huge_text_field_is_refused():
    body = push_payload()
    body["commits"][0]["message"] = "x" * 200_000
    with pytest.raises(PayloadError) as exc:
        parse_event("Push Hook", body)
    assert exc.value.field == "commits.0.message"


# --- hostile refs ---------------------------------------------------------------------------


HOSTILE_REFS = [
    "refs/heads/../../etc",
    "refs/heads/..",
    "refs/heads/a\x00b",
    "refs/heads/with space",
    "refs/heads/tab\there",
    "refs/heads/new\nline",
    "refs/heads/a~1",
    "refs/heads/a^",
    "refs/heads/a:b",
    "refs/heads/what?",
    "refs/heads/star*",
    "refs/heads/[x]",
    "refs/heads/back\\slash",
    "refs/heads/a@{1}",
    "refs/heads//double",
    "refs/heads/.hidden",
    "refs/heads/trailing/",
    "refs/heads/trailing.",
    "refs/heads/a.lock",
    "refs/heads/a.lock/b",
    "refs/heads/" + "a" * 2000,
    "-refs/heads/x",
    "/refs/heads/x",
    "",
    "refs/heads/del\x7f",
]


@pytest.mark.parametrize("ref", HOSTILE_REFS)
def test_hostile_push_ref_refused(ref):
    with pytest.raises(PayloadError) as exc:
        parse_event("Push Hook", push_payload(ref=ref))
    assert exc.value.field == "ref"


@pytest.mark.parametrize("ref", ["../../etc", "a\x00b", "with space", "a~1", "a.lock", "x" * 2000])
def test_hostile_pipeline_and_job_refs_refused(ref):
    p = payload("pipeline.json")
    p["object_attributes"]["ref"] = ref
    with pytest.raises(PayloadError) as exc:
        parse_event("Pipeline Hook", p)
    assert exc.value.field == "object_attributes.ref"
    with pytest.raises(PayloadError) as exc:
        parse_event("Job Hook", failed_job_payload(ref=ref))
    assert exc.value.field == "ref"


@pytest.mark.parametrize("ref", ["refs/heads/stage", "refs/heads/release/1.2", "refs/heads/feature-x_y",
                                 "refs/heads/" + "a" * 1000, "refs/heads/unlock", "refs/heads/a.locked"])
def test_ordinary_refs_accepted(ref):
    assert parse_event("Push Hook", push_payload(ref=ref)).ref == ref
