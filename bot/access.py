"""Who may do what, where: roles from the rules file, the allowed chats, one-line refusals. Pure.

- Roles come from ``telegram.users`` (numeric Telegram user id → viewer | operator | admin);
  viewer < operator < admin. Someone not listed has no role.
- Commands are taken in the alerts chat (``TELEGRAM_CHAT_ID``, any topic of it) and in the private
  chat of a listed user. /whoami answers anywhere (it is how people learn the id to be listed);
  /help answers anyone in an allowed chat.
- A post made anonymously (a group's anonymous admin) or on behalf of a channel cannot be tied
  to a person, so it gets no role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from bot.commands import ANYONE, MEMBER, Spec

ROLE_RANK: dict[str, int] = {"viewer": 1, "operator": 2, "admin": 3}
CONSOLE_USER_ID = 0


@dataclass(frozen=True)
class Actor:
    """The person behind a command."""

    user_id: int | None
    username: str | None = None  # Telegram @username, without the @
    full_name: str = ""
    anonymous: bool = False  # anonymous group admin or a channel: not a person we can name
    console: bool = False

    @property
    def mention(self) -> str:
        """'@alice', else the name with the id, as shown in texts and the audit trail."""
        if self.console:
            return "console"
        if self.username:
            return f"@{self.username}"
        name = self.full_name.strip() or "someone"
        return f"{name} (id {self.user_id})" if self.user_id is not None else name

    @property
    def by(self) -> str:
        """The ``by`` field of queued actions: "@user" or "console"."""
        return self.mention


@dataclass(frozen=True)
class Place:
    """Where a command was typed."""

    chat_id: int | None
    chat_type: str  # private | group | supergroup | channel | console
    thread_id: int | None = None

    @property
    def private(self) -> bool:
        return self.chat_type == "private"


CONSOLE_ACTOR = Actor(CONSOLE_USER_ID, None, "local operator", console=True)
CONSOLE_PLACE = Place(None, "console")


@dataclass(frozen=True)
class Refusal:
    """Why a command is not run: a reason code (for logs and metrics) and the one-line answer."""

    reason: str  # chat | anonymous | no_role | role
    text: str


@dataclass(frozen=True)
class Policy:
    """The access rules of one deployment."""

    users: Mapping[int, str]
    alerts_chat_id: int | None = None

    def role_of(self, actor: Actor) -> str | None:
        """The actor's role; the console is a local operator with the admin role."""
        if actor.console:
            return "admin"
        if actor.anonymous or actor.user_id is None:
            return None
        return self.users.get(actor.user_id)

    def chat_allowed(self, actor: Actor, place: Place) -> bool:
        """The alerts chat, a listed user's private chat, or the console."""
        if actor.console or place.chat_type == "console":
            return actor.console
        if self.alerts_chat_id is not None and place.chat_id == self.alerts_chat_id:
            return True
        return place.private and actor.user_id is not None and actor.user_id in self.users

    def check(self, spec: Spec, actor: Actor, place: Place) -> Refusal | None:
        """None when the actor may run this command here; else the refusal to answer."""
        if spec.need == ANYONE:
            return None
        if not self.chat_allowed(actor, place):
            if place.private:
                return Refusal("chat", f"Sorry, I only take commands from the team's known users. Your Telegram "
                                       f"id is {actor.user_id}: an admin can add it under telegram.users.")
            return Refusal("chat", "Sorry, I only take commands in the team's alerts chat or in private chats "
                                   "with known users.")
        if spec.need == MEMBER:
            return None
        if actor.anonymous:
            return Refusal("anonymous", "Sorry, I cannot tell who you are when you post anonymously or as a "
                                        "channel: post as yourself.")
        role = self.role_of(actor)
        if role is None:
            return Refusal("no_role", f"Sorry, your Telegram id {actor.user_id} has no role here: an admin can "
                                      "add it under telegram.users (send /whoami).")
        if ROLE_RANK.get(role, 0) < ROLE_RANK[spec.need]:
            return Refusal("role", f"Sorry, /{spec.name} needs the {spec.need} role; you are {role}.")
        return None
