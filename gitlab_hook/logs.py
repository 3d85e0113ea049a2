"""Logging set once at start: text or JSON lines, with every known secret masked."""

from __future__ import annotations

import logging
import re
import sys
from typing import Iterable

from pythonjsonlogger.json import JsonFormatter

MASK = "***"
# Secrets we were not told about but recognise by shape: bot tokens in URLs, bearer headers.
_SHAPES = [
    # Telegram bot token, also inside ".../bot<TOKEN>/method" where no word boundary precedes it.
    re.compile(r"(?<![0-9])\d{6,12}:[A-Za-z0-9_-]{30,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{16,}"),
    re.compile(r"(?i)(private-token[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._-]{10,}"),
]


class SecretMasker(logging.Filter):
    """Replace secret values (and secret-shaped strings) in every record's final text."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, MASK)
        for pat in _SHAPES:
            text = pat.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        masked = self.mask(msg)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
            # Formatters that render exc_info themselves (the JSON one does) would print the
            # unmasked traceback: leave them only the masked text.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        if masked != msg or record.args:
            record.msg, record.args = masked, None
        return True


def setup_logging(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = (),
                  stream=None) -> SecretMasker:
    """Configure the root logger; returns the masker so callers can mask other output too."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
                                           rename_fields={"levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s[%(process)d]: %(message)s"))
    masker = SecretMasker(secrets)
    handler.addFilter(masker)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that log request URLs (which may carry a bot token) stay at WARNING.
    for noisy in ("urllib3", "httpx", "httpcore", "huey.consumer.Scheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return masker
