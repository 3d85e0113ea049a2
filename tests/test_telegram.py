"""gitlab_hook.telegram through the real python-telegram-bot against the fake Bot API server."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from telegram import Bot

from gitlab_hook.telegram import (
    MAX_CAPTION,
    DryRunNotifier,
    Notifier,
    TelegramFormatError,
    TelegramNotifier,
    TelegramRetryAfterError,
    TelegramSendError,
    build_notifier,
    code,
    escape,
    link,
    pre,
    split_message,
    to_plain,
)
from tests.fakes.telegram_api import FakeBotAPI, parse_telegram_html, utf16_len

TOKEN = "987654321:AAHsecretTOKENvalue_for-tests-xyz"
CHAT = -1001234567890
THREAD = 42

# PTB's own RetryAfter.__init__ reads its deprecated int attribute; nothing we can change.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*attribute `retry_after`.*:telegram.warnings.PTBDeprecationWarning"
)


@pytest.fixture
def api():
    with FakeBotAPI(TOKEN) as fake:
        yield fake


@pytest.fixture
def notifier(api):
    n = TelegramNotifier(
        token=TOKEN, chat_id=CHAT, thread_id=THREAD, api_url=api.url,
        timeout=2.0, max_retry_after=5.0, backoff=0.01,
    )
    yield n
    n.close()


def _assert_no_token(text: str) -> None:
    assert TOKEN not in text
    assert TOKEN.split(":")[1] not in text


# -- plain sending -----------------------------------------------------------------------------


def test_send_html_arrives_with_html_parse_mode_in_the_topic(api, notifier):
    ids = notifier.send_html("<b>Deploy</b> of <code>stage</code> started")
    notifier.send_html("second")

    first, second = api.messages(CHAT)
    assert ids == [first.message_id]
    assert second.message_id == first.message_id + 1
    assert first.parse_mode == "HTML"
    assert first.thread_id == THREAD
    assert first.text == "Deploy of stage started"
    assert [e["type"] for e in first.entities] == ["bold", "code"]
    assert first.params["link_preview_options"] == {"is_disabled": True}
    assert len(api.calls_of("getMe")) == 1  # initialised once, not per call


def test_explicit_chat_does_not_inherit_the_default_topic(api, notifier):
    notifier.send_html("private", chat_id=555000111)
    notifier.send_html("other topic", thread_id=7)

    private, topic = api.messages()
    assert (private.chat_id, private.thread_id) == (555000111, None)
    assert (topic.chat_id, topic.thread_id) == (CHAT, 7)


def test_escaped_text_round_trips_to_the_original_characters(api, notifier):
    nasty = "<script>alert('x')</script> & a&b <3 &amp; > done"
    url = "https://gitlab.example/group/app/-/jobs/1?a=1&b=<2>"
    notifier.send_html(
        f"{escape(nasty)}\n{code(nasty)}\n{pre(nasty)}\n{pre(nasty, 'sql')}\n{link(url, nasty)}"
    )

    (msg,) = api.messages()
    assert msg.text == "\n".join([nasty] * 5)
    assert {"type": "text_link", "url": url} .items() <= next(
        e for e in msg.entities if e["type"] == "text_link"
    ).items()
    assert any(e.get("language") == "sql" for e in msg.entities)
    assert to_plain(msg.raw_text) == msg.text


def test_send_plain_sends_without_parse_mode(api, notifier):
    notifier.send_plain("a < b && <b>not bold</b>")

    (msg,) = api.messages()
    assert "parse_mode" not in msg.params
    assert msg.text == "a < b && <b>not bold</b>"
    assert msg.thread_id == THREAD


# -- long text ---------------------------------------------------------------------------------


def test_long_pre_block_is_split_into_valid_parts_in_order(api, notifier):
    body = "\n".join(f"{i:05d} SELECT * FROM t WHERE a < b && c > 'd';{'x' * 5}" for i in range(200))
    assert len(body) > 10_000
    ids = notifier.send_html("<b>Migration log</b>\n" + pre(body))

    msgs = api.messages()
    assert len(ids) == len(msgs) == 3
    assert ids == sorted(ids)
    for i, msg in enumerate(msgs):
        plain, entities = parse_telegram_html(msg.raw_text)  # valid Telegram HTML
        assert utf16_len(plain) <= 4096
        assert any(e["type"] == "pre" for e in entities)
        assert msg.thread_id == THREAD
        if i > 0:
            assert msg.raw_text.startswith("<pre>")  # reopened
        if i < len(msgs) - 1:
            assert msg.raw_text.endswith("</pre>")  # closed at the cut
    # Cuts fall on line ends, and the newline at each cut is the only thing left out.
    assert "\n".join(m.text for m in msgs) == "Migration log\n" + body


def test_too_many_parts_send_a_head_and_the_whole_text_as_a_file(api, notifier):
    body = "\n".join(f"line {i} &lt;ok&gt; " + "y" * 60 for i in range(400))  # ~30k chars
    text = "<b>Huge</b>\n<pre>" + body + "</pre>"
    ids = notifier.send_html(text)

    (head,) = api.messages()
    (doc,) = api.documents()
    assert ids == [head.message_id, doc.message_id]
    assert utf16_len(head.text) <= 4096
    assert head.text.startswith("Huge\nline 0 <ok> ")
    assert "message.txt" in head.text
    assert doc.document.filename == "message.txt"
    assert doc.document.data.decode() == to_plain(text)
    assert doc.thread_id == THREAD


def test_split_message_cuts_a_single_overlong_line_safely():
    line = "<i>" + "&amp;x😀" * 3000 + "</i>"  # 12k UTF-16 units, one line
    parts = split_message(line)

    assert len(parts) == 3
    plains = [parse_telegram_html(p)[0] for p in parts]
    assert all(utf16_len(p) <= 4096 for p in plains)
    assert all(p.startswith("<i>") and p.endswith("</i>") for p in parts)
    assert "".join(plains) == "&x😀" * 3000


def test_split_message_reopens_tags_with_their_attributes():
    opening = '<a href="https://e.x/?q=1&amp;r=2">'
    parts = split_message(opening + "\n".join(["word"] * 30) + "</a>", 40)

    assert len(parts) > 3
    for part in parts:
        assert part.startswith(opening) and part.endswith("</a>")
        _, entities = parse_telegram_html(part)
        assert entities[0]["url"] == "https://e.x/?q=1&r=2"


_leaf = st.one_of(
    st.text(alphabet="ab <&>😀\n", min_size=1, max_size=30).map(escape),
    st.sampled_from(["\n", "&amp;", "&#128512;", "&lt;", "&#x41;"]),
)
_TAGS = ["b", "i", "pre", "code", "tg-spoiler", 'a href="https://e.x/?q=1&amp;r=2"']


def _wrap(children):
    return st.tuples(st.sampled_from(_TAGS), st.lists(children, max_size=5)).map(
        lambda t: f"<{t[0]}>{''.join(t[1])}</{t[0].split()[0]}>"
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(st.recursive(_leaf, _wrap, max_leaves=40), max_size=20).map("".join))
def test_every_split_part_is_valid_and_nothing_visible_is_lost(text):
    parts = split_message(text, 40)

    plains = []
    for part in parts:
        plain, _ = parse_telegram_html(part)  # raises on invalid HTML
        assert utf16_len(plain) <= 40
        assert plain.strip()  # Telegram rejects an empty text
        plains.append(plain)
    original, _ = parse_telegram_html(text)
    assert re.sub(r"\s", "", "".join(plains)) == re.sub(r"\s", "", original)


# -- documents ---------------------------------------------------------------------------------


def test_send_document_carries_thread_id_bytes_and_html_caption(api, notifier):
    data = bytes(range(256)) * 8 + b"\r\n--boundary\r\n\r\n"
    msg_id = notifier.send_document(
        "pre-migrate-db.log", data, caption_html="<b>Log</b> of <code>pre-migrate-db-1</code>"
    )

    (doc,) = api.documents(CHAT)
    assert doc.message_id == msg_id
    assert doc.document.data == data
    assert doc.document.filename == "pre-migrate-db.log"
    assert doc.json["document"]["file_size"] == len(data)
    assert doc.thread_id == THREAD
    assert doc.params["parse_mode"] == "HTML"
    assert doc.caption == "Log of pre-migrate-db-1"


def test_long_caption_is_cut_to_the_caption_limit(api, notifier):
    notifier.send_document("a.txt", b"x", caption_html="<b>" + escape("<&>" * 1000) + "</b>")

    (doc,) = api.documents()
    assert utf16_len(doc.caption) == MAX_CAPTION
    assert doc.caption.endswith("…")
    parse_telegram_html(doc.raw_caption)


# -- failures and retries ----------------------------------------------------------------------


def test_429_retry_after_is_honoured_and_nothing_is_lost_or_doubled(api, notifier):
    notifier.send_html("warm-up")  # getMe done, so the timing below is only sendMessage
    api.inject_429("sendMessage", retry_after=1)
    ids = notifier.send_html("after flood")

    first, retry = api.calls_of("sendMessage")[1:]
    assert first.status == 429 and retry.status == 200
    assert retry.at - first.at >= 1.0
    assert [m.text for m in api.messages()] == ["warm-up", "after flood"]
    assert ids == [api.messages()[1].message_id]


def test_429_beyond_max_retry_after_raises_at_once(api, notifier):
    api.inject_429("sendMessage", retry_after=30)
    started = time.monotonic()
    with pytest.raises(TelegramRetryAfterError) as err:
        notifier.send_html("x")

    assert time.monotonic() - started < 2
    assert err.value.retry_after == 30
    assert err.value.retryable
    assert api.messages() == []


def test_persistent_5xx_raises_send_error_without_the_token(api, notifier):
    api.inject_error("sendMessage", 500, f"Internal Server Error at /bot{TOKEN}/sendMessage", times=10)
    with pytest.raises(TelegramSendError) as err:
        notifier.send_html("x")

    text = str(err.value)
    assert "sendMessage" in text and "Internal Server Error" in text
    _assert_no_token(text)
    _assert_no_token("".join(traceback.format_exception(err.value)))
    assert err.value.retryable
    assert len(api.calls_of("sendMessage")) == 4  # first try + 3 retries
    assert api.messages() == []


def test_transient_5xx_is_retried_and_sent_once(api, notifier):
    api.inject_error("sendMessage", 502, "Bad Gateway", times=2)
    ids = notifier.send_html("eventually")

    assert [c.status for c in api.calls_of("sendMessage")] == [502, 502, 200]
    assert [m.message_id for m in api.messages()] == ids


def test_read_timeout_is_retried(api):
    with TelegramNotifier(token=TOKEN, chat_id=CHAT, api_url=api.url, timeout=0.3, backoff=0.01) as n:
        n.probe()
        api.inject_delay("sendMessage", 1.0)
        ids = n.send_html("slow server")

    assert len(ids) == 1
    assert len(api.calls_of("sendMessage")) >= 2
    # The timed-out attempt may still land later: at least once, possibly twice, never zero.
    assert ids[0] in [m.message_id for m in api.messages()]


def test_unreachable_api_raises_a_retryable_error_without_the_token():
    with FakeBotAPI(TOKEN) as gone:
        url = gone.url  # a port that nobody listens on once stopped
    with TelegramNotifier(token=TOKEN, chat_id=CHAT, api_url=url, timeout=0.5, backoff=0.01) as n:
        with pytest.raises(TelegramSendError) as err:
            n.send_html("x")

    assert err.value.method == "getMe" and err.value.retryable
    _assert_no_token(str(err.value))


def test_wrong_token_is_a_permanent_error_that_does_not_leak(api):
    wrong = "111222333:WRONGtokenWRONGtokenWRONGtoken"
    with TelegramNotifier(token=wrong, chat_id=CHAT, api_url=api.url, backoff=0.01) as n:
        with pytest.raises(TelegramSendError) as err:
            n.send_html("x")

    assert api.calls[0].status == 401
    assert api.calls[0].response == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    assert not err.value.retryable
    assert "WRONGtoken" not in str(err.value)


def test_cant_parse_entities_raises_format_error_and_plain_fallback_works(api, notifier):
    bad = "a < b & c <unknown>tag</unknown>"
    with pytest.raises(TelegramFormatError) as err:
        notifier.send_html(bad)

    assert isinstance(err.value, TelegramSendError)
    assert "can't parse entities" in str(err.value).lower()
    assert not err.value.retryable
    assert len(api.calls_of("sendMessage")) == 1  # a 400 is not retried
    notifier.send_plain(bad)
    assert [m.text for m in api.messages()] == [bad]


def test_migrated_group_is_followed(api, notifier):
    api.inject_error(
        "sendMessage", 400, "Bad Request: group chat was upgraded to a supergroup chat",
        parameters={"migrate_to_chat_id": -100999},
    )
    notifier.send_html("one")
    notifier.send_html("two")

    assert [m.text for m in api.messages(-100999)] == ["one", "two"]
    assert len(api.calls_of("sendMessage")) == 3


def test_edit_html_replaces_text_and_tolerates_no_change(api, notifier):
    (msg_id,) = notifier.send_html("<b>Starting</b> buildfront")
    notifier.edit_html(CHAT, msg_id, "<b>Running</b> buildfront")
    notifier.edit_html(CHAT, msg_id, "<b>Running</b> buildfront")  # "not modified" is fine

    (msg,) = api.messages()
    assert msg.text == "Running buildfront"
    assert api.calls_of("editMessageText")[-1].status == 400
    with pytest.raises(TelegramSendError, match="(?i)message to edit not found"):
        notifier.edit_html(CHAT, 9999, "x")


def test_concurrent_sends_from_8_threads_all_arrive(api, notifier):
    def work(worker: int) -> list[int]:
        return [i for n in range(5) for i in notifier.send_html(f"worker {worker} msg {n}")]

    with ThreadPoolExecutor(8) as pool:
        ids = [i for chunk in pool.map(work, range(8)) for i in chunk]

    texts = sorted(m.text for m in api.messages())
    assert texts == sorted(f"worker {w} msg {n}" for w in range(8) for n in range(5))
    assert sorted(ids) == sorted(m.message_id for m in api.messages())
    assert len(set(ids)) == 40


def test_closed_notifier_refuses_to_send(api):
    n = TelegramNotifier(token=TOKEN, chat_id=CHAT, api_url=api.url)
    n.close()
    n.close()  # idempotent
    with pytest.raises(TelegramSendError, match="closed"):
        n.send_html("x")
    assert api.calls == []


# -- logging and dry run -----------------------------------------------------------------------


def test_library_logs_never_show_the_token(api, notifier, caplog):
    caplog.set_level(logging.DEBUG)
    notifier.send_html("hello")

    http_logs = [r for r in caplog.records if r.name == "httpx"]
    assert http_logs, "httpx logs each request at INFO"
    assert "/bot<token>/sendMessage" in http_logs[-1].getMessage()
    for record in caplog.records:
        _assert_no_token(record.getMessage())


def test_dry_run_logs_what_would_be_sent_and_makes_no_http_call(api, caplog):
    caplog.set_level(logging.INFO, logger="gitlab_hook.telegram")
    dry = build_notifier(token=None, chat_id=CHAT, thread_id=THREAD, api_url=api.url)
    assert isinstance(dry, DryRunNotifier)

    ids = dry.send_html("<b>Runner</b> started " + "z" * 500)
    doc_id = dry.send_document("log.txt", b"abc", caption_html="caption")
    dry.edit_html(CHAT, ids[0], "edited")

    assert ids == [1] and doc_id == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "gitlab_hook.telegram"]
    assert len(messages) == 3
    assert f"chat {CHAT} thread {THREAD}" in messages[0]
    assert "<b>Runner</b> started zzz" in messages[0]
    assert "z" * 200 not in messages[0]  # only the first 200 characters
    assert "log.txt" in messages[1] and "3 bytes" in messages[1]
    assert api.calls == []


def test_both_notifiers_satisfy_the_protocol(api, notifier):
    assert isinstance(notifier, Notifier)
    assert isinstance(DryRunNotifier(), Notifier)
    assert notifier.probe() == "@fake_bot"


# -- the fake itself (used by other test modules) ----------------------------------------------


def test_fake_serves_updates_with_offset_and_long_poll(api):
    first = api.push_update({"message": {"message_id": 1, "date": 0, "chat": {"id": 1, "type": "private"}, "text": "/vms"}})

    async def poll() -> tuple[list[int], list[int], float]:
        async with Bot(TOKEN, base_url=api.url + "/bot") as bot:
            got = await bot.get_updates(offset=0, timeout=1)
            threading.Timer(0.2, api.push_update, args=({"update_id": first + 1},)).start()
            started = time.monotonic()
            later = await bot.get_updates(offset=first + 1, timeout=1)
            return [u.update_id for u in got], [u.update_id for u in later], time.monotonic() - started

    got, later, waited = asyncio.run(poll())
    assert got == [first]
    assert later == [first + 1]  # the long poll woke up for the new update
    assert 0.1 < waited < 0.9


def test_fake_speaks_json_and_form_and_validates_like_telegram(api):
    base = f"{api.url}/bot{TOKEN}"
    ok = requests.post(f"{base}/sendMessage", json={"chat_id": 5, "text": "<i>x</i>", "parse_mode": "HTML"}, timeout=5)
    form = requests.post(f"{base}/sendMessage", data={"chat_id": "5", "text": "123"}, timeout=5)
    too_long = requests.post(f"{base}/sendMessage", json={"chat_id": 5, "text": "a" * 4097}, timeout=5)
    commands = requests.post(
        f"{base}/setMyCommands", json={"commands": [{"command": "vm_start", "description": "Start a VM"}]}, timeout=5
    )
    bad_command = requests.post(
        f"{base}/setMyCommands", json={"commands": [{"command": "Start-VM", "description": "x"}]}, timeout=5
    )
    unknown = requests.post(f"{base}/noSuchMethod", json={}, timeout=5)

    assert ok.json()["result"]["text"] == "x"
    assert form.json()["result"]["text"] == "123"  # text stays a string
    assert form.json()["result"]["chat"]["id"] == 5
    assert (too_long.status_code, too_long.json()["description"]) == (400, "Bad Request: message is too long")
    assert commands.json() == {"ok": True, "result": True}
    assert requests.get(f"{base}/getMyCommands", timeout=5).json()["result"][0]["command"] == "vm_start"
    assert bad_command.status_code == 400
    assert unknown.status_code == 404
