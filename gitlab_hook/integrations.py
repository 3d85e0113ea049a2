"""Which outside systems are configured (live) and which run in dry-run, for the banner and ``check``."""

from __future__ import annotations

from dataclasses import dataclass

from gitlab_hook.settings import Settings


@dataclass(frozen=True)
class Integration:
    """One outside system and how we will talk to it."""

    name: str
    live: bool
    detail: str


def integrations(settings: Settings) -> list[Integration]:
    """Describe every integration from the settings alone (no I/O)."""
    env = settings.env
    out = []
    if env.REDIS_URL is not None:
        out.append(Integration("queue", True, "Redis (REDIS_URL)"))
    else:
        out.append(Integration("queue", True, f"SQLite in {env.DATA_DIR}"))

    if env.YC_IAM_TOKEN is not None:
        yc = "static IAM token (YC_IAM_TOKEN; cannot refresh: replace it before it expires)"
    elif env.YC_SA_KEY_FILE is not None:
        yc = f"service-account key {env.YC_SA_KEY_FILE}"
    elif env.YC_FOLDER_ID is not None or "YC_METADATA_URL" in env.model_fields_set:
        # On a Yandex VM with a service account: token (and folder, if not given) from metadata.
        yc = "VM metadata service token"
    else:
        yc = ""
    if yc:
        yc += f"; folder {env.YC_FOLDER_ID or 'from the metadata service'}"
    out.append(Integration("yandex_compute", bool(yc),
                           yc or "no YC_IAM_TOKEN, YC_SA_KEY_FILE, YC_FOLDER_ID or YC_METADATA_URL"))

    if env.TELEGRAM_BOT_TOKEN is not None and env.TELEGRAM_CHAT_ID is not None:
        where = f"chat {env.TELEGRAM_CHAT_ID}" + (f", topic {env.TELEGRAM_THREAD_ID}" if env.TELEGRAM_THREAD_ID else "")
        out.append(Integration("telegram", True, where))
    else:
        missing = [n for n in ("TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID") if getattr(env, n) is None]
        out.append(Integration("telegram", False, "no " + " and ".join(missing)))

    if env.GITLAB_URL is not None and env.GITLAB_TOKEN is not None:
        out.append(Integration("gitlab", True, str(env.GITLAB_URL)))
    else:
        out.append(Integration("gitlab", False, "no GITLAB_URL and GITLAB_TOKEN"))

    if env.KUBE_API_URL is not None:
        out.append(Integration("kubernetes", env.KUBE_TOKEN is not None,
                               str(env.KUBE_API_URL) if env.KUBE_TOKEN else "KUBE_API_URL without KUBE_TOKEN"))
    elif env.KUBECONFIG:
        out.append(Integration("kubernetes", True, f"KUBECONFIG {env.KUBECONFIG}"))
    elif env.KUBERNETES_SERVICE_HOST:
        out.append(Integration("kubernetes", True, "in-cluster service account"))
    else:
        out.append(Integration("kubernetes", False, "no KUBECONFIG or KUBE_API_URL, not running in a cluster"))
    return out


def banner(settings: Settings, *, host: str, port: int, generated_secret: bool) -> str:
    """The one start-up banner: where we listen, what is live, what is dry-run."""
    lines = [f"gitlab-hook listening on http://{host}:{port}/gitlab/webhook"]
    rules = settings.rules
    lines.append(f"  rules: {settings.rules_source or '(none: nothing is watched)'}; "
                 f"{len(rules.runners)} runner(s): {', '.join(r.vm for r in rules.runners) or '-'}")
    if generated_secret:
        lines.append("  webhook secret: generated for this run (set GITLAB_WEBHOOK_SECRET to keep one)")
    for i in integrations(settings):
        lines.append(f"  {i.name:15} {'live   ' if i.live else 'DRY-RUN'} {i.detail}")
    lines.append("  what a dry-run integration would do is logged, not performed")
    return "\n".join(lines)
