"""gitlab_hook.kube through the real kubernetes client against the fake Kubernetes API server."""

from __future__ import annotations

import itertools
import socket
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gitlab_hook import kube
from gitlab_hook.kube import (
    ContainerNotStarted,
    InvalidName,
    KubeConfigError,
    KubeForbidden,
    KubeUnauthorized,
    KubeUnreachable,
    NamespaceNotFound,
    NoMatchingPod,
    PodInfo,
    PodLogs,
    load_api_client,
)
from tests.fakes.kube_api import FakeKubeAPI, running, terminated, waiting

NS = "work"
REGEX = "^pre-migrate-db-"
C = "pre-migrate-db"
SHA = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"  # the commit of GitLab's example push payload
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
MiB = 1024 * 1024


@pytest.fixture
def fake():
    with FakeKubeAPI(namespaces=[NS]) as f:
        yield f


@pytest.fixture
def pods(fake: FakeKubeAPI) -> PodLogs:
    return PodLogs(load_api_client(kubeconfig=None, api_url=fake.url, token=fake.token, ca_file=None,
                                   request_timeout=5))


def add(fake: FakeKubeAPI, name: str, minutes: int = 0, state: dict | None = None, **kw) -> None:
    """A migration pod created T0 + minutes, its one container in STATE (default: failed, exit 1)."""
    containers = kw.pop("containers", None) or [{"name": C, "state": state or terminated("Error", 1)}]
    fake.add_pod(NS, name, T0 + timedelta(minutes=minutes), containers=containers, **kw)


# --- which pod ------------------------------------------------------------------------------


def test_newest_of_three_matching_pods_not_the_first_listed(fake, pods):
    add(fake, "pre-migrate-db-aaaa", 1)
    add(fake, "pre-migrate-db-bbbb", 5)
    add(fake, "pre-migrate-db-cccc", -60)
    add(fake, "web-7d9f-zzzz", 30)  # newer, but not a migration pod
    pod = pods.find_pod(NS, REGEX)
    assert pod.name == "pre-migrate-db-bbbb"
    assert pod.how_chosen == "newest of 3 matching pods (created 2026-11-27 10:05 UTC)"
    assert pod.created == T0 + timedelta(minutes=5)
    assert pod.namespace == NS and pod.node == "node-1" and pod.phase == "Failed"


@pytest.mark.parametrize("labels", [{"git-sha": SHA[:7]}, {"commit": SHA},
                                    {"app.kubernetes.io/version": f"app-{SHA[:8]}"}])
def test_pod_whose_labels_carry_the_commit_wins_over_a_newer_one(fake, pods, labels):
    add(fake, "pre-migrate-db-old", 0, labels=labels)
    add(fake, "pre-migrate-db-new", 10, labels={"git-sha": "0123456789abcdef"})
    pod = pods.find_pod(NS, REGEX, sha=SHA)
    assert pod.name == "pre-migrate-db-old"
    assert pod.how_chosen == "labels carry commit da15608"


def test_sha_in_an_annotation_and_the_newest_of_several_with_it(fake, pods):
    add(fake, "pre-migrate-db-a", 0, annotations={"app.gitlab.com/commit": SHA})
    add(fake, "pre-migrate-db-b", 3, annotations={"app.gitlab.com/commit": SHA})
    add(fake, "pre-migrate-db-c", 9)
    pod = pods.find_pod(NS, REGEX, sha=SHA[:8])
    assert pod.name == "pre-migrate-db-b"
    assert pod.how_chosen == "newest of 2 pods whose annotations carry commit da15608 (created 2026-11-27 10:03 UTC)"


@pytest.mark.parametrize("annotations", [
    {"gitlab.com/pipeline-id": "4242"},
    {"ci-pipeline": "4242"},
    {"app.gitlab.com/source": "https://gitlab.example.com/group/app/-/pipelines/4242"},
])
def test_pipeline_id_annotation_wins(fake, pods, annotations):
    add(fake, "pre-migrate-db-mine", 0, annotations=annotations)
    add(fake, "pre-migrate-db-other", 7, annotations={"gitlab.com/pipeline-id": "4243"})
    pod = pods.find_pod(NS, REGEX, sha="ffffffffffff", pipeline_id=4242, job_id=1977)
    assert pod.name == "pre-migrate-db-mine"
    assert pod.how_chosen == "annotations carry pipeline 4242"


def test_job_id_label_wins_and_a_job_url_is_not_a_pipeline(fake, pods):
    add(fake, "pre-migrate-db-mine", 0, labels={"gitlab-job-id": "1977"})
    add(fake, "pre-migrate-db-other", 7, annotations={"link": "https://gitlab.example.com/g/a/-/jobs/4242"})
    assert pods.find_pod(NS, REGEX, pipeline_id=4242, job_id=1977).name == "pre-migrate-db-mine"


def test_no_matching_pod_names_what_was_seen(fake, pods):
    for i in range(12):
        add(fake, f"web-{i:02d}", i)
    with pytest.raises(NoMatchingPod) as e:
        pods.find_pod(NS, REGEX)
    assert len(e.value.seen_names) == 10 and e.value.seen_names[0] == "web-11"
    assert "no pod matching ^pre-migrate-db- in namespace work" in str(e.value)


def test_pods_are_listed_page_by_page(fake, pods, monkeypatch):
    monkeypatch.setattr(kube, "PAGE_SIZE", 2)
    for i in range(5):
        add(fake, f"pre-migrate-db-{i}", i)
    assert pods.find_pod(NS, REGEX).name == "pre-migrate-db-4"
    assert fake.count(r"/pods$") == 3


def test_namespace_not_found(fake, pods):
    with pytest.raises(NamespaceNotFound, match="namespace nowhere does not exist"):
        pods.find_pod("nowhere", REGEX)
    # Like the real API server: listing pods of a missing namespace is 200 and empty; the namespace itself is 404.
    assert [c.status for c in fake.calls] == [200, 404]


def test_missing_namespace_without_permission_to_read_namespaces(fake, pods):
    fake.deny("get", "namespaces")
    with pytest.raises(NoMatchingPod, match="empty or does not exist"):
        pods.find_pod("nowhere", REGEX)


# --- errors -------------------------------------------------------------------------------


def test_forbidden_list_pods_names_the_missing_rule(fake, pods):
    fake.deny("list", "pods", NS)
    with pytest.raises(KubeForbidden) as e:
        pods.collect(NS, REGEX, C, tail_lines=10, limit_bytes=MiB)
    assert (e.value.verb, e.value.resource, e.value.namespace) == ("list", "pods", NS)
    assert "needs `list` on `pods` in namespace work" in str(e.value)
    assert 'User "system:serviceaccount:ci:gitlab-hook" cannot list resource "pods"' in str(e.value)


def test_forbidden_logs_names_pods_log(fake, pods):
    add(fake, "pre-migrate-db-a", state=terminated("Error", 1))
    fake.deny("get", "pods/log", NS)
    with pytest.raises(KubeForbidden, match=r"needs `get` on `pods/log` in namespace work") as e:
        pods.collect(NS, REGEX, C, tail_lines=10, limit_bytes=MiB)
    assert (e.value.verb, e.value.resource) == ("get", "pods/log")


def test_forbidden_events_is_a_note_not_a_failure(fake, pods):
    add(fake, "pre-migrate-db-a", state=terminated("Error", 1))
    fake.add_log(NS, "pre-migrate-db-a", C, "relation users does not exist\n")
    fake.deny("list", "events", NS)
    got = pods.collect(NS, REGEX, C, tail_lines=10, limit_bytes=MiB)
    assert got.current is not None and "relation users" in got.current.text
    assert got.events == []
    assert any("needs `list` on `events` in namespace work" in n for n in got.notes)


def test_wrong_token_is_unauthorized_and_never_echoed(fake):
    wrong = "wrong-token-abcdefghijklmnop"
    p = PodLogs(load_api_client(kubeconfig=None, api_url=fake.url, token=wrong, ca_file=None))
    with pytest.raises(KubeUnauthorized) as e:
        p.find_pod(NS, REGEX)
    assert wrong not in str(e.value) and fake.token not in str(e.value)


def test_server_error_is_unreachable_so_callers_retry(fake, pods):
    fake.fail(r"/pods$", status=503)
    with pytest.raises(KubeUnreachable, match="HTTP 503"):
        pods.find_pod(NS, REGEX)


def test_unreachable_api_fails_quickly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = PodLogs(load_api_client(kubeconfig=None, api_url=f"http://127.0.0.1:{port}", token="t0ken-xyz",
                                ca_file=None, request_timeout=1))
    started = time.monotonic()
    with pytest.raises(KubeUnreachable, match="unreachable trying to list pods in namespace work") as e:
        p.collect(NS, REGEX, C, tail_lines=10, limit_bytes=MiB)
    assert time.monotonic() - started < 3
    assert "t0ken-xyz" not in str(e.value)


def test_slow_api_times_out(fake):
    p = PodLogs(load_api_client(kubeconfig=None, api_url=fake.url, token=fake.token, ca_file=None),
                request_timeout=0.5)
    fake.delay(r"/pods$", seconds=5)
    started = time.monotonic()
    with pytest.raises(KubeUnreachable, match="timed out"):
        p.find_pod(NS, REGEX)
    assert time.monotonic() - started < 2.5
    assert fake.count(r"/pods$") == 1  # a read timeout is not retried


# --- container states ----------------------------------------------------------------------


def test_image_pull_backoff_gives_state_and_events_but_no_logs(fake, pods):
    add(fake, "pre-migrate-db-a", state=waiting("ImagePullBackOff", 'Back-off pulling image "registry/app:bad"'))
    for i in (5, 1, 11, 3, 0, 9, 2, 7, 10, 4, 8, 6):  # twelve events, stored out of order
        fake.add_event(NS, "pre-migrate-db-a", "BackOff" if i % 2 else "Failed", f"event {i}",
                       at=T0 + timedelta(seconds=i), count=i + 1)
    fake.add_event(NS, "someone-else", "Pulled", "not about our pod")
    got = pods.collect(NS, REGEX, C, tail_lines=200, limit_bytes=MiB)
    assert got.current is None and got.previous is None
    assert got.container is not None
    assert (got.container.state, got.container.reason) == ("waiting", "ImagePullBackOff")
    assert [e.message for e in got.events] == [f"event {i}" for i in range(2, 12)]
    assert got.events[-1].count == 12 and got.events[-1].type == "Warning"
    assert any("waiting (ImagePullBackOff)" in n for n in got.notes)
    assert fake.count("/log$") == 0


def test_crash_loop_reads_the_previous_run(fake, pods):
    add(fake, "pre-migrate-db-a", containers=[{
        "name": C, "state": waiting("CrashLoopBackOff", "back-off 40s restarting failed container"),
        "restartCount": 3, "lastState": terminated("Error", 2)}])
    fake.add_log(NS, "pre-migrate-db-a", C, "alembic: duplicate column 'email'\n", previous=True)
    got = pods.collect(NS, REGEX, C, tail_lines=200, limit_bytes=MiB)
    assert got.container.restart_count == 3 and got.container.last_exit_code == 2
    assert got.current is None
    assert got.previous is not None and "duplicate column" in got.previous.text
    assert [c.query["previous"] for c in fake.calls if c.path.endswith("/log")] == ["true"]


def test_oom_killed_gives_logs_and_the_state(fake, pods):
    add(fake, "pre-migrate-db-a", state=terminated("OOMKilled", 137))
    fake.add_log(NS, "pre-migrate-db-a", C, "migrating 1/3\nmigrating 2/3\n")
    got = pods.collect(NS, REGEX, C, tail_lines=200, limit_bytes=MiB)
    assert (got.container.state, got.container.reason, got.container.exit_code) == ("terminated", "OOMKilled", 137)
    assert got.current is not None and got.current.text == "migrating 1/3\nmigrating 2/3\n"
    assert got.current.truncated is False and got.previous is None
    assert "container pre-migrate-db terminated: OOMKilled with exit code 137" in got.notes


def test_container_not_started_from_read_logs(fake, pods):
    add(fake, "pre-migrate-db-a", state=waiting("ContainerCreating"))
    pod = pods.find_pod(NS, REGEX)
    with pytest.raises(ContainerNotStarted) as e:
        pods.read_logs(pod, C, tail_lines=10, limit_bytes=MiB)
    assert e.value.reason == "ContainerCreating"


def test_init_container_and_missing_container_status(fake, pods):
    add(fake, "pre-migrate-db-a", containers=[{"name": "wait-db", "init": True, "state": running()},
                                              {"name": "app", "state": waiting("PodInitializing")}])
    fake.add_log(NS, "pre-migrate-db-a", "wait-db", "waiting for postgres\n")
    got = pods.collect(NS, REGEX, "wait-db", tail_lines=10, limit_bytes=MiB)
    assert got.container.init and got.current.text == "waiting for postgres\n"
    got = pods.collect(NS, REGEX, C, tail_lines=10, limit_bytes=MiB)
    assert got.container is None and "has no status for container pre-migrate-db" in got.notes[0]


# --- reading logs --------------------------------------------------------------------------


def test_tail_lines_honoured(fake, pods):
    add(fake, "pre-migrate-db-a")
    fake.add_log(NS, "pre-migrate-db-a", C, "".join(f"line {i}\n" for i in range(1000)))
    log = pods.read_logs(pods.find_pod(NS, REGEX), C, tail_lines=200, limit_bytes=MiB)
    assert log.text.splitlines() == [f"line {i}" for i in range(800, 1000)]
    assert log.truncated is False and log.bytes_read == len(log.text)


def test_markup_characters_and_a_long_stack_trace_arrive_intact(fake, pods):
    add(fake, "pre-migrate-db-a")
    frames = "".join(f'  File "/app/<module>/m{i}.py", line {i}, in f_{i} & g<T>\n' for i in range(4000))
    text = "Traceback (most recent call last):\n" + frames + "sqlalchemy.exc.ProgrammingError: <&> 'ü' ✓\n"
    fake.add_log(NS, "pre-migrate-db-a", C, text)
    log = pods.read_logs(pods.find_pod(NS, REGEX), C, tail_lines=5000, limit_bytes=4 * MiB)
    assert log.text == text and not log.truncated


def test_cut_log_loses_only_its_partial_last_line(fake, pods):
    add(fake, "pre-migrate-db-a")
    add(fake, "pre-migrate-db-b", -5)
    fake.add_log(NS, "pre-migrate-db-a", C, "first line\nsecond ✓✓✓✓ line\nthird\n")
    fake.add_log(NS, "pre-migrate-db-b", C, "second ✓✓✓✓ line\n")
    a, b = (pods.find_pod(NS, f"^pre-migrate-db-{x}$") for x in "ab")
    log = pods.read_logs(a, C, tail_lines=10, limit_bytes=len("first line\nsecond ✓".encode()) + 1)
    assert log.truncated and log.text == "first line\n"
    one = pods.read_logs(b, C, tail_lines=10, limit_bytes=len("second ✓".encode()) + 1)
    assert one.truncated and one.text == "second ✓"  # a single cut line is kept, without the split character


def huge_lines():
    """Lines of a log that never ends, made on demand."""
    return (f"{i:09d} INFO migrating row batch, nothing to see here {'.' * 200}\n" for i in itertools.count())


@pytest.mark.parametrize("server_honours_limit", [True, False])
def test_100_mb_log_read_with_a_1_mib_limit_stays_small(fake, pods, server_honours_limit):
    add(fake, "pre-migrate-db-a")
    fake.add_log(NS, "pre-migrate-db-a", C, generator=huge_lines, size=100 * MiB)
    fake.ignore_limit_bytes = not server_honours_limit
    pod = pods.find_pod(NS, REGEX)
    tracemalloc.start()
    try:
        log = pods.read_logs(pod, C, tail_lines=10_000_000, limit_bytes=MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert log.truncated and log.bytes_read <= MiB
    # The END of the log is kept (errors are at the end), not the start of the kubelet's cut tail.
    assert not log.text.startswith("000000000 INFO")
    assert log.text.rstrip("\n").rsplit("\n", 1)[-1].startswith("0004")
    print(f"peak traced allocation while reading: {peak / MiB:.1f} MiB")
    assert peak < 30 * MiB, f"reading the log allocated {peak / MiB:.1f} MiB"
    assert fake.wait_idle(10)
    sent = [c for c in fake.calls if c.path.endswith("/log")][0]
    assert sent.query["limitBytes"] == str(MiB)
    # We stop reading at the limit ourselves, even when the server would send all 100 MB.
    assert sent.bytes_sent < 20 * MiB


# --- names and configuration ---------------------------------------------------------------

HOSTILE = ["../x", "a/b", "x%2f", "", "Work", "a" * 64, "work\n", "wo rk", "-work", "work.", "ns?x=1"]


@pytest.mark.parametrize("ns", HOSTILE)
def test_hostile_namespace_is_refused_before_any_call(fake, pods, ns):
    with pytest.raises(InvalidName):
        pods.collect(ns, REGEX, C, tail_lines=10, limit_bytes=MiB)
    with pytest.raises(InvalidName):
        pods.find_pod(ns, REGEX)
    assert fake.calls == []


@pytest.mark.parametrize("name", ["../x", "a/b", "x%2f", "", "Pre-migrate", "a" * 254, "pod\n", ".pod"])
def test_hostile_pod_or_container_name_is_refused_before_any_call(fake, pods, name):
    pod = PodInfo(name=name, namespace=NS, created=T0, phase=None, labels={}, annotations={}, node=None,
                  containers=[])
    with pytest.raises(InvalidName):
        pods.read_logs(pod, C, tail_lines=10, limit_bytes=MiB)
    ok = PodInfo(name="pre-migrate-db-a", namespace=NS, created=T0, phase=None, labels={}, annotations={},
                 node=None, containers=[])
    with pytest.raises(InvalidName):
        pods.read_logs(ok, name if len(name) < 254 else "a" * 64, tail_lines=10, limit_bytes=MiB)
    with pytest.raises(InvalidName):
        pods.find_pod(NS, "(unclosed")
    assert fake.calls == []


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_accepted_namespace_is_a_plain_dns_label(ns):
    try:
        kube.check_namespace(ns)
    except InvalidName:
        return
    assert 1 <= len(ns) <= 63 and set(ns) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert ns[0] != "-" and ns[-1] != "-"


def test_kubeconfig_file_is_used(fake, tmp_path: Path):
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "ci",
           "clusters": [{"name": "c", "cluster": {"server": fake.url}}],
           "users": [{"name": "u", "user": {"token": fake.token}}],
           "contexts": [{"name": "ci", "context": {"cluster": "c", "user": "u", "namespace": NS}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    add(fake, "pre-migrate-db-a")
    p = PodLogs(load_api_client(kubeconfig=str(path), api_url=None, token=None, ca_file=None))
    assert p.find_pod(NS, REGEX).name == "pre-migrate-db-a"


def test_configuration_errors_are_clear_and_secret_free(tmp_path: Path, monkeypatch):
    with pytest.raises(KubeConfigError, match="URL and token go together"):
        load_api_client(kubeconfig=None, api_url="http://127.0.0.1:1", token=None, ca_file=None)
    with pytest.raises(KubeConfigError, match="http:// or https://"):
        load_api_client(kubeconfig=None, api_url="ftp://k8s", token="s3cr3t-token", ca_file=None)
    with pytest.raises(KubeConfigError, match="CA file .* does not exist") as e:
        load_api_client(kubeconfig=None, api_url="https://k8s.example:6443", token="s3cr3t-token",
                        ca_file=str(tmp_path / "none.crt"))
    assert "s3cr3t" not in str(e.value)
    with pytest.raises(KubeConfigError, match="does not exist"):
        load_api_client(kubeconfig=str(tmp_path / "missing"), api_url=None, token=None, ca_file=None)
    (tmp_path / "empty").write_text("{}")
    with pytest.raises(KubeConfigError, match="kubeconfig"):
        load_api_client(kubeconfig=str(tmp_path / "empty"), api_url=None, token=None, ca_file=None)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # as outside a pod (even if CI runs in one)
    with pytest.raises(KubeConfigError, match="in-cluster"):
        load_api_client(kubeconfig=None, api_url=None, token=None, ca_file=None)


def test_https_with_ca_file_is_verified(tmp_path: Path):
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    api = load_api_client(kubeconfig=None, api_url="https://k8s.example:6443/", token="tok", ca_file=str(ca),
                          request_timeout=3)
    c = api.configuration
    assert (c.host, c.verify_ssl, c.ssl_ca_cert) == ("https://k8s.example:6443", True, str(ca))
    assert c.auth_settings()["BearerToken"]["value"] == "Bearer tok"
    assert PodLogs(api).request_timeout == 3
