"""The real PTB Application against the fake Bot API: updates through getUpdates, replies and edits recorded.

Every command and alias, each role and refusal, the confirmation flow (confirm, cancel, expired,
someone else's button), bad arguments, an integration failing mid-command, and the webhook
transport with its secret token.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from typing import Any, Callable

import pytest
import requests

from bot import dispatch
from bot.app import WebhookConfig, create_bot, running
from bot.audit import AuditLog
from bot.services import ChatOpsServices
from gitlab_hook.gitlab_api import GitLabAPI
from gitlab_hook.intake import IntakeStore
from gitlab_hook.kube import PodLogs, load_api_client
from gitlab_hook.ledger import Ledger
from gitlab_hook.taskqueue import TaskQueue, make_huey
from gitlab_hook.vm_state import VmState
from tests.conftest import BOT_TOKEN, CHAT_ID, THREAD_ID
from tests.fakes.kube_api import terminated
from tests.fakes.telegram_api import FakeBotAPI, UploadedFile
from tests.processes import free_port

ALICE = {"id": 111, "is_bot": False, "first_name": "Alice", "username": "alice"}  # operator
VIC = {"id": 222, "is_bot": False, "first_name": "Vic", "username": "vic"}  # viewer
ADA = {"id": 333, "is_bot": False, "first_name": "Ada", "username": "ada"}  # admin
BOB = {"id": 444, "is_bot": False, "first_name": "Bob", "username": "bob"}  # operator too
STRANGER = {"id": 999, "is_bot": False, "first_name": "Eve"}  # no username, no role
ANON = {"id": 1087968824, "is_bot": True, "first_name": "Group", "username": "GroupAnonymousBot"}
OTHER_GROUP = -100555

RULES: dict[str, Any] = {
    "runners": [{"vm": "buildfront", "branches": ["stage"], "projects": ["group/app"], "gitlab_runner_ids": [12],
                 "idle_stop_after": "30m", "timezone": "Europe/Moscow"}],
    "price_per_hour": {"buildfront": 4.5},
    "vms": {"name_regex": "^build"},
    "migrations": {"namespaces": {"stage": "work"}, "default_namespace": "work", "tail_lines": 100,
                   "redact_patterns": [r"password=(\S+)"]},
    "telegram": {"users": {111: "operator", 222: "viewer", 333: "admin", 444: "operator"}},
}


class PhotoBotAPI(FakeBotAPI):
    """The shared fake plus sendPhoto (the report chart): the upload is recorded like a document."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.photos: list[tuple[Any, UploadedFile, str | None]] = []
        self._handlers["sendphoto"] = self._send_photo

    def _send_photo(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        upload = files.get("photo")
        ref = params.get("photo")
        if upload is None and isinstance(ref, str) and ref.startswith("attach://"):
            upload = files.get(ref[len("attach://"):])
        if upload is None:
            from tests.fakes.telegram_api import ApiError

            raise ApiError(400, "Bad Request: there is no photo in the request")
        msg = self._send_document({**params, "document": "attach://photo"}, {"photo": upload})
        self.photos.append((params.get("chat_id"), upload, params.get("caption")))
        return msg


class Harness:
    """The bot's Application running in its own event loop thread, as in production (long polling)."""

    def __init__(self, app, webhook: WebhookConfig | None = None):
        self.app, self.webhook = app, webhook
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="bot-loop")

    def __enter__(self) -> "Harness":
        self.thread.start()
        self.cm = running(self.app, webhook=self.webhook, poll_timeout=1)
        asyncio.run_coroutine_threadsafe(self.cm.__aenter__(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.cm.__aexit__(None, None, None), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Chat:
    """Talks to the bot as Telegram would: pushes updates, reads what the bot sent."""

    _ids = itertools.count(1000)

    def __init__(self, api: PhotoBotAPI):
        self.api = api

    @staticmethod
    def private(user: dict[str, Any]) -> dict[str, Any]:
        return {"id": user["id"], "type": "private", "first_name": user["first_name"]}

    @staticmethod
    def group(chat_id: int = CHAT_ID) -> dict[str, Any]:
        return {"id": chat_id, "type": "supergroup", "title": "Team", "is_forum": True}

    def send(self, text: str, user: dict[str, Any] = ALICE, chat: dict[str, Any] | None = None,
             date: float | None = None, thread: int | None = None, sender_chat: dict | None = None,
             edited: bool = False) -> dict[str, Any]:
        chat = chat or self.private(user)
        msg: dict[str, Any] = {"message_id": next(self._ids), "date": int(date or time.time()), "chat": chat,
                               "from": user, "text": text}
        if text.startswith("/"):
            msg["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        if thread is not None:
            msg["message_thread_id"], msg["is_topic_message"] = thread, True
        if sender_chat is not None:
            msg["sender_chat"] = sender_chat
        self.api.push_update({"edited_message" if edited else "message": msg})
        return msg

    def ask(self, text: str, user: dict[str, Any] = ALICE, chat: dict[str, Any] | None = None, n: int = 1,
            **kw: Any) -> list[Any]:
        """Send and wait for n new messages in that chat; returns them."""
        chat_id = (chat or self.private(user))["id"]
        before = len(self.api.messages(chat_id))
        self.send(text, user, chat, **kw)
        wait_for(lambda: len(self.api.messages(chat_id)) >= before + n, what=f"an answer to {text!r}")
        time.sleep(0.05)
        return self.api.messages(chat_id)[before:]

    def answer(self, text: str, user: dict[str, Any] = ALICE, chat: dict[str, Any] | None = None, **kw: Any) -> str:
        return "\n".join(m.text for m in self.ask(text, user, chat, **kw))

    def tap(self, prompt: Any, button: int, user: dict[str, Any] = ALICE) -> Any:
        """Press a button of a message the bot sent (0 = Confirm, 1 = Cancel); returns the callback answer."""
        data = prompt.json["reply_markup"]["inline_keyboard"][0][button]["callback_data"]
        qid = f"cq{next(self._ids)}"
        self.api.push_update({"callback_query": {"id": qid, "from": user, "chat_instance": "ci", "data": data,
                                                 "message": prompt.json}})
        return wait_for(lambda: next((c for c in self.api.calls_of("answerCallbackQuery")
                                      if c.params.get("callback_query_id") == qid), None), what="callback answer")

    def current(self, msg: Any) -> Any:
        return next(m for m in self.api.messages(msg.chat_id) if m.message_id == msg.message_id)


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
def bot_api():
    with PhotoBotAPI(BOT_TOKEN) as api:
        yield api


@pytest.fixture
def vms(compute_api):
    return {"buildfront": compute_api.add_instance("buildfront", "RUNNING", cores=2, memory_gb=4),
            "buildback": compute_api.add_instance("buildback", "STOPPED", cores=4, memory_gb=8, core_fraction=50,
                                                  preemptible=True),
            "prod-db": compute_api.add_instance("prod-db", "RUNNING")}


@pytest.fixture
def env(make_settings, bot_api):
    return make_settings(RULES, TELEGRAM_BOT_TOKEN=BOT_TOKEN, TELEGRAM_CHAT_ID=str(CHAT_ID),
                         TELEGRAM_THREAD_ID=str(THREAD_ID), TELEGRAM_API_URL=bot_api.url)


@pytest.fixture
def services(env, compute_client, gitlab, kube, vms):
    db = env.data_dir / "intake.db"
    api = GitLabAPI(gitlab.url, gitlab.token, timeout=3, retries=0)
    pods = PodLogs(load_api_client(kubeconfig=None, api_url=kube.url, token=kube.token, ca_file=None,
                                   request_timeout=3))
    return ChatOpsServices(env.rules, compute=lambda: compute_client, gitlab=lambda: api, pods=lambda: pods,
                           store=IntakeStore(db), queue=TaskQueue(make_huey(env)), state=VmState(db), ledger=Ledger(db))


@pytest.fixture
def make_bot(env, services):
    running_bots: list[Harness] = []

    def start(**kw: Any) -> Harness:
        h = Harness(create_bot(env, services, **kw))
        running_bots.append(h.__enter__())
        return h

    yield start
    for h in running_bots:
        h.__exit__(None, None, None)


@pytest.fixture
def bot(make_bot):
    return make_bot()


@pytest.fixture
def chat(bot_api, bot):
    return Chat(bot_api)


def outbox(env) -> list[Any]:
    return IntakeStore(env.data_dir / "intake.db").rows()


def refusals(reason: str) -> float:
    return dispatch.REGISTRY.get_sample_value("gitlab_hook_bot_refusals_total", {"reason": reason}) or 0.0


# --- start-up ------------------------------------------------------------------------------------------


def test_start_publishes_the_command_menu_and_polls(bot_api, bot):
    wait_for(lambda: bot_api.calls_of("getUpdates"), what="polling")
    names = [c["command"] for c in bot_api.commands]
    assert names == ["help", "vms", "vm_status", "vm_start", "vm_stop", "vm_upgrade", "vm_keep", "runner_report",
                     "migration_logs", "protect_branch", "unprotect_branch", "whoami"]
    assert bot_api.calls_of("getMe") and bot_api.calls_of("deleteWebhook")


# --- every command and alias -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, user, expected", [
    ("/help", VIC, "You are viewer."),
    ("man", VIC, "/vm_upgrade NAME CORES MEM_GB [FRACTION]"),
    ("helps", VIC, "/migration_logs NAMESPACE"),
    ("/man", VIC, "gitlab-hook ChatOps"),
    ("/start", STRANGER, "Your Telegram id is 999"),  # a new user opening the chat with the bot
    ("/help vm_stop", VIC, "Also: /stop_vm --name_vm NAME"),
    ("/vms", VIC, "buildfront RUNNING · 2 cores · 4 GB · 100% CPU · preemptible: no · on for: unknown"),
    ("/list_build_vm", VIC, "buildback STOPPED · 4 cores · 8 GB · 50% CPU · preemptible: yes"),
    ("/list build vm", VIC, "Build VMs (2, matching ^build)"),
    ("/vm_status buildfront", VIC, "Runner: branches stage; idle stop after 30m"),
    ("/status_vm --name_vm buildback", VIC, "buildback — STOPPED"),
    ("/vm_keep buildfront 2h", ALICE, "will not be auto-stopped until"),
    ("/runner_report", VIC, "Runner report, last 7 days"),
    ("/runner_report 30", VIC, "last 30 days"),
    ("/migration_logs work", VIC, "no pod matching ^pre-migrate-db-"),
    ("/logs_migrated --namespace work", VIC, "Migration logs · namespace work"),
    ("/protect_branch stage", ALICE, "Protected branch stage of group/app"),
    ("/protected_gitlab --name release", ALICE, "Protected branch release of group/app"),
    ("/unprotect_branch stage group/app", ALICE, "stage of group/app was not protected"),
    ("/unprotect_gitlab --name stage", ALICE, "was not protected"),
    ("/whoami", VIC, "role viewer"),
])
def test_every_command_and_alias_answers(chat, text, user, expected):
    assert expected in chat.answer(text, user)


def test_vms_lists_every_matching_vm_with_uptime_from_the_ledger(chat, services):
    services.ledger.record("buildfront", "on", "push", at=time.time() - 2 * 3600 - 60)
    text = chat.answer("/vms", VIC)
    assert "prod-db" not in text  # outside vms.name_regex
    assert text.index("buildback") < text.index("buildfront")
    assert "on for 2h1m (since" in text and "woken by push" in text


@pytest.mark.parametrize("start, stop", [("/vm_start buildback", "/vm_stop buildfront"),
                                         ("/start_vm --name_vm buildback", "/stop_vm --name_vm buildfront")])
def test_start_and_stop_in_both_forms(chat, bot_api, env, start, stop):
    (progress,) = chat.ask(start)
    assert "Starting buildback (asked by @alice)" in progress.text
    (prompt,) = chat.ask(stop)
    assert prompt.text.startswith("Stop buildfront (RUNNING, 2 cores · 4 GB · 100% CPU)?")
    chat.tap(prompt, 0)
    wait_for(lambda: len(outbox(env)) == 2, what="two queued actions")
    kinds = {r.kind: r.payload for r in outbox(env)}
    assert kinds["vm_start"] == {"vm": "buildback", "by": "@alice",
                                 "progress": {"chat_id": ALICE["id"], "message_id": progress.message_id}}
    assert kinds["vm_stop"]["progress"] == {"chat_id": ALICE["id"], "message_id": prompt.message_id}


@pytest.mark.parametrize("text", ["/vm_upgrade buildfront 4 8 50",
                                  "/upgrade_vm --name_vm buildfront --core 4 --mem 8 --fraction 50"])
def test_upgrade_in_both_forms(chat, env, text):
    (prompt,) = chat.ask(text)
    assert "Resize buildfront from 2 cores · 4 GB · 100% CPU to 4 cores · 8 GB · 50% CPU?" in prompt.text
    assert "it will be stopped, resized and started again" in prompt.text
    chat.tap(prompt, 0)
    wait_for(lambda: outbox(env), what="the resize queued")
    (row,) = outbox(env)
    assert row.kind == "vm_resize"
    assert row.payload == {"vm": "buildfront", "by": "@alice", "cores": 4, "memory_gb": 8.0, "core_fraction": 50,
                           "progress": {"chat_id": ALICE["id"], "message_id": prompt.message_id}}
    assert "Resizing buildfront to 4 cores, 8 GB, 50% CPU (confirmed by @alice)" in chat.current(prompt).text


def test_commands_addressed_to_our_bot_work_in_groups_and_others_are_ignored(chat, bot_api):
    group = Chat.group()
    assert "Build VMs" in chat.answer("/vms@fake_bot", VIC, group)
    chat.send("/vms@other_bot", VIC, group)
    chat.send("/unknowncmd", VIC, group)  # maybe another bot's: not answered in a group
    marker = chat.answer("/whoami@fake_bot", VIC, group)
    assert "role viewer" in marker
    assert all("other_bot" not in (m.text or "") and "Unknown command" not in (m.text or "")
               for m in bot_api.messages(CHAT_ID))


def test_a_command_in_a_forum_topic_is_answered_in_that_topic(chat, bot_api):
    (reply,) = chat.ask("/whoami", VIC, Chat.group(), thread=7)
    assert reply.thread_id == 7


def test_edited_messages_are_not_run_again(chat, bot_api, env):
    chat.send("/vm_start buildback", ALICE, edited=True)
    time.sleep(1.5)
    assert bot_api.messages(ALICE["id"]) == [] and outbox(env) == []


def test_a_state_changing_command_sent_while_the_bot_was_offline_is_not_run(chat, env):
    text = chat.answer("/vm_start buildback", ALICE, date=time.time() - 3600)
    assert "I was offline when you sent this (1h" in text and outbox(env) == []
    assert "Build VMs" in chat.answer("/vms", VIC, date=time.time() - 3600)  # reading is harmless


# --- roles and refusals ---------------------------------------------------------------------------------


def test_a_viewer_may_read_but_not_change(chat, env, caplog):
    before = refusals("role")
    assert "Build VMs" in chat.answer("/vms", VIC)
    assert chat.answer("/vm_start buildback", VIC) == "Sorry, /vm_start needs the operator role; you are viewer."
    assert chat.answer("/stop_vm --name_vm buildfront", VIC).startswith("Sorry, /vm_stop needs the operator role")
    assert outbox(env) == [] and refusals("role") == before + 2
    assert "refused /vm_start from @vic (id 222)" in caplog.text
    rows = AuditLog(env.data_dir / "intake.db").recent()
    assert [(r.command, r.outcome, r.actor) for r in rows[:2]] == [("vm_stop", "refused", "@vic"),
                                                                   ("vm_start", "refused", "@vic")]


def test_an_unknown_user_in_a_private_chat_is_refused_and_told_their_id(chat):
    before = refusals("chat")
    text = chat.answer("/vms", STRANGER)
    assert text == ("Sorry, I only take commands from the team's known users. Your Telegram id is 999: an admin "
                    "can add it under telegram.users.")
    assert refusals("chat") == before + 1
    assert "Telegram id 999, with no role here" in chat.answer("/whoami", STRANGER)


def test_an_unlisted_member_of_the_alerts_chat_gets_help_but_no_commands(chat):
    group = Chat.group()
    assert "You have no role yet" in chat.answer("/help", STRANGER, group)
    assert "has no role here" in chat.answer("/vms", STRANGER, group)


def test_other_groups_are_refused_even_for_admins(chat):
    text = chat.answer("/vms", ADA, Chat.group(OTHER_GROUP))
    assert text == "Sorry, I only take commands in the team's alerts chat or in private chats with known users."
    assert "I do not take commands in this chat" in chat.answer("/whoami", ADA, Chat.group(OTHER_GROUP))


def test_anonymous_admins_and_channels_cannot_be_identified(chat):
    group = Chat.group()
    text = chat.answer("/vms", ANON, group, sender_chat={"id": CHAT_ID, "type": "supergroup", "title": "Team"})
    assert text.startswith("Sorry, I cannot tell who you are")


def test_refused_strangers_learn_nothing_about_arguments(chat):
    assert chat.answer("/vm_upgrade buildfront", STRANGER).startswith("Sorry, I only take commands")


# --- the confirmation flow --------------------------------------------------------------------------------


def test_confirm_queues_the_stop_edits_the_same_message_and_announces_it(chat, bot_api, env):
    (prompt,) = chat.ask("/vm_stop buildfront")
    buttons = prompt.json["reply_markup"]["inline_keyboard"][0]
    assert [b["text"] for b in buttons] == ["✅ Confirm", "✖️ Cancel"]
    assert all(b["callback_data"].startswith("cf:") and len(b["callback_data"].encode()) <= 64 for b in buttons)
    assert "Only @alice can answer; the question expires in 5 min." in prompt.text
    answer = chat.tap(prompt, 0)
    assert answer.params["text"] == "Stopping buildfront…"
    wait_for(lambda: "confirmed by @alice" in (chat.current(prompt).text or ""), what="the prompt edited")
    assert "I will update this message" in chat.current(prompt).text
    (row,) = wait_for(lambda: outbox(env), what="the stop queued")
    assert (row.kind, row.key, row.state) == ("vm_stop", "vm_stop:buildfront", "pending")
    announced = wait_for(lambda: bot_api.messages(CHAT_ID), what="the announcement")
    assert announced[0].text == "⏹ @alice stopped buildfront" and announced[0].thread_id == THREAD_ID
    assert [(r.command, r.outcome) for r in AuditLog(env.data_dir / "intake.db").recent()[:1]] == [
        ("vm_stop", "queued")]
    # A second tap on the same button does nothing more.
    assert chat.tap(prompt, 0).params["text"].startswith("Already answered")
    assert len(outbox(env)) == 1


def test_in_the_alerts_chat_the_prompt_itself_is_the_announcement(chat, bot_api, env):
    group = Chat.group()
    (prompt,) = chat.ask("/vm_stop buildfront", ALICE, group, thread=THREAD_ID)
    chat.tap(prompt, 0)
    wait_for(lambda: outbox(env), what="the stop queued")
    time.sleep(0.3)
    assert [m.message_id for m in bot_api.messages(CHAT_ID)] == [prompt.message_id]


def test_cancel_does_nothing_and_says_so(chat, env):
    (prompt,) = chat.ask("/vm_stop buildfront")
    assert chat.tap(prompt, 1).params["text"] == "Cancelled."
    wait_for(lambda: "✖️ Cancelled by @alice: nothing was done to buildfront." == chat.current(prompt).text,
             what="the prompt edited")
    assert outbox(env) == []
    assert AuditLog(env.data_dir / "intake.db").recent()[0].outcome == "cancelled"


def test_someone_elses_button_is_refused_and_the_asker_can_still_answer(chat, env):
    before = refusals("not_yours")
    (prompt,) = chat.ask("/vm_stop buildfront")
    answer = chat.tap(prompt, 0, user=BOB)
    assert answer.params["text"] == "Only @alice can answer this question." and answer.params["show_alert"] is True
    time.sleep(0.3)
    assert outbox(env) == [] and chat.current(prompt).text == prompt.text
    assert refusals("not_yours") == before + 1
    chat.tap(prompt, 0)
    wait_for(lambda: outbox(env), what="the asker's confirmation")


def test_an_expired_question_cannot_be_confirmed(make_bot, bot_api, env):
    make_bot(confirm_ttl=0.5, sweep_interval=3600)
    chat = Chat(bot_api)
    (prompt,) = chat.ask("/vm_stop buildfront")
    time.sleep(0.7)
    answer = chat.tap(prompt, 0)
    assert answer.params["text"] == "Too late: this question expired."
    wait_for(lambda: chat.current(prompt).text.startswith("⌛ Expired: nothing was done to buildfront. Send "
                                                          "/vm_stop buildfront again"), what="the expiry edit")
    assert outbox(env) == []


def test_unanswered_questions_are_swept_to_expired(make_bot, bot_api, env):
    make_bot(confirm_ttl=0.3, sweep_interval=0.2)
    chat = Chat(bot_api)
    (prompt,) = chat.ask("/vm_upgrade buildfront 4 8")
    wait_for(lambda: chat.current(prompt).text.startswith("⌛ Expired"), what="the sweep")
    assert AuditLog(env.data_dir / "intake.db").recent()[0].outcome == "expired"


def test_a_confirmation_survives_a_bot_restart(make_bot, bot_api, env, bot):
    chat = Chat(bot_api)
    (prompt,) = chat.ask("/vm_stop buildfront")
    bot.__exit__(None, None, None)
    make_bot()  # a new process would read the same SQLite file
    chat.tap(prompt, 0)
    wait_for(lambda: outbox(env), what="the stop queued after the restart")


def test_the_prompt_warns_about_running_jobs(chat, gitlab):
    gitlab.add_job(1, 501, "build-front", "running", runner_id=12, ref="stage")
    gitlab.add_job(1, 502, "lint", "running", runner_id=12, ref="stage")
    (prompt,) = chat.ask("/vm_stop buildfront")
    assert "⚠️ 2 jobs are running on it: #502 lint (group/app stage), #501 build-front (group/app stage)." in prompt.text
    assert 'href="https://gitlab.example.com/group/app/-/jobs/501"' in prompt.raw_text


def test_the_prompt_says_when_running_jobs_cannot_be_checked(chat, gitlab):
    gitlab.fail(503, path="/runners/12/jobs", times=None)
    (prompt,) = chat.ask("/vm_stop buildfront")
    assert "❔ Could not check running jobs: runner 12 jobs: GitLab answered 503" in prompt.text
    assert prompt.json["reply_markup"]  # still asks: the operator decides


def test_nothing_to_confirm_when_already_stopped(chat, env):
    assert chat.answer("/vm_stop buildback") == "buildback is already STOPPED: nothing to do."
    assert chat.answer("/vm_start buildfront") == "buildfront is already RUNNING: nothing to do."
    assert outbox(env) == []


def test_a_second_start_while_one_is_queued_is_not_queued_twice(chat, env):
    first = chat.ask("/vm_start buildback")[0]
    (second,) = chat.ask("/vm_start buildback")
    wait_for(lambda: chat.current(second).text == "ℹ️ A start of buildback is already queued (action #1): nothing "
             "more to do.", what="the coalesced answer")
    assert len(outbox(env)) == 1 and "Starting buildback" in chat.current(first).text


# --- bad arguments and unknown names ----------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("/vm_stop", "NAME is missing.\nUsage: /vm_stop NAME (or /stop_vm --name_vm NAME)"),
    ("/vm_upgrade buildfront 4", "MEM_GB is missing.\nUsage: /vm_upgrade NAME CORES MEM_GB [FRACTION]"),
    ("/upgrade_vm --name_vm buildfront --core four --mem 8", "CORES must be a whole number, not 'four'."),
    ("/vm_upgrade buildfront 4 8 33", "FRACTION must be 5, 20, 50 or 100"),
    ("/vm_keep buildfront soon", "DURATION must look like 2h, 90m or 1h30m"),
    ("/runner_report 1000", "DAYS must be between 1 and 90, not 1000."),
    ("/logs_migrated --namespace Work_NS", "is not a Kubernetes namespace"),
    ("/protect_branch 'bad branch'", "contains a control, format or space character"),
    ("/vm_start buildfrnt", "No VM named buildfrnt. Did you mean buildfront"),
    ("/vm_status prod-db", "prod-db is not one of the build VMs (vms.name_regex is ^build): I leave it alone."),
    ("/vm_upgrade buildfront 3 8", "Not a size buildfront can have: standard-v3 at 100% takes 2 to 16 (even), then every 4 up to 96 cores, not 3"),
    ("/vms_list", "Unknown command /vms_list. Did you mean /vms"),
])
def test_bad_arguments_are_answered_with_the_reason_and_usage(chat, env, text, expected):
    assert expected in chat.answer(text, ALICE)
    assert outbox(env) == []


def test_html_in_arguments_is_escaped_in_answers_and_announcements(chat, bot_api):
    text = chat.answer("/protect_branch feat<b>&co", ALICE)
    assert text == "🔒 Protected branch feat<b>&co of group/app: only maintainers may push and merge."
    announced = wait_for(lambda: bot_api.messages(CHAT_ID), what="announcement")
    assert announced[0].text == "🔒 @alice protected feat<b>&co of group/app"


# --- integrations failing mid-command ---------------------------------------------------------------------


def test_a_failing_cloud_is_answered_briefly_and_the_bot_keeps_running(chat, compute_api, caplog):
    compute_api.inject("GET", "/compute/v1/instances", 503, times=20)
    text = chat.answer("/vms", VIC)
    assert text.startswith("⚠️ /vms failed: Yandex Compute failed:") and "503" in text
    assert "/vms failed for @vic" in caplog.text and "Traceback" in caplog.text  # logged first, in full
    compute_api.clear_faults()
    assert "Build VMs" in chat.answer("/vms", VIC)


def test_a_failing_gitlab_during_protect_is_answered_and_audited(chat, gitlab, env):
    gitlab.fail(500, path="/protected_branches", times=None)
    text = chat.answer("/protect_branch stage", ALICE)
    assert text.startswith("⚠️ /protect_branch failed: GitLab failed:")
    assert AuditLog(env.data_dir / "intake.db").recent()[0].outcome == "failed"
    assert "role operator" in chat.answer("/whoami", ALICE)


def test_an_unreachable_cluster_becomes_a_note_in_the_answer(chat, kube):
    kube.fail("/pods", status=503, times=10)
    text = chat.answer("/migration_logs work", VIC)
    assert "Migration logs · namespace work" in text and "⚠️ Kubernetes API unreachable" in text


def test_a_telegram_error_while_answering_is_logged_and_the_bot_goes_on(chat, bot_api, caplog):
    bot_api.inject_error("sendMessage", 400, "Bad Request: chat not found")
    chat.send("/whoami", VIC)
    (brief,) = wait_for(lambda: bot_api.messages(VIC["id"]), what="the brief answer")
    assert brief.text == "⚠️ /whoami failed: Telegram failed: Chat not found"
    assert "/whoami failed for @vic" in caplog.text
    assert "role viewer" in chat.answer("/whoami", VIC)


# --- files -------------------------------------------------------------------------------------------------


def test_runner_report_sends_figures_and_a_png_chart(chat, bot_api, services):
    now = time.time()
    services.ledger.record("buildfront", "on", "push", at=now - 5 * 3600)
    services.ledger.record("buildfront", "off", "idle_stop", at=now - 3 * 3600)
    messages = chat.answer("/runner_report 1", VIC)
    assert "buildfront: on 2.0 h, saved 22.0 h (92% of always-on) · saved 99.00 (spent 9.00) · woken by push ×1" \
        in messages
    (photo,) = wait_for(lambda: bot_api.photos, what="the chart")
    assert photo[1].data.startswith(b"\x89PNG") and photo[1].filename == "runner-report-1d.png"


def test_a_refused_photo_is_sent_as_a_document(chat, bot_api):
    bot_api.inject_error("sendPhoto", 400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
    chat.answer("/runner_report", VIC)
    doc = wait_for(lambda: bot_api.documents(VIC["id"]), what="the chart as a document")
    assert doc[0].document.data.startswith(b"\x89PNG")


def test_migration_logs_come_masked_with_the_whole_log_attached(chat, bot_api, kube):
    from datetime import datetime, timezone

    kube.add_pod("work", "pre-migrate-db-1", datetime.now(timezone.utc),
                 containers=[{"name": "pre-migrate-db", "state": terminated("Error", 1)}])
    kube.add_log("work", "pre-migrate-db-1", "pre-migrate-db",
                 "migrating <users> & co\nconnect password=hunter2\nERROR relation missing\n")
    text = chat.answer("/logs_migrated --namespace work", VIC)
    assert "Pod: pre-migrate-db-1 (container pre-migrate-db, terminated: Error, exit 1)" in text
    assert "migrating <users> & co" in text and "ERROR relation missing" in text and "hunter2" not in text
    (doc,) = wait_for(lambda: bot_api.documents(VIC["id"]), what="the log file")
    assert doc.document.filename == "migration-logs-work.txt" and b"hunter2" not in doc.document.data


def test_a_long_answer_is_split_into_several_messages(chat, compute_api, bot_api):
    for i in range(80):
        compute_api.add_instance(f"build-{i:03d}-with-a-rather-long-name", "STOPPED")
    messages = chat.ask("/vms", VIC, n=2)
    assert all(len(m.text) <= 4096 for m in messages)
    time.sleep(0.3)
    assert "build-079" in "".join(m.text for m in bot_api.messages(VIC["id"]))


# --- the webhook transport -----------------------------------------------------------------------------------


def test_webhook_mode_registers_the_url_and_checks_the_secret_token(env, services, bot_api):
    port = free_port()
    hook = WebhookConfig.build("https://bot.example.com/tg/hook", "s3cret-Token_1", "127.0.0.1", port)
    with Harness(create_bot(env, services), webhook=hook):
        (call,) = bot_api.calls_of("setWebhook")
        assert call.params["url"] == "https://bot.example.com/tg/hook"
        assert call.params["secret_token"] == "s3cret-Token_1"
        update = {"update_id": 1, "message": {"message_id": 1, "date": int(time.time()), "chat": Chat.private(VIC),
                                              "from": VIC, "text": "/whoami"}}
        url = f"http://127.0.0.1:{port}/tg/hook"
        bad = requests.post(url, data=json.dumps(update), headers={"Content-Type": "application/json",
                                                                   "X-Telegram-Bot-Api-Secret-Token": "wrong"})
        missing = requests.post(url, data=json.dumps(update), headers={"Content-Type": "application/json"})
        assert (bad.status_code, missing.status_code) == (403, 403)
        time.sleep(0.3)
        assert bot_api.messages(VIC["id"]) == []
        ok = requests.post(url, data=json.dumps(update), headers={"Content-Type": "application/json",
                                                                  "X-Telegram-Bot-Api-Secret-Token": "s3cret-Token_1"})
        assert ok.status_code == 200
        wait_for(lambda: bot_api.messages(VIC["id"]), what="the webhook update answered")
        assert not bot_api.calls_of("getUpdates")


def test_webhook_settings_are_validated():
    with pytest.raises(ValueError, match="https://"):
        WebhookConfig.build("http://bot.example.com/hook", None)
    with pytest.raises(ValueError, match="TELEGRAM_WEBHOOK_SECRET"):
        WebhookConfig.build("https://bot.example.com/hook", "has spaces")
    generated = WebhookConfig.build("https://bot.example.com/hook", None)
    assert len(generated.secret) >= 32 and generated.path == "hook"


def test_strangers_get_a_refusal_not_suggestions_for_unknown_commands(chat):
    assert chat.answer("/vmz", STRANGER).startswith("Sorry, I only take commands from the team's known users.")
