"""``gitlab-hook check``: show the validated config with secrets masked and probe each integration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TextIO

import requests
import sys
from pydantic import SecretStr

from gitlab_hook.integrations import integrations
from gitlab_hook.intake import IntakeStore
from gitlab_hook.logs import SecretMasker
from gitlab_hook.taskqueue import TaskQueue, make_huey
from gitlab_hook.settings import Settings

PROBE_TIMEOUT = (3.05, 5.0)


@dataclass(frozen=True)
class ProbeResult:
    """One integration's answer: ok, failed, or not probed (dry-run / not supported yet)."""

    name: str
    status: str  # "ok" | "failed" | "dry-run" | "not probed"
    detail: str


def _probe_queue(settings: Settings) -> str:
    IntakeStore(settings.data_dir / "intake.db").ping()
    ready, scheduled = TaskQueue(make_huey(settings)).depth()
    return f"{ready} ready, {scheduled} scheduled"


def _probe_gitlab(settings: Settings) -> str:
    env = settings.env
    url = str(env.GITLAB_URL).rstrip("/") + "/api/v4/version"
    r = requests.get(url, headers={"PRIVATE-TOKEN": env.GITLAB_TOKEN.get_secret_value()}, timeout=PROBE_TIMEOUT)
    if r.status_code != 200:
        raise RuntimeError(f"GET /api/v4/version answered HTTP {r.status_code}")
    return f"GitLab {r.json().get('version', '?')}"


def _probe_telegram(settings: Settings) -> str:
    env = settings.env
    url = f"{str(env.TELEGRAM_API_URL).rstrip('/')}/bot{env.TELEGRAM_BOT_TOKEN.get_secret_value()}/getMe"
    r = requests.get(url, timeout=PROBE_TIMEOUT)
    data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if not data.get("ok"):
        raise RuntimeError(f"getMe answered HTTP {r.status_code}: {data.get('description', 'no description')}")
    return f"bot @{data['result'].get('username', '?')}"


PROBES: dict[str, Callable[[Settings], str]] = {
    "queue": _probe_queue,
    "gitlab": _probe_gitlab,
    "telegram": _probe_telegram,
}


def probe_all(settings: Settings) -> list[ProbeResult]:
    """Probe every configured integration; dry-run ones are reported, not failed."""
    out = []
    for integ in integrations(settings):
        if not integ.live:
            out.append(ProbeResult(integ.name, "dry-run", integ.detail))
            continue
        probe = PROBES.get(integ.name)
        if probe is None:
            out.append(ProbeResult(integ.name, "not probed", f"{integ.detail}; no probe in this version"))
            continue
        try:
            out.append(ProbeResult(integ.name, "ok", probe(settings)))
        except requests.RequestException as exc:
            out.append(ProbeResult(integ.name, "failed", f"unreachable: {type(exc).__name__}"))
        except Exception as exc:
            out.append(ProbeResult(integ.name, "failed", str(exc)))
    return out


def render_config(settings: Settings) -> list[str]:
    """The environment settings with secrets masked, then a summary of the rules."""
    lines = ["environment:"]
    for name, value in settings.env:
        if value is None:
            continue
        shown = "*** (set)" if isinstance(value, SecretStr) else str(value)
        lines.append(f"  {name} = {shown}")
    r = settings.rules
    lines.append(f"rules: {settings.rules_source or '(no GITLAB_HOOK_CONFIG: nothing watched)'}")
    for rule in r.runners:
        lines.append(f"  runner {rule.vm}: branches {', '.join(rule.branches)}; "
                     f"projects {', '.join(rule.projects) or 'all'}; "
                     f"idle stop {'after %ds' % rule.idle_stop_after if rule.idle_stop_after else 'off'}")
    lines.append(f"  vms.name_regex = {r.vms.name_regex}")
    lines.append(f"  migrations: jobs /{r.migrations.job_name_regex}/, pods /{r.migrations.pod_name_regex}/, "
                 f"namespaces {r.migrations.namespaces or {}} default {r.migrations.default_namespace}")
    lines.append(f"  telegram users: {len(r.telegram.users)}")
    return lines


def run_check(settings: Settings, out: TextIO | None = None) -> int:
    """Print config and probes; exit code 0 when every configured integration answered."""
    out = out or sys.stdout
    masker = SecretMasker(settings.secret_values())
    results = probe_all(settings)
    for line in render_config(settings):
        print(masker.mask(line), file=out)
    print("integrations:", file=out)
    for res in results:
        print(masker.mask(f"  {res.name:15} {res.status:10} {res.detail}"), file=out)
    failed = [r.name for r in results if r.status == "failed"]
    print(masker.mask(f"check: {'FAILED: ' + ', '.join(failed) if failed else 'ok'}"), file=out)
    return 1 if failed else 0
