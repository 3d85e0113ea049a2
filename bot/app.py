"""The Telegram front end: a python-telegram-bot ``Application`` whose handlers only deliver.

Every text message goes to ``Dispatcher.handle_text`` (in a thread: the services are blocking);
what it returns is sent as HTML (Defaults set once), split when long, with Confirm/Cancel
buttons for risky commands. Taps on those buttons go to ``Dispatcher.tap``. Exceptions reach one
error handler that logs first and answers briefly; the bot keeps running.

Transports: long polling (default), or a Telegram webhook with a secret token when a public URL
is configured (``WebhookConfig``). ``running(app, …)`` starts and stops either, and publishes
the command menu (setMyCommands).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

from telegram import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    LinkPreviewOptions,
    Message,
    Update,
)
from telegram.constants import ParseMode
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    ContextTypes,
    Defaults,
    MessageHandler,
    filters,
)

from bot import commands as C
from bot.access import Actor, Place, Policy
from bot.confirm import (
    DEFAULT_TTL,
    NO,
    YES,
    callback_data,
    parse_callback,
)
from bot.dispatch import Dispatcher, Reply
from bot.redis_stores import open_bot_stores
from bot.services import ChatOpsServices
from gitlab_hook.telegram_format import split_message

log = logging.getLogger("bot")

ALLOWED_UPDATES = ["message", "callback_query"]
ANONYMOUS_ADMIN_ID = 1087968824  # @GroupAnonymousBot: posts of a group's anonymous admins
SERVICE_USER_ID = 777000  # Telegram itself (a channel's posts forwarded to its discussion group)
SECRET_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")


@dataclass(frozen=True)
class WebhookConfig:
    """Webhook mode: Telegram POSTs updates to ``url``; we listen on ``listen:port`` at the URL's path."""

    url: str
    secret: str
    listen: str = "127.0.0.1"
    port: int = 8443

    @property
    def path(self) -> str:
        return urlsplit(self.url).path.lstrip("/")

    @classmethod
    def build(cls, url: str, secret: str | None, listen: str | None = None, port: int | None = None) -> "WebhookConfig":
        """Validate; without a secret, one is made for this run (setWebhook registers it at every start)."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("TELEGRAM_WEBHOOK_URL must be an https:// URL (Telegram sends webhooks only over TLS)")
        if secret is not None and not SECRET_RE.fullmatch(secret):
            raise ValueError("TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return cls(url, secret or secrets.token_urlsafe(32), listen or "127.0.0.1", int(port or 8443))


def actor_of(user: Any, sender_chat: Any = None) -> Actor:
    """Who wrote: a person, or an anonymous admin / channel we cannot name."""
    if sender_chat is not None or user is None or user.id in (ANONYMOUS_ADMIN_ID, SERVICE_USER_ID):
        title = getattr(sender_chat, "title", None) or "anonymous"
        return Actor(None, None, title, anonymous=True)
    return Actor(user.id, user.username, user.full_name or "")


def _place(message: Any) -> Place:
    thread = message.message_thread_id if getattr(message, "is_topic_message", False) else None
    return Place(message.chat.id, message.chat.type, thread)


def _buttons(token: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton("✅ Confirm", callback_data=callback_data(token, YES)),
                                  InlineKeyboardButton("✖️ Cancel", callback_data=callback_data(token, NO))]])


def create_bot(settings: Any, services: ChatOpsServices, *, base_url: str | None = None,
               dispatcher: Dispatcher | None = None, confirm_ttl: float = DEFAULT_TTL,
               sweep_interval: float = 30.0) -> Application:
    """The bot's Application (not started): handlers, HTML defaults, the error handler, the menu at start."""
    env = settings.env
    if env.TELEGRAM_BOT_TOKEN is None:
        raise ValueError("TELEGRAM_BOT_TOKEN is not set")
    root = (base_url or str(env.TELEGRAM_API_URL)).rstrip("/")
    if dispatcher is None:
        confirms, audit = open_bot_stores(settings, ttl=confirm_ttl)
        dispatcher = Dispatcher(services, Policy(dict(settings.rules.telegram.users), env.TELEGRAM_CHAT_ID),
                                confirms, audit)
    app = (Application.builder()
           .token(env.TELEGRAM_BOT_TOKEN.get_secret_value())
           .base_url(root + "/bot")
           .base_file_url(root + "/file/bot")
           .defaults(Defaults(parse_mode=ParseMode.HTML, link_preview_options=LinkPreviewOptions(is_disabled=True)))
           .concurrent_updates(8)  # a slow cluster must not hold up everyone else's commands
           .post_init(_post_init)
           .post_shutdown(_post_shutdown)
           .build())
    app.bot_data.update(dispatcher=dispatcher, alerts_chat=env.TELEGRAM_CHAT_ID, alerts_thread=env.TELEGRAM_THREAD_ID,
                        sweep_interval=sweep_interval)
    app.add_handler(MessageHandler(filters.UpdateType.MESSAGE & filters.TEXT, on_message))
    app.add_handler(CallbackQueryHandler(on_confirm_tap, pattern=r"^cf:"))
    app.add_handler(CallbackQueryHandler(on_other_tap))
    app.add_error_handler(on_error)
    return app


# --- lifecycle ------------------------------------------------------------------------------------


async def _post_init(app: Application) -> None:
    try:
        await app.bot.set_my_commands([BotCommand(name, text) for name, text in C.menu()])
    except TelegramError as exc:  # the menu is a convenience: commands work without it
        log.warning("could not publish the command menu (setMyCommands): %s", exc)
    app.bot_data["sweeper"] = asyncio.get_running_loop().create_task(_sweeper(app), name="confirm-sweeper")
    log.info("bot @%s ready", app.bot.username)


async def _post_shutdown(app: Application) -> None:
    task = app.bot_data.pop("sweeper", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _sweeper(app: Application) -> None:
    """Every few seconds, turn unanswered prompts past their expiry into 'expired' (buttons gone)."""
    d: Dispatcher = app.bot_data["dispatcher"]
    while True:
        await asyncio.sleep(app.bot_data["sweep_interval"])
        try:
            for chat_id, message_id, html in await asyncio.to_thread(d.sweep):
                await _edit(app.bot, chat_id, message_id, html)
        except Exception:
            log.exception("the confirmation sweep failed; trying again later")


@contextlib.asynccontextmanager
async def running(app: Application, *, webhook: WebhookConfig | None = None, poll_timeout: float = 10.0,
                  poll_interval: float = 0.0) -> AsyncIterator[Application]:
    """Start the Application with polling (or the webhook) and stop it cleanly on exit."""
    await app.initialize()
    try:
        if app.post_init:
            await app.post_init(app)
        if webhook is not None:
            await app.updater.start_webhook(listen=webhook.listen, port=webhook.port, url_path=webhook.path,
                                            webhook_url=webhook.url, secret_token=webhook.secret,
                                            allowed_updates=ALLOWED_UPDATES, bootstrap_retries=5)
            log.info("bot: webhook %s, listening on %s:%d", webhook.url, webhook.listen, webhook.port)
        else:
            await app.updater.start_polling(poll_interval=poll_interval, timeout=int(poll_timeout),
                                            allowed_updates=ALLOWED_UPDATES, bootstrap_retries=3)
            log.info("bot: long polling")
        await app.start()
        try:
            yield app
        finally:
            if app.updater.running:
                await app.updater.stop()
            if app.running:
                await app.stop()
    finally:
        await app.shutdown()
        if app.post_shutdown:
            await app.post_shutdown(app)


# --- handlers ---------------------------------------------------------------------------------------


async def on_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    msg = update.message
    if msg is None or msg.text is None:
        return
    d: Dispatcher = context.bot_data["dispatcher"]
    actor, place = actor_of(msg.from_user, msg.sender_chat), _place(msg)
    reply = await asyncio.to_thread(d.handle_text, msg.text, actor, place, bot_username=context.bot.username,
                                    sent_at=msg.date.timestamp() if msg.date else None)
    if reply is None:
        return
    await _deliver(context, msg, reply, actor, place)


async def on_confirm_tap(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    q = update.callback_query
    parsed = parse_callback(q.data)
    if parsed is None:
        await q.answer("This button is not mine.")
        return
    d: Dispatcher = context.bot_data["dispatcher"]
    message = q.message if isinstance(q.message, Message) else None
    actor = actor_of(q.from_user)
    place = _place(message) if message else Place(None, "unknown")
    res = await asyncio.to_thread(d.tap, parsed[0], parsed[1], actor, place)
    await q.answer(res.callback_text[:200], show_alert=res.alert)  # always answer: the button stops spinning
    if res.edit_html and message is not None:
        await _edit(context.bot, message.chat_id, message.message_id, res.edit_html)
    if res.pending is not None:
        progress = (message.chat_id, message.message_id) if message else None
        result = await asyncio.to_thread(d.commit, res.pending, actor, place, progress)
        await _after_commit(context, result, progress)


async def on_other_tap(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.callback_query.answer("This button no longer does anything.")


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The one error handler: log first (with the traceback), then a brief answer; never re-raise."""
    exc = context.error
    d: Dispatcher | None = context.bot_data.get("dispatcher") if context.bot_data is not None else None
    if not isinstance(update, Update) or d is None:
        log.error("bot error outside an update: %s", exc, exc_info=exc)
        return
    actor = place = None
    what = "the command"
    if update.callback_query is not None:
        actor = actor_of(update.callback_query.from_user)
        what = "the button"
        if isinstance(update.callback_query.message, Message):
            place = _place(update.callback_query.message)
    elif update.message is not None:
        actor, place = actor_of(update.message.from_user, update.message.sender_chat), _place(update.message)
        what = (update.message.text or "").split(None, 1)[0].split("@")[0][:40] or what
    text = await asyncio.to_thread(d.report_error, exc, what, actor, place)
    if isinstance(exc, RetryAfter):
        return  # flood control: answering would only make it worse
    with contextlib.suppress(TelegramError):
        if update.callback_query is not None:
            await update.callback_query.answer("Failed: see the message.")
    chat = update.effective_chat
    if chat is not None:
        try:
            await context.bot.send_message(chat.id, text, message_thread_id=place.thread_id if place else None)
        except TelegramError as send_exc:
            log.warning("could not tell chat %s about the failure: %s", chat.id, send_exc)


# --- delivery ----------------------------------------------------------------------------------------


async def _deliver(context: ContextTypes.DEFAULT_TYPE, msg: Message, reply: Reply, actor: Actor,
                   place: Place) -> None:
    d: Dispatcher = context.bot_data["dispatcher"]
    parts = split_message(reply.html) or ["…"]
    markup = _buttons(reply.confirm_token) if reply.confirm_token else None
    sent: Message | None = None
    for i, part in enumerate(parts):
        sent = await msg.reply_text(part, reply_markup=markup if i == len(parts) - 1 else None)
    if reply.confirm_token and sent is not None:
        await asyncio.to_thread(d.confirms.attach_message, reply.confirm_token, sent.chat_id, sent.message_id)
    for f in reply.files:
        await _send_file(msg, f)
    if reply.pending is not None and sent is not None:
        progress = (sent.chat_id, sent.message_id)
        result = await asyncio.to_thread(d.commit, reply.pending, actor, place, progress)
        await _after_commit(context, result, progress)
    elif reply.announce:
        await _announce(context, reply.announce)


async def _after_commit(context: ContextTypes.DEFAULT_TYPE, result: Reply, progress: tuple[int, int] | None) -> None:
    if result.edit_progress and progress is not None:
        await _edit(context.bot, progress[0], progress[1], result.html)
    if result.announce:
        await _announce(context, result.announce)


async def _send_file(msg: Message, f: Any) -> None:
    caption = f.caption[:1000] if f.caption else None
    if f.photo:
        try:
            await msg.reply_photo(InputFile(f.data, filename=f.filename), caption=caption)
            return
        except BadRequest as exc:  # e.g. a picture Telegram will not take as a photo: send the file
            log.warning("sendPhoto of %s refused (%s); sending it as a document", f.filename, exc)
    await msg.reply_document(InputFile(f.data, filename=f.filename), caption=caption)


async def _announce(context: ContextTypes.DEFAULT_TYPE, html: str) -> None:
    chat = context.bot_data.get("alerts_chat")
    if chat is None:
        log.info("no TELEGRAM_CHAT_ID: not announcing: %s", html)
        return
    try:
        await context.bot.send_message(chat, html, message_thread_id=context.bot_data.get("alerts_thread"))
    except TelegramError as exc:  # the command itself succeeded; the audit trail has it
        log.warning("could not announce in the alerts chat: %s", exc)


async def _edit(bot: Any, chat_id: int, message_id: int, html: str) -> None:
    try:
        await bot.edit_message_text(html, chat_id=chat_id, message_id=message_id)
    except BadRequest as exc:
        if "not modified" in str(exc).lower():
            return
        log.warning("could not edit message %s in chat %s: %s", message_id, chat_id, exc)
    except (RetryAfter, NetworkError) as exc:
        log.warning("could not edit message %s in chat %s now: %s", message_id, chat_id, exc)
