"""``gitlab-hook check``: show the validated config with secrets masked and probe each integration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TextIO

import re
import sys

import requests
from pydantic import SecretStr

from gitlab_hook.integrations import integrations
from gitlab_hook.logs import SecretMasker
from gitlab_hook.taskqueue import TaskQueue, make_huey
from gitlab_hook.settings import Settings
from gitlab_hook.stores import open_stores
from gitlab_hook.wiring import compute_factory, gitlab_factory, make_notifier, pods_factory

@dataclass(frozen=True)
class ProbeResult:
    """One integration's answer: ok, failed, or not probed (dry-run / not supported yet)."""

    name: str
    status: str  # "ok" | "failed" | "dry-run" | "not probed"
    detail: str


def _probe_queue(settings: Settings) -> str:
    stores = open_stores(settings)
    stores.intake.ping()
    ready, scheduled = TaskQueue(make_huey(settings)).depth()
    return f"{ready} ready, {scheduled} scheduled; intake on {stores.backend}"


def _probe_gitlab(settings: Settings) -> str:
    return f"GitLab {gitlab_factory(settings)().version()}"


def _probe_telegram(settings: Settings) -> str:
    notifier = make_notifier(settings)
    try:
        return f"bot {notifier.probe()}"
    finally:
        notifier.close()


def _probe_yandex(settings: Settings) -> str:
    compute = compute_factory(settings)()
    vms = compute.list_instances()
    pattern = re.compile(settings.rules.vms.name_regex)
    mine = [v.name for v in vms if pattern.search(v.name)]
    missing = [r.vm for r in settings.rules.runners if r.vm not in {v.name for v in vms} | {v.id for v in vms}]
    if missing:
        raise RuntimeError(f"folder {compute.folder_id} has no VM named {', '.join(missing)}")
    return f"folder {compute.folder_id}: {len(vms)} VMs, {len(mine)} match vms.name_regex"


def _probe_kubernetes(settings: Settings) -> str:
    m = settings.rules.migrations
    namespaces = sorted(set(m.namespaces.values()) | ({m.default_namespace} if m.default_namespace else set()))
    if not namespaces:
        return "reachable config; no namespaces in migrations.namespaces to check"
    pods = pods_factory(settings)()
    return "; ".join(f"{ns}: {pods.probe(ns)} pods listed" for ns in namespaces)


PROBES: dict[str, Callable[[Settings], str]] = {
    "queue": _probe_queue,
    "gitlab": _probe_gitlab,
    "telegram": _probe_telegram,
    "yandex_compute": _probe_yandex,
    "kubernetes": _probe_kubernetes,
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
