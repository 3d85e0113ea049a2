"""Settings: secrets and endpoints from the environment, rules from YAML; validated once at start-up."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gitlab_hook.rules import Rules


class ConfigError(Exception):
    """Invalid configuration; the text names the key, the problem and the source."""


class EnvSettings(BaseSettings):
    """Environment variables, exactly as named in the design's configuration table."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, case_sensitive=True)

    GITLAB_HOOK_CONFIG: Path | None = None
    GITLAB_WEBHOOK_SECRET: SecretStr | None = None
    GITLAB_WEBHOOK_SIGNING_TOKEN: SecretStr | None = None
    GITLAB_URL: AnyHttpUrl | None = None
    GITLAB_TOKEN: SecretStr | None = None
    YC_FOLDER_ID: str | None = Field(default=None, pattern=r"^[a-z0-9]{1,50}$")
    YC_IAM_TOKEN: SecretStr | None = None
    YC_SA_KEY_FILE: Path | None = None
    YC_COMPUTE_URL: AnyHttpUrl = AnyHttpUrl("https://compute.api.cloud.yandex.net")
    YC_OPERATION_URL: AnyHttpUrl = AnyHttpUrl("https://operation.api.cloud.yandex.net")
    YC_IAM_URL: AnyHttpUrl = AnyHttpUrl("https://iam.api.cloud.yandex.net")
    YC_METADATA_URL: AnyHttpUrl = AnyHttpUrl("http://169.254.169.254")
    TELEGRAM_BOT_TOKEN: SecretStr | None = None
    TELEGRAM_CHAT_ID: int | None = None
    TELEGRAM_THREAD_ID: int | None = None
    TELEGRAM_API_URL: AnyHttpUrl = AnyHttpUrl("https://api.telegram.org")
    # Bot in webhook mode (else long polling): Telegram posts updates to this public URL.
    TELEGRAM_WEBHOOK_URL: str | None = None
    TELEGRAM_WEBHOOK_SECRET: SecretStr | None = None
    TELEGRAM_WEBHOOK_LISTEN: str = "127.0.0.1"
    TELEGRAM_WEBHOOK_PORT: int = Field(default=8443, ge=1, le=65535)
    KUBECONFIG: str | None = None
    KUBE_API_URL: AnyHttpUrl | None = None
    KUBE_TOKEN: SecretStr | None = None
    KUBE_CA_FILE: Path | None = None
    # Set by Kubernetes in every pod: its presence means in-cluster config can be used.
    KUBERNETES_SERVICE_HOST: str | None = None
    DATA_DIR: Path = Path("./var")
    REDIS_URL: SecretStr | None = None  # may carry a password
    # Service knobs (documented in the README).
    LOG_FORMAT: Literal["text", "json"] = "text"
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    WEBHOOK_MAX_BODY_BYTES: int = Field(default=10 * 1024 * 1024, ge=1024)
    WEBHOOK_SIGNATURE_TOLERANCE: int = Field(default=300, ge=1, le=300)  # the scheme caps it at 5 min
    DEDUPE_TTL_SECONDS: int = Field(default=7 * 86400, ge=60)
    DEDUPE_MAX_ENTRIES: int = Field(default=200_000, ge=100)
    TASK_GIVE_UP_AFTER: int = Field(default=3600, ge=60)
    WORKER_THREADS: int = Field(default=8, ge=1, le=64)  # mostly waiting on outside APIs
    WEB_WORKERS: int = Field(default=2, ge=1, le=64)
    WEB_THREADS: int = Field(default=8, ge=1, le=256)

    @field_validator("TELEGRAM_WEBHOOK_URL")
    @classmethod
    def _tg_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https://[^/\s]+", v):
            raise ValueError("must be an https:// URL (Telegram sends webhooks only over TLS)")
        return v

    @field_validator("TELEGRAM_WEBHOOK_SECRET")
    @classmethod
    def _tg_secret(cls, v: SecretStr | None) -> SecretStr | None:
        # https://core.telegram.org/bots/api#setwebhook (secret_token)
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", v.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return v

    @field_validator("GITLAB_WEBHOOK_SIGNING_TOKEN")
    @classmethod
    def _whsec(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith("whsec_"):
            raise ValueError("must start with 'whsec_' (GitLab shows it when you enable signing)")
        return v


class _MappingSettings(EnvSettings):
    """EnvSettings from a given mapping only: tests and ``with_env`` must not see os.environ."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)


class Settings:
    """Validated settings handed to every part of the service; nothing reads the environment later."""

    def __init__(self, env: EnvSettings, rules: Rules, rules_source: str | None):
        self.env = env
        self.rules = rules
        self.rules_source = rules_source

    @property
    def data_dir(self) -> Path:
        return self.env.DATA_DIR

    def secret_values(self) -> list[str]:
        """Every secret's plain value, for masking in logs and output."""
        out = []
        for name, value in self.env:
            if isinstance(value, SecretStr) and value.get_secret_value():
                out.append(value.get_secret_value())
        return out

    def with_env(self, **changes: Any) -> "Settings":
        """A copy with some environment values replaced (validated again)."""
        # Only what was set: "which variables were given" matters (e.g. YC_METADATA_URL turns Yandex on).
        data = {k: getattr(self.env, k) for k in self.env.model_fields_set}
        data.update(changes)
        return Settings(_validate_env(data, "overrides"), self.rules, self.rules_source)


def _describe(exc: ValidationError, source: str, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problem = err["msg"]
        if err["type"] == "extra_forbidden":
            problem = "unknown key (typo?)"
        value = err.get("input")
        shown = "" if prefix == "env" or isinstance(value, (dict, list)) else f" (got {value!r})"
        lines.append(f"{source}: {key}: {problem}{shown}")
    return "\n".join(lines)


def _validate_env(environ: Mapping[str, Any], source: str) -> EnvSettings:
    try:
        return _MappingSettings(**dict(environ))
    except ValidationError as exc:
        # Never echo environment values: several of them are secrets.
        raise ConfigError(_describe(exc, f"environment ({source})", prefix="env")) from None


def load_rules(path: Path | None) -> tuple[Rules, str | None]:
    """Read and validate the YAML rules file; no file means no rules (nothing watched)."""
    if path is None:
        return Rules(), None
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"GITLAB_HOOK_CONFIG: cannot read {source}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (runners:, vms:, …)")
    try:
        return Rules.model_validate(data), source
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Validate the environment and the rules file once; raise ConfigError naming what is wrong."""
    if environ is None:
        try:
            env = EnvSettings()  # pydantic-settings reads os.environ
        except ValidationError as exc:
            raise ConfigError(_describe(exc, "environment", prefix="env")) from None
    else:
        env = _validate_env({k: v for k, v in environ.items() if k in EnvSettings.model_fields}, "variables")
    rules, source = load_rules(env.GITLAB_HOOK_CONFIG)
    return Settings(env, rules, source)
