"""ComputeClient against the fake Compute and Operation APIs: states, paging, errors, retries, names."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from gitlab_hook.yandex import (
    ComputeClient,
    ConnectionFailed,
    FailedPrecondition,
    Instance,
    Internal,
    InvalidArgument,
    InvalidName,
    NotFound,
    Operation,
    OperationFailed,
    OperationTimeout,
    PermissionDenied,
    ResourceExhausted,
    StaticTokenProvider,
    Unauthenticated,
    Unavailable,
    YandexApiError,
    error_from_response,
    validate_vm_name,
)
from tests.fakes.yandex_cloud import GIB, FakeComputeAPI

TOKEN = "test-token"
MakeClient = Callable[..., ComputeClient]


@pytest.fixture
def api() -> Iterator[FakeComputeAPI]:
    with FakeComputeAPI(tokens=[TOKEN], transition_seconds=0.1) as fake:
        yield fake


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(api: FakeComputeAPI, sleeps: list[float]) -> Iterator[MakeClient]:
    clients: list[ComputeClient] = []

    def make(**overrides) -> ComputeClient:
        options = dict(
            compute_url=api.url,
            operation_url=api.operation_url,
            folder_id=api.folder_id,
            token_provider=StaticTokenProvider(TOKEN),
            timeout=(1.0, 2.0),
            sleep=sleeps.append,
        )
        options.update(overrides)
        client = ComputeClient(**options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: MakeClient) -> ComputeClient:
    return make_client()


@pytest.fixture
def waiting_client(make_client: MakeClient) -> ComputeClient:
    """A client whose sleep really sleeps, for polling operations."""
    return make_client(sleep=time.sleep)


# -- status transitions and operations --------------------------------------------------------


def test_start_goes_stopped_starting_running(api: FakeComputeAPI, waiting_client: ComputeClient) -> None:
    vm = api.add_instance("build-1", status="STOPPED")
    op = waiting_client.start(vm)
    assert not op.done
    assert op.instance_id == vm
    assert op.description == "Start instance"
    assert waiting_client.get_instance(vm).status == "STARTING"

    polled: list[Operation] = []
    done = waiting_client.wait_operation(op, timeout=5, poll_interval=0.02, on_poll=polled.append)

    assert done.done and not done.failed
    assert done.id == op.id
    assert done.response is not None and done.response["status"] == "RUNNING"
    assert polled and polled[-1].done and not any(p.done for p in polled[:-1])
    assert waiting_client.get_instance(vm).status == "RUNNING"


def test_stop_goes_running_stopping_stopped(api: FakeComputeAPI, waiting_client: ComputeClient) -> None:
    vm = api.add_instance("build-1", status="RUNNING")
    op = waiting_client.stop(vm)
    assert waiting_client.get_instance(vm).status == "STOPPING"
    done = waiting_client.wait_operation(op, timeout=5, poll_interval=0.02)
    assert done.done and done.error is None
    assert waiting_client.get_instance(vm).status == "STOPPED"
    assert api.count("POST", ":stop") == 1
    assert api.count("GET", f"/operations/{op.id}") >= 1


def test_start_of_running_vm_is_failed_precondition(
    api: FakeComputeAPI, client: ComputeClient, sleeps: list[float]
) -> None:
    vm = api.add_instance("build-1", status="RUNNING")
    with pytest.raises(FailedPrecondition) as err:
        client.start(vm)
    assert err.value.grpc_code == 9 and err.value.http_status == 400
    assert api.count("POST", ":start") == 1 and sleeps == []


def test_stop_of_stopped_vm_is_failed_precondition(api: FakeComputeAPI, client: ComputeClient) -> None:
    vm = api.add_instance("build-1", status="STOPPED")
    with pytest.raises(FailedPrecondition):
        client.stop(vm)


def test_wait_operation_accepts_an_id(api: FakeComputeAPI, waiting_client: ComputeClient) -> None:
    vm = api.add_instance("build-1")
    op = waiting_client.start(vm)
    done = waiting_client.wait_operation(op.id, timeout=5, poll_interval=0.02)
    assert done.done and done.instance_id == vm


def test_wait_operation_returns_done_operation_without_polling(
    api: FakeComputeAPI, waiting_client: ComputeClient
) -> None:
    vm = api.add_instance("build-1")
    op = waiting_client.wait_operation(waiting_client.start(vm), timeout=5, poll_interval=0.02)
    polls_before = api.count("GET", f"/operations/{op.id}")
    again = waiting_client.wait_operation(op, timeout=5)
    assert again is op
    assert api.count("GET", f"/operations/{op.id}") == polls_before


def test_operation_ending_with_error_raises_operation_failed(
    api: FakeComputeAPI, waiting_client: ComputeClient
) -> None:
    vm = api.add_instance("build-1")
    api.fail_next_operation(code=8, message="Not enough resources in zone ru-central1-a")
    op = waiting_client.start(vm)
    with pytest.raises(OperationFailed) as err:
        waiting_client.wait_operation(op, timeout=5, poll_interval=0.02)
    assert err.value.operation_id == op.id
    assert err.value.code == 8
    assert err.value.description == "Start instance"
    assert "Not enough resources" in err.value.message
    assert op.id in str(err.value)
    assert err.value.retryable
    # The failed start leaves the VM where it was.
    assert waiting_client.get_instance(vm).status == "STOPPED"


def test_operation_timeout_is_bounded(api: FakeComputeAPI, waiting_client: ComputeClient) -> None:
    api.transition_seconds = 30
    vm = api.add_instance("build-1")
    op = waiting_client.start(vm)
    began = time.monotonic()
    with pytest.raises(OperationTimeout) as err:
        waiting_client.wait_operation(op, timeout=0.2, poll_interval=0.05)
    assert time.monotonic() - began < 1.5
    assert err.value.operation_id == op.id and err.value.timeout == 0.2
    assert api.count("GET", f"/operations/{op.id}") >= 2


def test_get_operation_unknown_id_is_not_found(client: ComputeClient) -> None:
    with pytest.raises(NotFound) as err:
        client.get_operation("fhmnosuchoperation00")
    assert err.value.http_status == 404 and err.value.grpc_code == 5


# -- update_resources -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "mask", "spec"),
    [
        ({"cores": 4}, "resourcesSpec.cores", {"cores": "4"}),
        ({"memory_bytes": 8 * GIB}, "resourcesSpec.memory", {"memory": str(8 * GIB)}),
        ({"core_fraction": 50}, "resourcesSpec.coreFraction", {"coreFraction": "50"}),
        (
            {"cores": 4, "memory_bytes": 8 * GIB},
            "resourcesSpec.cores,resourcesSpec.memory",
            {"cores": "4", "memory": str(8 * GIB)},
        ),
        (
            {"cores": 8, "memory_bytes": 16 * GIB, "core_fraction": 100},
            "resourcesSpec.cores,resourcesSpec.memory,resourcesSpec.coreFraction",
            {"cores": "8", "memory": str(16 * GIB), "coreFraction": "100"},
        ),
    ],
)
def test_update_resources_sends_exact_mask(
    api: FakeComputeAPI, waiting_client: ComputeClient, kwargs: dict, mask: str, spec: dict
) -> None:
    vm = api.add_instance("build-1", cores=2, memory_gb=4, core_fraction=100)
    op = waiting_client.update_resources(vm, **kwargs)
    waiting_client.wait_operation(op, timeout=5, poll_interval=0.02)

    [patch] = api.calls_matching("PATCH", f"/instances/{vm}")
    assert patch.body == {"updateMask": mask, "resourcesSpec": spec}
    after = waiting_client.get_instance(vm)
    assert after.cores == kwargs.get("cores", 2)
    assert after.memory_bytes == kwargs.get("memory_bytes", 4 * GIB)
    assert after.core_fraction == kwargs.get("core_fraction", 100)
    assert after.status == "STOPPED"


def test_update_resources_of_running_vm_is_failed_precondition(
    api: FakeComputeAPI, client: ComputeClient, sleeps: list[float]
) -> None:
    vm = api.add_instance("build-1", status="RUNNING")
    with pytest.raises(FailedPrecondition) as err:
        client.update_resources(vm, cores=4)
    assert "stopped" in err.value.message
    assert api.count("PATCH") == 1 and sleeps == []
    assert api.instance(vm)["resources"]["cores"] == "2"


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"cores": 0}, {"cores": -2}, {"memory_bytes": 1.5}, {"cores": True}, {"core_fraction": 150}],
)
def test_update_resources_rejects_bad_arguments_without_a_call(
    api: FakeComputeAPI, client: ComputeClient, kwargs: dict
) -> None:
    vm = api.add_instance("build-1")
    with pytest.raises(ValueError):
        client.update_resources(vm, **kwargs)
    assert api.calls == []


def test_full_resize_cycle_stop_update_start(api: FakeComputeAPI, waiting_client: ComputeClient) -> None:
    vm = api.add_instance("build-1", status="RUNNING")
    c = waiting_client
    c.wait_operation(c.stop(vm), timeout=5, poll_interval=0.02)
    c.wait_operation(c.update_resources(vm, cores=4, memory_bytes=8 * GIB), timeout=5, poll_interval=0.02)
    c.wait_operation(c.start(vm), timeout=5, poll_interval=0.02)
    inst = c.get_instance(vm)
    assert (inst.status, inst.cores, inst.memory_gb) == ("RUNNING", 4, 8.0)


# -- listing, paging, finding -----------------------------------------------------------------


def test_list_pages_through_three_pages(api: FakeComputeAPI, client: ComputeClient) -> None:
    names = [f"build-{i}" for i in range(7)]
    for name in names:
        api.add_instance(name)
    api.add_instance("elsewhere", folder_id="b1gotherfolder000001")

    found = client.list_instances(page_size=3)

    assert [i.name for i in found] == names
    lists = api.calls_matching("GET", "/compute/v1/instances")
    assert len(lists) == 3
    assert [c.query.get("pageSize") for c in lists] == [["3"]] * 3
    assert "pageToken" not in lists[0].query
    assert lists[1].query["pageToken"] != lists[2].query["pageToken"]
    assert all(c.query["folderId"] == [api.folder_id] for c in lists)


def test_list_empty_folder(client: ComputeClient) -> None:
    assert client.list_instances() == []


def test_list_with_name_filter(api: FakeComputeAPI, client: ComputeClient) -> None:
    api.add_instance("build-1")
    wanted = api.add_instance("build-2", status="RUNNING", cores=4, memory_gb=8, preemptible=True)
    found = client.list_instances(name_filter="build-2")
    assert [i.id for i in found] == [wanted]
    assert found[0].status == "RUNNING" and found[0].cores == 4 and found[0].preemptible
    [call] = api.calls_matching("GET", "/compute/v1/instances")
    assert call.query["filter"] == ['name="build-2"']


def test_list_rejects_bad_page_size(client: ComputeClient) -> None:
    with pytest.raises(ValueError):
        client.list_instances(page_size=1001)


def test_find_instance_by_name(api: FakeComputeAPI, client: ComputeClient) -> None:
    api.add_instance("buildfront")
    wanted = api.add_instance("buildback")
    inst = client.find_instance("buildback")
    assert inst.id == wanted and inst.name == "buildback"
    assert api.count("GET", "/compute/v1/instances") == 1


def test_find_instance_by_id(api: FakeComputeAPI, client: ComputeClient) -> None:
    wanted = api.add_instance("buildfront")
    inst = client.find_instance(wanted)
    assert inst.name == "buildfront" and inst.id == wanted
    # Tried as a name first (no match), then read by id.
    assert api.count("GET", "/compute/v1/instances") == 1
    assert api.count("GET", f"/instances/{wanted}") == 1


def test_find_instance_by_id_starting_with_digit_skips_name_lookup(api: FakeComputeAPI, client: ComputeClient) -> None:
    with pytest.raises(NotFound):
        client.find_instance("1nosuchid")
    assert api.count("GET", "/compute/v1/instances") == 0
    assert api.count("GET", "/instances/1nosuchid") == 1


def test_find_instance_not_found(api: FakeComputeAPI, client: ComputeClient) -> None:
    api.add_instance("buildfront")
    with pytest.raises(NotFound) as err:
        client.find_instance("nosuchvm")
    assert "nosuchvm" in str(err.value) and api.folder_id in str(err.value)


def test_find_instance_ignores_other_folders(api: FakeComputeAPI, client: ComputeClient) -> None:
    other = api.add_instance("buildfront", folder_id="b1gotherfolder000001")
    with pytest.raises(NotFound):
        client.find_instance(other)


def test_instance_fields_from_api(api: FakeComputeAPI, client: ComputeClient) -> None:
    vm = api.add_instance(
        "build-1", status="RUNNING", cores=4, memory_gb=0.5, core_fraction=20,
        platform_id="standard-v2", labels={"role": "runner"}, zone_id="ru-central1-b",
    )
    inst = client.get_instance(vm)
    assert inst.id.startswith("epd")
    assert inst.folder_id == api.folder_id and inst.zone_id == "ru-central1-b"
    assert inst.platform_id == "standard-v2" and inst.core_fraction == 20
    assert inst.memory_bytes == GIB // 2 and isinstance(inst.memory_bytes, int)
    assert inst.labels == {"role": "runner"} and inst.fqdn == "build-1.ru-central1.internal"
    assert inst.created_at is not None and inst.created_at.tzinfo is not None
    assert inst.preemptible is False and inst.gpus == 0
    assert hash(inst)  # frozen and hashable despite the labels dict


def test_from_api_tolerates_missing_fields() -> None:
    empty = Instance.from_api({})
    assert (empty.id, empty.cores, empty.memory_bytes, empty.created_at, empty.labels) == ("", 0, 0, None, {})
    odd = Instance.from_api({"id": "x", "resources": {"memory": "oops", "cores": 2}, "createdAt": "garbage"})
    assert odd.cores == 2 and odd.memory_bytes == 0 and odd.created_at is None
    op = Operation.from_api({"id": "op1", "done": True, "error": {"code": 9, "message": "no"}})
    assert op.failed and op.error_code == 9 and op.error_message == "no"
    assert Operation.from_api({}).done is False
    with pytest.raises(AttributeError):
        empty.name = "changed"  # type: ignore[misc]


# -- error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, 3, InvalidArgument),
        (404, 5, NotFound),
        (403, 7, PermissionDenied),
        (429, 8, ResourceExhausted),
        (400, 9, FailedPrecondition),
        (500, 13, Internal),
        (503, 14, Unavailable),
        (401, 16, Unauthenticated),
    ],
)
def test_grpc_codes_map_to_exceptions(
    api: FakeComputeAPI, make_client: MakeClient, status: int, code: int, cls: type
) -> None:
    vm = api.add_instance("build-1")
    # Answer every attempt (even the 401 retry) with the error; one attempt for retryable codes.
    body = {"code": code, "message": f"boom {code}", "details": []}
    api.inject("GET", f"/instances/{vm}", status, body=body, times=5)
    client = make_client(max_attempts=1, token_provider=_RefreshableStub())
    with pytest.raises(cls) as err:
        client.get_instance(vm)
    assert isinstance(err.value, YandexApiError)
    assert (err.value.grpc_code, err.value.http_status, err.value.message) == (code, status, f"boom {code}")
    assert f"boom {code}" in str(err.value)


class _RefreshableStub:
    """A provider that can always renew (so a 401 is retried once, not TokenExpired)."""

    def __init__(self) -> None:
        self.invalidations = 0

    def token(self) -> str:
        return TOKEN

    def invalidate(self) -> None:
        self.invalidations += 1


def test_non_json_error_body_is_tolerated(api: FakeComputeAPI, make_client: MakeClient) -> None:
    api.inject("GET", "/compute/v1/instances", 502, times=3)
    with pytest.raises(Unavailable) as err:
        make_client(max_attempts=1).list_instances()
    assert err.value.http_status == 502 and err.value.grpc_code == 14
    assert "Bad Gateway" in err.value.message


def test_error_texts_never_show_the_token(api: FakeComputeAPI, client: ComputeClient) -> None:
    api.inject("GET", "/compute/v1/instances", 400, body={"code": 3, "message": f"header Bearer {TOKEN} is odd"})
    with pytest.raises(InvalidArgument) as err:
        client.list_instances()
    assert TOKEN not in str(err.value) and TOKEN not in repr(err.value)


def test_error_from_response_without_code_uses_http_status() -> None:
    import requests

    resp = requests.Response()
    resp.status_code = 404
    resp._content = b"not json at all"
    err = error_from_response(resp)
    assert isinstance(err, NotFound) and err.message == "not json at all"


# -- retries ----------------------------------------------------------------------------------


def test_429_honours_retry_after(api: FakeComputeAPI, client: ComputeClient, sleeps: list[float]) -> None:
    api.add_instance("build-1")
    api.inject("GET", "/compute/v1/instances", 429, retry_after=7)
    assert [i.name for i in client.list_instances()] == ["build-1"]
    assert sleeps == [7.0]
    assert api.count("GET", "/compute/v1/instances") == 2


def test_retry_after_is_capped(
    api: FakeComputeAPI, make_client: MakeClient, sleeps: list[float]
) -> None:
    api.inject("GET", "/compute/v1/instances", 429, retry_after=3600)
    make_client(backoff_cap=20.0).list_instances()
    assert sleeps == [20.0]


def test_503_then_success(api: FakeComputeAPI, client: ComputeClient, sleeps: list[float]) -> None:
    vm = api.add_instance("build-1")
    api.inject("POST", ":start", 503)
    op = client.start(vm)
    assert op.instance_id == vm
    assert sleeps == [0.5]
    assert api.count("POST", ":start") == 2
    assert len(api.operation_ids()) == 1


def test_backoff_doubles_up_to_cap(
    api: FakeComputeAPI, make_client: MakeClient, sleeps: list[float]
) -> None:
    api.inject(None, "/compute/v1/instances", 500, times=5)
    make_client(max_attempts=6, backoff_base=0.5, backoff_cap=2.0).list_instances()
    assert sleeps == [0.5, 1.0, 2.0, 2.0, 2.0]


def test_gives_up_after_max_attempts(
    api: FakeComputeAPI, make_client: MakeClient, sleeps: list[float]
) -> None:
    api.inject("GET", "/compute/v1/instances", 503, times=10)
    with pytest.raises(Unavailable) as err:
        make_client(max_attempts=3).list_instances()
    assert err.value.http_status == 503 and err.value.retryable
    assert api.count("GET", "/compute/v1/instances") == 3
    assert sleeps == [0.5, 1.0]


def test_read_timeout_then_success(
    api: FakeComputeAPI, make_client: MakeClient, sleeps: list[float]
) -> None:
    vm = api.add_instance("build-1")
    api.inject_delay(f"/instances/{vm}", 1.0)
    client = make_client(timeout=(1.0, 0.2))
    began = time.monotonic()
    assert client.get_instance(vm).name == "build-1"
    assert time.monotonic() - began < 0.9
    assert sleeps == [0.5]
    assert api.count("GET", f"/instances/{vm}") == 2


def test_timeouts_until_give_up(
    api: FakeComputeAPI, make_client: MakeClient, sleeps: list[float]
) -> None:
    vm = api.add_instance("build-1")
    api.inject_delay(f"/instances/{vm}", 1.0, times=2)
    with pytest.raises(ConnectionFailed) as err:
        make_client(timeout=(1.0, 0.1), max_attempts=2).get_instance(vm)
    assert "ReadTimeout" in str(err.value)
    assert isinstance(err.value, Unavailable) and sleeps == [0.5]


def test_connection_refused_gives_up(make_client: MakeClient, sleeps: list[float]) -> None:
    closed = FakeComputeAPI().start()
    url = closed.url
    closed.stop()
    with pytest.raises(ConnectionFailed):
        make_client(compute_url=url, max_attempts=2).list_instances()
    assert sleeps == [0.5]


def test_other_4xx_are_not_retried(api: FakeComputeAPI, client: ComputeClient, sleeps: list[float]) -> None:
    api.inject("GET", "/compute/v1/instances", 403, body={"code": 7, "message": "Permission denied"})
    with pytest.raises(PermissionDenied):
        client.list_instances()
    assert api.count("GET", "/compute/v1/instances") == 1 and sleeps == []


def test_retried_start_reuses_idempotency_key(api: FakeComputeAPI, make_client: MakeClient) -> None:
    vm = api.add_instance("build-1")
    # The first start reaches the API but answers too late; the retry must not start twice.
    api.inject_delay(":start", 0.4)
    client = make_client(timeout=(1.0, 0.15))
    op = client.start(vm)
    # Both requests were answered with the same operation; none got FAILED_PRECONDITION.
    assert api.wait_answered("POST", ":start", n=2) == [200, 200]
    starts = api.calls_matching("POST", ":start")
    assert len(starts) == 2
    keys = {c.headers.get("idempotency-key") for c in starts}
    assert len(keys) == 1 and None not in keys
    assert api.operation_ids() == [op.id]


def test_unauthenticated_twice_raises(api: FakeComputeAPI, make_client: MakeClient) -> None:
    stub = _RefreshableStub()
    api.revoke_token(TOKEN)
    with pytest.raises(Unauthenticated):
        make_client(token_provider=stub).list_instances()
    assert stub.invalidations == 1
    assert api.count("GET", "/compute/v1/instances") == 2


# -- names ------------------------------------------------------------------------------------

HOSTILE = ["../x", "a/b", "x%2f", "", "A" * 70, "имя", "a b", "build-1/../x", "x\n", "-x", "x-", "a" * 64, ".."]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_never_reach_the_api(api: FakeComputeAPI, client: ComputeClient, name: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: client.find_instance(name),
        lambda: client.get_instance(name),
        lambda: client.start(name),
        lambda: client.stop(name),
        lambda: client.update_resources(name, cores=2),
        lambda: client.get_operation(name),
        lambda: client.list_instances(name_filter=name),
        lambda: validate_vm_name(name),
    ]
    for call in calls:
        with pytest.raises(InvalidName):
            call()
    assert api.calls == []


def test_invalid_name_is_also_value_error_and_shortens_value() -> None:
    with pytest.raises(ValueError) as err:
        validate_vm_name("A" * 500)
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("name", ["a", "build-1", "b" + "x" * 61 + "1", "runner-front-2"])
def test_valid_names_pass(name: str) -> None:
    assert validate_vm_name(name) == name


def test_folder_id_is_validated() -> None:
    with pytest.raises(InvalidName):
        ComputeClient(compute_url="http://127.0.0.1:1", operation_url="http://127.0.0.1:1",
                      folder_id="../b1g", token_provider=StaticTokenProvider(TOKEN))


def test_errors_survive_pickling() -> None:
    """Task queues store exceptions; attributes must come back intact."""
    import pickle

    from gitlab_hook.yandex import TokenExpired

    originals = [
        FailedPrecondition("not stopped", grpc_code=9, http_status=400, request="PATCH /x"),
        ConnectionFailed("no answer", request="GET /y"),
        OperationFailed("op1", "Start instance", 13, "boom"),
        OperationTimeout("op2", "Stop instance", 5.0),
        TokenExpired(),
        InvalidName("VM name", "../x", "^[a-z]$"),
    ]
    for original in originals:
        copy = pickle.loads(pickle.dumps(original))
        assert type(copy) is type(original) and str(copy) == str(original)
    assert pickle.loads(pickle.dumps(originals[0])).grpc_code == 9


def test_wait_status_follows_a_stop_and_gives_up_on_a_broken_vm(api, waiting_client):
    client = waiting_client
    vm = api.add_instance("buildfront", status="RUNNING")
    client.stop(vm)
    polled = []
    inst = client.wait_status(vm, {"STOPPED"}, timeout=5, poll_interval=0.02, on_poll=polled.append)
    assert inst.status == "STOPPED" and polled and polled[0].status == "STOPPING"
    api.set_status(vm, "CRASHED")
    with pytest.raises(OperationTimeout, match="it is CRASHED"):
        client.wait_status(vm, {"RUNNING"}, timeout=5, poll_interval=0.02)
