"""Property tests of the webhook endpoint: whatever arrives, never a 5xx, always a JSON answer.

One app for the whole module (function-scoped fixtures and @given mix poorly), on a temp data dir.
"""

from __future__ import annotations

import atexit
import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gitlab_hook.app import create_app
from gitlab_hook.settings import load_settings
from tests.conftest import RULES, SECRET, failed_job_payload, payload, push_payload

_DIR = Path(tempfile.mkdtemp(prefix="gitlab-hook-fuzz-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
(_DIR / "rules.yaml").write_text(yaml.safe_dump(RULES))
MAX_BODY = 8192  # above every example payload (pipeline.json is ~5.6 kB)
SETTINGS = load_settings({
    "GITLAB_HOOK_CONFIG": str(_DIR / "rules.yaml"),
    "DATA_DIR": str(_DIR / "var"),
    "GITLAB_WEBHOOK_SECRET": SECRET,
    "WEBHOOK_MAX_BODY_BYTES": str(MAX_BODY),
})
APP = create_app(SETTINGS)
CLIENT = APP.test_client()

ALLOWED = {200, 202, 400, 401, 413}
EVENTS = ["Push Hook", "Tag Push Hook", "Pipeline Hook", "Job Hook", "System Hook", "Merge Request Hook"]

FUZZ = settings(max_examples=600, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# Header values: what a WSGI server can hand us (latin-1, no line breaks).
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                      max_size=60)
event_header = st.one_of(st.sampled_from(EVENTS), header_text, st.none())
token_header = st.one_of(st.just(SECRET), st.just(SECRET), st.just(SECRET), header_text, st.none())

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2 ** 80), max_value=2 ** 80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["refs/heads/stage", "stage", "refs/heads/release/1", "failed", "pending", "migrate-db",
                     "0" * 40, "group/app", "push", "build", "pipeline", "tag_push", "", "refs/heads/..",
                     "\x00", "\ud800"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=12,
)


def _pending_pipeline() -> dict[str, Any]:
    p = payload("pipeline.json")
    p["object_attributes"].update({"status": "pending", "ref": "stage"})
    p["project"]["path_with_namespace"] = "group/app"
    p["builds"][2]["name"] = "migrate-db"
    return p


BASES = [
    ("Push Hook", push_payload()),
    ("Push Hook", push_payload(branch="release/9")),
    ("Tag Push Hook", payload("tag_push.json")),
    ("Pipeline Hook", _pending_pipeline()),
    ("Pipeline Hook", payload("pipeline.json")),
    ("Job Hook", failed_job_payload()),
    ("Job Hook", payload("job.json")),
]


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


_BASE_PATHS = [_paths(doc) for _, doc in BASES]


@st.composite
def mutated_payload(draw) -> tuple[str | None, dict[str, Any]]:
    """One of GitLab's payloads with a few fields (at any depth) replaced, deleted or added."""
    i = draw(st.integers(0, len(BASES) - 1))
    header, base = BASES[i]
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_BASE_PATHS[i]))
        parent = doc
        try:
            for p in path[:-1]:
                parent = parent[p]
            op = draw(st.sampled_from(["set", "set", "delete", "add"]))
            if op == "set":
                parent[path[-1]] = draw(json_values)
            elif op == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=10))] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    if draw(st.booleans()):
        header = draw(event_header)
    return header, doc


def _post(body: bytes, event: str | None, token: str | None, extra: dict[str, str] | None = None):
    headers = {"Content-Type": "application/json"}
    if event is not None:
        headers["X-Gitlab-Event"] = event
    if token is not None:
        headers["X-Gitlab-Token"] = token
    headers.update(extra or {})
    return CLIENT.post("/gitlab/webhook", data=body, headers=headers)


def _check(resp, body: bytes | None = None) -> dict[str, Any]:
    assert resp.status_code in ALLOWED, (resp.status_code, resp.get_data(as_text=True))
    data = json.loads(resp.get_data())
    event(f"HTTP {resp.status_code}")  # see --hypothesis-show-statistics
    assert isinstance(data, dict)
    if resp.status_code >= 400:
        assert isinstance(data.get("error"), str) and data["error"]
        assert SECRET not in data["error"]
    else:
        assert data.get("status") in {"queued", "ignored", "duplicate"}
        if resp.status_code == 202:
            assert data["status"] == "queued" and data["actions"] and data["delivery"]
        else:
            assert data["status"] in {"ignored", "duplicate"}
    if body is not None and len(body) > MAX_BODY:
        assert resp.status_code == 413
    return data


# Large bodies are built from a short random head and a run of one byte: cheap to generate.
big_bodies = st.builds(lambda head, fill, n: head + fill * n, st.binary(max_size=64), st.binary(min_size=1, max_size=1),
                       st.integers(MAX_BODY - 80, MAX_BODY + 80))


@FUZZ
@given(body=st.one_of(st.binary(max_size=600), big_bodies), event=event_header, token=token_header)
def test_arbitrary_bytes(body, event, token):
    resp = _post(body, event, token)
    _check(resp, body)
    if token != SECRET and len(body) <= MAX_BODY:
        assert resp.status_code == 401


@settings(FUZZ, max_examples=600)
@given(value=json_values, event=event_header)
def test_arbitrary_json_values(value, event):
    body = json.dumps(value).encode()
    resp = _post(body, event, SECRET)
    _check(resp, body)
    if not isinstance(value, dict):
        assert resp.status_code == 400


@settings(FUZZ, max_examples=1200)
@given(case=mutated_payload(), idem=st.one_of(st.none(), header_text), uuid=st.one_of(st.none(), header_text))
def test_payloads_with_fields_of_random_types(case, idem, uuid):
    event, doc = case
    extra = {}
    if idem:
        extra["Idempotency-Key"] = idem
    if uuid:
        extra["X-Gitlab-Event-UUID"] = uuid
    body = json.dumps(doc).encode()
    _check(_post(body, event, SECRET, extra), body)


@FUZZ
@given(event=event_header, token=token_header, idem=header_text, base=st.sampled_from(BASES))
def test_random_headers_on_real_payloads(event, token, idem, base):
    body = json.dumps(base[1]).encode()
    resp = _post(body, event, token, {"Idempotency-Key": idem} if idem else None)
    _check(resp, body)
    if token != SECRET:
        assert resp.status_code == 401


@settings(FUZZ, max_examples=300)
@given(ref=st.one_of(st.text(max_size=60), st.text(max_size=60).map(lambda s: "refs/heads/" + s),
                     st.text(max_size=60).map(lambda s: "refs/heads/release/" + s)),
       event=st.sampled_from(["Push Hook", "System Hook"]))
def test_arbitrary_refs(ref, event):
    body = json.dumps(push_payload(ref=ref)).encode()
    data = _check(_post(body, event, SECRET), body)
    if "error" not in data and data["status"] == "queued":
        # Only a sane ref can reach the queue.
        assert not any(c in ref for c in "\x00 ~^:?*[\\") and ".." not in ref
