"""IAM token providers against fake IAM and metadata services, and their 401 handling in ComputeClient."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from gitlab_hook.yandex import (
    IAM_AUDIENCE,
    ComputeClient,
    KeyFileError,
    MetadataError,
    MetadataTokenProvider,
    ServiceAccountKeyProvider,
    StaticTokenProvider,
    TokenError,
    TokenExpired,
    TokenProvider,
    Unauthenticated,
    choose_token_provider,
    metadata_folder_id,
    redact,
)
from tests.fakes.yandex_cloud import FakeClock, FakeComputeAPI, FakeIAM, FakeMetadata, generate_sa_key


@pytest.fixture(scope="module")
def sa_key() -> tuple[dict[str, Any], Any]:
    """One RSA key pair for the module (generating keys is the slow part)."""
    return generate_sa_key(key_id="ajekey0000000000000a", service_account_id="ajesa00000000000000a")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def api() -> Iterator[FakeComputeAPI]:
    with FakeComputeAPI(tokens=[], transition_seconds=0.05) as fake:
        yield fake


@pytest.fixture
def iam(api: FakeComputeAPI, clock: FakeClock, sa_key: tuple[dict[str, Any], Any]) -> Iterator[FakeIAM]:
    key, public = sa_key
    with FakeIAM(clock=clock, compute=api) as fake:
        fake.register_key(key["id"], key["service_account_id"], public)
        yield fake


@pytest.fixture
def metadata(api: FakeComputeAPI) -> Iterator[FakeMetadata]:
    with FakeMetadata(folder_id=api.folder_id, compute=api) as fake:
        yield fake


@pytest.fixture
def sa_provider(iam: FakeIAM, clock: FakeClock, sa_key: tuple[dict[str, Any], Any]) -> ServiceAccountKeyProvider:
    return ServiceAccountKeyProvider(sa_key[0], iam.url, timeout=(1.0, 2.0), clock=clock)


def _client(api: FakeComputeAPI, provider: TokenProvider, sleeps: list[float] | None = None) -> ComputeClient:
    return ComputeClient(
        compute_url=api.url,
        operation_url=api.url,
        folder_id=api.folder_id,
        token_provider=provider,
        timeout=(1.0, 2.0),
        sleep=(sleeps if sleeps is not None else []).append,
    )


def _signed(key: dict[str, Any], claims: dict[str, Any], alg: str = "PS256", kid: str | None = None) -> str:
    pem = key["private_key"][key["private_key"].index("-----BEGIN"):]
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    return jwt.encode(claims, private, algorithm=alg, headers={"kid": kid or key["id"]})


# -- service-account key ----------------------------------------------------------------------


def test_sa_provider_jwt_passes_iam_checks(sa_provider: ServiceAccountKeyProvider, iam: FakeIAM, sa_key) -> None:
    token = sa_provider.token()
    assert token == iam.issued[-1]
    assert iam.rejections == []
    assert iam.last_header is not None and iam.last_header["alg"] == "PS256"
    assert iam.last_header["kid"] == sa_key[0]["id"]
    claims = iam.last_claims
    assert claims is not None
    assert claims["iss"] == sa_key[0]["service_account_id"] and claims["aud"] == IAM_AUDIENCE
    assert 0 < claims["exp"] - claims["iat"] <= 3600


def test_sa_provider_caps_jwt_lifetime(iam: FakeIAM, clock: FakeClock, sa_key) -> None:
    provider = ServiceAccountKeyProvider(sa_key[0], iam.url, clock=clock, jwt_lifetime=86400)
    claims = jwt.decode(provider.make_jwt(), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600
    assert provider.token() == iam.issued[-1]


@pytest.mark.parametrize(
    ("change", "status", "code", "words"),
    [
        ({"aud": "https://example.com/tokens"}, 400, 3, "audience"),
        ({"exp_after": 3601}, 400, 3, "lifetime"),
        ({"iss": "ajeotheraccount00001"}, 401, 16, "issuer"),
        ({"iat_shift": -7200, "exp_after": 600}, 401, 16, "expired"),
        ({"kid": "ajeunknownkey0000001"}, 401, 16, "key"),
        ({"alg": "RS256"}, 400, 3, "PS256"),
    ],
)
def test_fake_iam_rejects_bad_jwts(
    iam: FakeIAM, clock: FakeClock, sa_key, change: dict[str, Any], status: int, code: int, words: str
) -> None:
    key = sa_key[0]
    iat = int(clock()) + change.get("iat_shift", 0)
    claims = {
        "iss": change.get("iss", key["service_account_id"]),
        "aud": change.get("aud", IAM_AUDIENCE),
        "iat": iat,
        "exp": iat + change.get("exp_after", 3600),
    }
    token = _signed(key, claims, alg=change.get("alg", "PS256"), kid=change.get("kid"))
    resp = requests.post(f"{iam.url}/iam/v1/tokens", json={"jwt": token}, timeout=5)
    assert resp.status_code == status
    body = resp.json()
    assert body["code"] == code and words in body["message"] and isinstance(body["details"], list)
    assert iam.issued == []


def test_fake_iam_accepts_a_correct_hand_made_jwt(iam: FakeIAM, clock: FakeClock, sa_key) -> None:
    key = sa_key[0]
    now = int(clock())
    token = _signed(key, {"iss": key["service_account_id"], "aud": IAM_AUDIENCE, "iat": now, "exp": now + 3600})
    resp = requests.post(f"{iam.url}/iam/v1/tokens", json={"jwt": token}, timeout=5)
    assert resp.status_code == 200
    assert resp.json()["iamToken"].startswith("t1.") and resp.json()["expiresAt"].endswith("Z")


def test_wrong_private_key_is_refused_without_leaking(iam: FakeIAM, clock: FakeClock, sa_key) -> None:
    impostor, _ = generate_sa_key(key_id=sa_key[0]["id"], service_account_id=sa_key[0]["service_account_id"])
    provider = ServiceAccountKeyProvider(impostor, iam.url, clock=clock)
    with pytest.raises(TokenError) as err:
        provider.token()
    assert err.value.http_status == 401 and err.value.grpc_code == 16 and not err.value.retryable
    text = str(err.value)
    assert "signature" in text and "eyJ" not in text and "PRIVATE KEY" not in text


def test_refresh_only_after_max_age(sa_provider: ServiceAccountKeyProvider, iam: FakeIAM, clock: FakeClock) -> None:
    first = sa_provider.token()
    assert sa_provider.token() == first
    clock.advance(3599)
    assert sa_provider.token() == first
    assert iam.token_requests == 1
    clock.advance(2)
    second = sa_provider.token()
    assert second != first and iam.token_requests == 2


def test_refresh_within_margin_of_short_expiry(iam: FakeIAM, clock: FakeClock, sa_key) -> None:
    iam.token_lifetime = 600
    provider = ServiceAccountKeyProvider(sa_key[0], iam.url, clock=clock, refresh_margin=120)
    first = provider.token()
    clock.advance(479)  # 600 - 120 - 1
    assert provider.token() == first and iam.token_requests == 1
    clock.advance(2)
    assert provider.token() != first and iam.token_requests == 2


def test_invalidate_fetches_a_new_token(sa_provider: ServiceAccountKeyProvider, iam: FakeIAM) -> None:
    first = sa_provider.token()
    sa_provider.invalidate()
    assert sa_provider.token() != first and iam.token_requests == 2


def test_concurrent_callers_share_one_fetch(sa_provider: ServiceAccountKeyProvider, iam: FakeIAM) -> None:
    iam.inject_delay("/iam/v1/tokens", 0.1)
    barrier = threading.Barrier(8)
    results: list[str] = []

    def call() -> None:
        barrier.wait()
        results.append(sa_provider.token())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(results) == 8 and len(set(results)) == 1
    assert iam.token_requests == 1


def test_refresh_failure_keeps_a_still_valid_token(
    sa_provider: ServiceAccountKeyProvider, iam: FakeIAM, clock: FakeClock
) -> None:
    first = sa_provider.token()
    clock.advance(3601)  # due for refresh, but valid for ~11 h more
    iam.inject("POST", "/iam/v1/tokens", 503)
    assert sa_provider.token() == first
    assert iam.token_requests == 2
    clock.advance(31)
    assert sa_provider.token() != first and iam.token_requests == 3


def test_iam_errors_are_typed_and_clean(sa_provider: ServiceAccountKeyProvider, iam: FakeIAM) -> None:
    iam.inject("POST", "/iam/v1/tokens", 500)
    with pytest.raises(TokenError) as err:
        sa_provider.token()
    assert err.value.retryable and err.value.http_status == 500
    assert "eyJ" not in str(err.value) and "BEGIN" not in str(err.value)


def test_iam_unreachable_is_retryable_token_error(sa_key, clock: FakeClock) -> None:
    dead = FakeIAM().start()
    url = dead.url
    dead.stop()
    with pytest.raises(TokenError) as err:
        ServiceAccountKeyProvider(sa_key[0], url, clock=clock).token()
    assert err.value.retryable and "ConnectionError" in str(err.value)


def test_compute_retries_a_transient_iam_failure(api: FakeComputeAPI, iam: FakeIAM, sa_provider) -> None:
    api.add_instance("build-1")
    iam.inject("POST", "/iam/v1/tokens", 503)
    sleeps: list[float] = []
    assert [i.name for i in _client(api, sa_provider, sleeps).list_instances()] == ["build-1"]
    assert sleeps == [0.5] and iam.token_requests == 2


def test_from_file_reads_yc_key_file(tmp_path, iam: FakeIAM, clock: FakeClock, sa_key) -> None:
    path = tmp_path / "key.json"
    path.write_text(json.dumps(sa_key[0]))
    provider = ServiceAccountKeyProvider.from_file(path, iam.url, clock=clock)
    assert provider.key_id == sa_key[0]["id"]
    assert provider.token() == iam.issued[-1]
    assert "PRIVATE" not in repr(provider)


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"id": "ajek", "private_key": "x"}),
        json.dumps({
            "id": "ajek",
            "service_account_id": "ajes",
            "private_key": "-----BEGIN PRIVATE KEY-----\nsecretstuff\n-----END PRIVATE KEY-----\n",
        }),
        json.dumps([1, 2]),
    ],
)
def test_bad_key_files_raise_key_file_error(tmp_path, content: str) -> None:
    path = tmp_path / "key.json"
    path.write_text(content)
    with pytest.raises(KeyFileError) as err:
        ServiceAccountKeyProvider.from_file(path)
    assert "secretstuff" not in str(err.value)


def test_missing_key_file(tmp_path) -> None:
    with pytest.raises(KeyFileError) as err:
        ServiceAccountKeyProvider.from_file(tmp_path / "absent.json")
    assert "absent.json" in str(err.value)


# -- metadata service -------------------------------------------------------------------------


def test_metadata_token_and_header(metadata: FakeMetadata, clock: FakeClock) -> None:
    provider = MetadataTokenProvider(metadata.url, clock=clock)
    assert provider.token() == metadata.issued[-1]
    [call] = metadata.calls
    assert call.headers["metadata-flavor"] == "Google"
    bare = requests.get(metadata.url + FakeMetadata.TOKEN_PATH, timeout=5)
    assert bare.status_code == 403


def test_metadata_refresh_before_expiry(metadata: FakeMetadata, clock: FakeClock) -> None:
    metadata.expires_in = 600
    provider = MetadataTokenProvider(metadata.url, clock=clock)  # margin 300 → refresh at 300 s
    first = provider.token()
    clock.advance(299)
    assert provider.token() == first and metadata.token_requests == 1
    clock.advance(2)
    assert provider.token() != first and metadata.token_requests == 2


def test_metadata_errors_are_token_errors(metadata: FakeMetadata, clock: FakeClock) -> None:
    provider = MetadataTokenProvider(metadata.url, clock=clock)
    metadata.inject("GET", "/token", 404, body="no service account")
    with pytest.raises(TokenError) as err:
        provider.token()
    assert err.value.http_status == 404 and not err.value.retryable and "service account" in str(err.value)
    metadata.inject("GET", "/token", 200, body="<html>captive portal</html>")
    with pytest.raises(TokenError):
        provider.token()


def test_metadata_folder_id(metadata: FakeMetadata) -> None:
    assert metadata_folder_id(metadata.url, timeout=(1.0, 2.0)) == metadata.folder_id
    metadata.inject("GET", "/folder-id", 200, body="../etc")
    with pytest.raises(MetadataError):
        metadata_folder_id(metadata.url)
    metadata.inject("GET", "/folder-id", 500)
    with pytest.raises(MetadataError) as err:
        metadata_folder_id(metadata.url)
    assert err.value.retryable


# -- static token -----------------------------------------------------------------------------


def test_static_provider_cannot_refresh() -> None:
    provider = StaticTokenProvider("  t1.static-secret-value-123  \n")
    assert provider.token() == "t1.static-secret-value-123"
    assert "static-secret" not in repr(provider)
    with pytest.raises(TokenExpired) as err:
        provider.invalidate()
    text = str(err.value)
    assert "YC_IAM_TOKEN" in text and "expired" in text and "Replace" in text
    assert "static-secret" not in text


def test_static_provider_known_expiry(clock: FakeClock) -> None:
    provider = StaticTokenProvider("t1.abcdefgh", expires_at=clock() + 10, clock=clock)
    assert provider.token() == "t1.abcdefgh"
    clock.advance(10)
    with pytest.raises(TokenExpired):
        provider.token()


@pytest.mark.parametrize("value", ["", "   ", "two words", "tok\nen"])
def test_static_provider_rejects_unusable_tokens(value: str) -> None:
    with pytest.raises(ValueError) as err:
        StaticTokenProvider(value)
    assert value.strip() == "" or value not in str(err.value)


# -- 401 handling through ComputeClient --------------------------------------------------------


def test_401_refreshes_sa_token_once(api: FakeComputeAPI, iam: FakeIAM, sa_provider) -> None:
    api.add_instance("build-1")
    client = _client(api, sa_provider)
    assert len(client.list_instances()) == 1
    old = iam.issued[-1]
    api.revoke_token(old)  # e.g. revoked before its expiry

    assert [i.name for i in client.list_instances()] == ["build-1"]

    assert iam.token_requests == 2
    lists = api.calls_matching("GET", "/compute/v1/instances")
    assert [c.bearer for c in lists] == [old, old, iam.issued[-1]]


def test_401_refreshes_metadata_token_once(api: FakeComputeAPI, metadata: FakeMetadata, clock: FakeClock) -> None:
    vm = api.add_instance("build-1")
    client = _client(api, MetadataTokenProvider(metadata.url, clock=clock))
    client.get_instance(vm)
    api.revoke_token(metadata.issued[-1])
    assert client.get_instance(vm).id == vm
    assert metadata.token_requests == 2
    assert api.count("GET", f"/instances/{vm}") == 3


def test_401_with_static_token_says_replace_it(api: FakeComputeAPI) -> None:
    secret = "t1.stale-static-token-value"
    with pytest.raises(TokenExpired) as err:
        _client(api, StaticTokenProvider(secret)).list_instances()
    assert "YC_IAM_TOKEN" in str(err.value)
    assert secret not in str(err.value) and "stale-static" not in repr(err.value)
    assert api.count("GET", "/compute/v1/instances") == 1


def test_401_after_refresh_is_unauthenticated(api: FakeComputeAPI, iam: FakeIAM, sa_provider) -> None:
    iam.compute = None  # IAM issues tokens the Compute API does not know
    with pytest.raises(Unauthenticated) as err:
        _client(api, sa_provider).list_instances()
    assert err.value.http_status == 401
    assert iam.token_requests == 2 and api.count("GET", "/compute/v1/instances") == 2
    assert not any(t in str(err.value) for t in iam.issued)


# -- choosing and helpers ---------------------------------------------------------------------


def test_choose_token_provider(tmp_path, sa_key) -> None:
    path = tmp_path / "key.json"
    path.write_text(json.dumps(sa_key[0]))
    assert isinstance(choose_token_provider(sa_key_file=path, iam_token="t1.x"), ServiceAccountKeyProvider)
    assert isinstance(choose_token_provider(iam_token="t1.abcdef"), StaticTokenProvider)
    chosen = choose_token_provider()
    assert isinstance(chosen, MetadataTokenProvider) and isinstance(chosen, TokenProvider)


def test_redact_hides_tokens_and_keys() -> None:
    text = redact(
        "Bearer abc123 t1.9euelZqAAAAAAAAAAA eyJhbGciOi.eyJpc3Mi.sig "
        "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY----- mysecret",
        secrets=["mysecret"],
    )
    assert text == "Bearer *** *** *** *** ***"
