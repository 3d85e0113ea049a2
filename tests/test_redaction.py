"""Secret masking: each built-in pattern, readable text left alone, user patterns, linear time."""

from __future__ import annotations

import base64
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitlab_hook.redaction import MASK, USER_PATTERN_WINDOW, Redactor, validate_pattern

R = Redactor()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # connection strings: scheme, user and host stay
        ("DATABASE_URL=postgres://app:S3cr3t!@db.internal:5432/app", "DATABASE_URL=postgres://app:***@db.internal:5432/app"),
        ("postgresql://app:pw@db/app?sslmode=require", "postgresql://app:***@db/app?sslmode=require"),
        ("mysql://root:hunter2@mysql:3306/x", "mysql://root:***@mysql:3306/x"),
        ("redis://:redispw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://default:pw@cache.example.com:6380", "rediss://default:***@cache.example.com:6380"),
        ("amqp://guest:guest@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
        ("mongodb+srv://user:p@ss@cluster0.example.net/db", "mongodb+srv://user:***@cluster0.example.net/db"),
        ('url: "postgres://u:pw@h/db"', 'url: "postgres://u:***@h/db"'),
        ("postgres://u:ab/cd+ef@h/db", "postgres://u:***@h/db"),
        ("postgres://u:pw@h/db?x=a@b", "postgres://u:***@h/db?x=a@b"),
        ("git clone https://gitlab-ci-token:abc123def@gitlab.example.com/group/app.git",
         "git clone https://gitlab-ci-token:***@gitlab.example.com/group/app.git"),
        # key = value
        ("password=hunter2 user=bob", "password=*** user=bob"),
        ("DB_PASSWORD=hunter2", "DB_PASSWORD=***"),
        ("PGPASSWORD='hunter 2' psql", "PGPASSWORD='***' psql"),
        ("passwd: hunter2", "passwd: ***"),
        ("pwd=hunter2", "pwd=***"),
        ("https://x/reset?token=abc123&next=/home", "https://x/reset?token=***&next=/home"),
        ("SECRET_KEY=django-insecure-xyz", "SECRET_KEY=***"),
        ("client_secret = abc", "client_secret = ***"),
        ("api_key=AIzaSyXYZ", "api_key=***"),
        ("apikey=abc", "apikey=***"),
        ("X-Api-Key: abc123", "X-Api-Key: ***"),
        ("access_key=abc", "access_key=***"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
         "aws_secret_access_key = ***"),
        ("Server=db;User Id=app;Password=hunter2;Database=x", "Server=db;User Id=app;Password=***;Database=x"),
        ("docker login --password hunter2 --username bob", "docker login --password *** --username bob"),
        ("curl -u admin:hunter2 https://x", "curl -u admin:*** https://x"),
        ("<password>hunter2</password>", "<password>***</password>"),
        # JSON and YAML forms
        ('{"password": "x\\"y", "user": "bob"}', '{"password": "***", "user": "bob"}'),
        ("{'password': 'x', 'user': 'bob'}", "{'password': '***', 'user': 'bob'}"),
        ('{"api_key":"abc","n":1}', '{"api_key":"***","n":1}'),
        ('password="unclosed quote', 'password="*** quote'),
        ("  password: my secret phrase", "  password: ***"),
        ("secret_key_base: 0123abc", "secret_key_base: ***"),
        ("  token: 'abc'", "  token: '***'"),
        # HTTP authorization
        ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***"),
        ("authorization: Basic dXNlcjpwYXNz", "authorization: Basic ***"),
        ("-H 'Authorization: token 12345678'", "-H 'Authorization: token ***'"),
        ('{"Authorization": "Bearer abcdefgh"}', '{"Authorization": "Bearer ***"}'),
        ("sent Bearer abcdefgh12345678", "sent Bearer ***"),
        ("sent Basic dXNlcjpwYXNz to the proxy", "sent Basic *** to the proxy"),
        # tokens by shape
        ("key AKIAIOSFODNN7EXAMPLE used", "key *** used"),
        ("temp ASIAIOSFODNN7EXAMPLE", "temp ***"),
        ("PRIVATE-TOKEN: glpat-abcdefghij1234567890", "PRIVATE-TOKEN: ***"),
        ("glpat-xxxxxxxxxxxxxxxxxxxx leaked", "*** leaked"),
        ("runner token glrt-t3_abcdefghijklmnopqrst", "runner token ***"),
        ("registration GR1348941abcdefghijklmnopqrst", "registration ***"),
        ("https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage",
         "https://api.telegram.org/bot***/sendMessage"),
        ("TG 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw ok", "TG *** ok"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc_DEF-123 end", "jwt *** end"),
    ],
)
def test_masks(text, expected):
    assert R.redact(text) == expected


def test_overlong_quoted_value_is_still_masked():
    assert "tttt" not in R.redact('{"token": "' + "t" * 5000 + '"}')


PEM_BODY = "MIIEowIBAAKCAQEA1234567890abcdef\nabcdefABCDEF0123456789+/ABCDEFGH\nZm9v==\n"


@pytest.mark.parametrize("kind", ["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY",
                                  "ENCRYPTED PRIVATE KEY", "PGP PRIVATE KEY BLOCK"])
def test_private_key_blocks(kind):
    text = f"before\n-----BEGIN {kind}-----\n{PEM_BODY}-----END {kind}-----\nafter"
    assert R.redact(text) == f"before\n-----BEGIN {kind}-----\n***\n-----END {kind}-----\nafter"


def test_private_key_block_with_headers_and_json_escapes():
    text = ("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0A1B\n\n"
            f"{PEM_BODY}-----END RSA PRIVATE KEY-----")
    assert "MIIE" not in R.redact(text) and "DEK-Info" not in R.redact(text)
    key_file = '{"id": "aje1", "pk": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0B\\n-----END PRIVATE KEY-----\\n"}'
    assert "MIIE" not in R.redact(key_file)


def test_unterminated_and_cut_private_keys():
    # a log cut after the key started: the base64 lines go, the next real log line stays
    cut_end = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}Done\nnext step"
    assert R.redact(cut_end) == "-----BEGIN PRIVATE KEY-----\n***\nDone\nnext step"
    # a log tail that starts inside the key: the lines above the END marker go
    cut_start = f"Ready\n{PEM_BODY}-----END PRIVATE KEY-----\nafter"
    assert R.redact(cut_start) == "Ready\n***\n-----END PRIVATE KEY-----\nafter"


@pytest.mark.parametrize(
    "text",
    [
        "the password reset page is at /reset",
        "Please enter your password",
        "passwords must be 12 characters long",
        "token refresh scheduled for 10:00",
        "secret sauce, api key rotation, access key audit",
        "Basic configuration done",
        "basic training page",
        "Bearer of bad news",
        "the bearer password",
        "Applying app.0042_add_index... OK",
        "django.db.utils.OperationalError: could not connect to server: Connection refused",
        "https://gitlab.example.com:8443/group/app/-/jobs/42",
        "ssh://git@gitlab.example.com:22/group/app.git",
        "Receiving objects: 100% (10/10), done.",
        "time=2024-05-01T10:00:00Z level=info msg=started",
        "pod pre-migrate-db-7f9c exited with code 1",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ user@host",
        "",
    ],
)
def test_ordinary_text_stays_readable(text):
    assert R.redact(text) == text


def test_user_patterns_whole_match_or_group_one():
    r = Redactor([r"(?i)internal-[a-z0-9]{8}", r"sessionid=(\w+)"])
    out = r.redact("id internal-ABCD1234 cookie sessionid=deadbeef; path=/")
    assert out == "id *** cookie sessionid=***; path=/"


def test_user_pattern_found_across_window_boundaries():
    r = Redactor([r"internal-([a-z0-9]{8})"])
    for offset in range(USER_PATTERN_WINDOW - 30, USER_PATTERN_WINDOW + 30, 3):
        line = "x" * offset + " internal-abcdefgh " + "y" * (2 * USER_PATTERN_WINDOW)
        assert "abcdefgh" not in r.redact(line), offset


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [("[", "not a valid regular expression"), ("(a+)+$", "nests an unbounded repeat"),
     (r"(\w+\s?)*x", "nests an unbounded repeat"), ("x*", "matches the empty string"),
     ("(a)?", "matches the empty string")],
)
def test_bad_user_patterns_are_refused_with_a_reason(pattern, reason):
    with pytest.raises(ValueError, match=reason):
        Redactor([pattern])
    with pytest.raises(ValueError, match=reason):
        validate_pattern(pattern)


def test_accepts_compiled_patterns():
    import re

    assert Redactor([re.compile(r"abc\d+")]).redact("id abc123") == "id ***"


N = 1_000_000
PATHOLOGICAL = {
    "letters": "a" * N,
    "spaces": " " * N,
    "newlines": "\n" * N,
    "password=": "password=" * (N // 9),
    "keywords": "passwordtokensecret" * (N // 19),
    "open quote": 'password: "' * (N // 11),
    "backslashes": 'password="' + "\\\\" * (N // 2),
    "jwt prefixes": "eyJ" * (N // 3),
    "jwt parts": "eyJa." * (N // 5),
    "pem begins": "-----BEGIN RSA PRIVATE KEY-----\n" * (N // 32),
    "pem begins, one line": "-----BEGIN RSA PRIVATE KEY-----" * (N // 31),
    "pem ends": "-----END PRIVATE KEY-----\n" * (N // 26),
    "url prefixes": "postgres://a:" * (N // 13),
    "url no host": "x://u:" + "@" * N,
    "url long password": "x://u:" + "b" * N + "@h",
    "url slashes": "a://b:c/" * (N // 8),
    "url slash password": "x://u:" + "b/" * (N // 2) + "@h",
    "bearer": "Bearer " * (N // 7),
    "basic": "Basic QUFBQUFB" * (N // 14),
    "akia": "AKIA" * (N // 4),
    "telegram": "123456789:AA" * (N // 12),
    "xml": "<password>" * (N // 10),
    "cli": "--password " * (N // 11),
    "curl": "-u a:" * (N // 5),
    "authorization": "Authorization: " * (N // 15),
    "mixed log": ('token=abc password: x "secret": "y" Bearer abcdefghi eyJa.b.c postgres://u:p@h\n') * (N // 80),
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_one_megabyte_of_hostile_text_in_bounded_time(name):
    text = PATHOLOGICAL[name]
    started = time.perf_counter()
    R.redact(text)
    # ~0.25 s here; a quadratic pattern would take minutes.
    assert time.perf_counter() - started < 5


def test_slow_user_pattern_is_bounded_by_windows():
    r = Redactor([r".*secret"])  # quadratic on one long line without windows
    started = time.perf_counter()
    r.redact("a" * N)
    assert time.perf_counter() - started < 10


_WORDS = st.sampled_from(["the", "password", "token", "secret", "reset", "page", "basic", "api", "key", "access",
                          "migration", "failed", "job", "runner", "pwd", "bearer", "of", "Applying", "done"])
_PUNCT = st.sampled_from([" ", " ", " ", ". ", ", ", "\n", " - "])
_SECRET = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%^*()_+-./",
                  min_size=8, max_size=40)


@st.composite
def prose(draw):
    words = draw(st.lists(_WORDS, max_size=30))
    return "".join(w + draw(_PUNCT) for w in words)


@settings(max_examples=200, deadline=None)
@given(prose())
def test_prose_without_assignments_is_unchanged(text):
    assert R.redact(text) == text


@settings(max_examples=200, deadline=None)
@given(prose(), _SECRET, prose(), st.sampled_from(["password={}", "TOKEN: '{}'", '"api_key": "{}"',
                                                    "postgres://app:{}@db/app", "Authorization: Bearer {}"]))
def test_secret_never_survives(before, secret, after, form):
    text = f"{before}\n{form.format(secret)}\n{after}"
    line = R.redact(text).split("\n")[before.count("\n") + 1]
    assert secret not in line and MASK in line


@settings(max_examples=50, deadline=2000)
@given(st.lists(st.sampled_from(["password=", "eyJ", ".", "://", ":", "@", "-----BEGIN PRIVATE KEY-----", "\n",
                                 "-----END PRIVATE KEY-----", "Bearer ", "Basic ", '"', "\\", "AKIA", "glpat-", "a" * 50,
                                 "QUFB", "<password>", "--token "]), max_size=2000))
def test_random_hostile_mixtures_are_fast(parts):
    R.redact("".join(parts) * 20)


def test_basic_credentials_in_a_log_line():
    cred = base64.b64encode(b"deploy:S3cr3t").decode()
    assert cred not in R.redact(f"GET / with header Basic {cred}")
