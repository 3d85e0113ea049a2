"""Shared set-up for the runner lifecycle tests (power, idle stop, reconcile, resize).

Everything goes through the real clients (ComputeClient, GitLabAPI, TelegramNotifier) against the
fakes; business time is a FakeClock that the tests move, Operations take real (short) time.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from gitlab_hook.effects import Context
from gitlab_hook.gitlab_api import GitLabAPI
from gitlab_hook.idle_stop import IdlePolicy, IdleStopper
from gitlab_hook.ledger import Ledger
from gitlab_hook.memos import Memos
from gitlab_hook.power import PowerControl, PowerPolicy
from gitlab_hook.reconcile import Reconciler
from gitlab_hook.resize import Resizer
from gitlab_hook.rules import Rules
from gitlab_hook.vm_state import VmState
from gitlab_hook.yandex import ComputeClient, StaticTokenProvider
from tests.conftest import CHAT_ID, IAM_TOKEN
from tests.fakes.gitlab_api import FakeGitLab
from tests.fakes.yandex_cloud import FakeClock, FakeComputeAPI

FAST = PowerPolicy(poll_interval=0.02, stop_wait=5, start_wait=5, update_wait=5, busy_retry=0.1)
FAST_IDLE = IdlePolicy(poll_interval=0.02, stop_wait=5)
PROJECT_ID, RUNNER_ID = 1, 12
MIN = 60.0


def buildfront(**over: Any) -> dict[str, Any]:
    """The buildfront runner rule of the tests, with overrides."""
    rule = {"vm": "buildfront", "branches": ["stage"], "projects": ["group/app"], "gitlab_runner_ids": [RUNNER_ID],
            "idle_stop_after": "30m", "timezone": "Europe/Moscow"}
    rule.update(over)
    return rule


def rules(*runners: dict[str, Any]) -> Rules:
    """Validated rules with these runner entries (default: buildfront)."""
    return Rules.model_validate({"runners": list(runners) or [buildfront()]})


def ctx(action_id: int = 1) -> Context:
    """A handler context."""
    return Context(action_id, 1, lambda: None)


class HookedGitLab(FakeGitLab):
    """FakeGitLab that calls ``on_pause(runner_id)`` right after a runner is paused (to slip a job in)."""

    on_pause: Callable[[int], None] | None = None

    def start(self) -> HookedGitLab:
        """Serve as FakeGitLab does, with TCP_NODELAY (no 40 ms delayed-ACK wait per request)."""
        super().start()
        base = self._server.RequestHandlerClass  # type: ignore[union-attr]

        class NoDelay(base):  # type: ignore[misc, valid-type]
            def setup(self) -> None:
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        self._server.RequestHandlerClass = NoDelay  # type: ignore[union-attr]
        return self

    def _runner_update(self, params: dict[str, str], query: dict[str, list[str]], body: Any):  # noqa: ANN202
        reply = super()._runner_update(params, query, body)
        runner = self._find_runner(params["id"])
        if runner is not None and runner["paused"] and self.on_pause is not None:
            self.on_pause(runner["id"])
        return reply


class FlakyCompute(FakeComputeAPI):
    """FakeComputeAPI whose next Operation of a given kind (start, stop, update) ends with an error."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.failing: list[tuple[str, int, str]] = []

    def fail_next(self, kind: str, code: int = 13, message: str = "Internal error") -> None:
        """The next Operation of this kind fails (code, message)."""
        with self._lock:
            self.failing.append((kind, code, message))

    def _new_op(self, kind: str, vm: Any, transitional: str, final: str, updates: dict[str, Any] | None = None):  # noqa: ANN202
        op = super()._new_op(kind, vm, transitional, final, updates)
        for i, (k, code, message) in enumerate(self.failing):
            if k == kind:
                op.error = {"code": code, "message": message, "details": []}
                del self.failing[i]
                break
        return op


def compute_client(api: FakeComputeAPI) -> ComputeClient:
    """The real ComputeClient on a fake, with quick retries."""
    return ComputeClient(compute_url=api.url, operation_url=api.operation_url, folder_id=api.folder_id,
                         token_provider=StaticTokenProvider(IAM_TOKEN), backoff_base=0.01, backoff_cap=0.05,
                         timeout=(1, 2))


def gitlab_world(fake: FakeGitLab) -> GitLabAPI:
    """A project group/app with project runner 12; returns the real client (no retries: quick failures)."""
    fake.add_project(PROJECT_ID, "group/app")
    fake.add_runner(RUNNER_ID, projects=[PROJECT_ID])
    return GitLabAPI(fake.url, fake.token, timeout=2, retries=0)


@dataclass
class World:
    """The services under test and what they talk to."""

    clock: FakeClock
    compute_api: FakeComputeAPI
    compute: ComputeClient
    gitlab_fake: FakeGitLab
    gitlab: GitLabAPI
    bot_api: Any
    notifier: Any
    state: VmState
    ledger: Ledger
    memos: Memos
    rules: Rules
    power: PowerControl = field(init=False)
    idle: IdleStopper = field(init=False)
    reconciler: Reconciler = field(init=False)
    resizer: Resizer = field(init=False)

    def __post_init__(self) -> None:
        self.power = PowerControl(lambda: self.compute, self.notifier, self.state, self.ledger,
                                  gitlab=lambda: self.gitlab, rules=self.rules, clock=self.clock,
                                  sleep=time.sleep, policy=FAST)
        self.idle = IdleStopper(lambda: self.compute, self.notifier, self.state, self.ledger,
                                gitlab=lambda: self.gitlab, rules=self.rules, power=self.power, memos=self.memos,
                                clock=self.clock, policy=FAST_IDLE)
        self.reconciler = Reconciler(lambda: self.compute, self.notifier, self.state, self.ledger,
                                     gitlab=lambda: self.gitlab, rules=self.rules, power=self.power,
                                     memos=self.memos, clock=self.clock)
        self.resizer = Resizer(self.power)

    def texts(self) -> list[str]:
        """Plain texts of the messages in the alerts chat, in order."""
        return [m.text for m in self.bot_api.messages(CHAT_ID)]

    def advance(self, seconds: float) -> None:
        """Move business time on."""
        self.clock.advance(seconds)


def make_world(tmp_path: Any, compute_api: FakeComputeAPI, compute: ComputeClient, gitlab_fake: FakeGitLab,
               bot_api: Any, notifier: Any, rule_set: Rules | None = None, start: float = 1_700_000_000.0) -> World:
    """Wire the services on one SQLite file and a FakeClock starting at ``start``."""
    clock = FakeClock(start)
    db = tmp_path / "intake.db"
    gl = gitlab_world(gitlab_fake)
    return World(clock, compute_api, compute, gitlab_fake, gl, bot_api, notifier, VmState(db, clock=clock),
                 Ledger(db, clock=clock), Memos(db, clock=clock), rule_set or rules())
