"""Human durations such as ``30m``, ``90s``, ``1h30m`` or ``2d`` as seconds."""

from __future__ import annotations

import math
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|d|h|m|s)", re.IGNORECASE)  # "ms" before "m"
_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str | int | float) -> float:
    """Return seconds for ``"30m"``, ``"1h30m"``, ``"45s"`` or a bare number of seconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration like 30m, 90s or 1h30m")
    if isinstance(text, (int, float)):
        try:
            value = float(text)
        except OverflowError:  # an int too large for a float
            value = math.inf
        if not math.isfinite(value):
            raise ValueError("a duration must be a finite number")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return value
    if not isinstance(text, str):
        raise ValueError("expected a duration like 30m, 90s or 1h30m")
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return parse_duration(float(s))
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if s[pos:m.start()].strip():
            break
        total += float(m.group(1)) * _UNIT[m.group(2).lower()]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        raise ValueError(f"{text!r} is not a duration like 30m, 90s or 1h30m")
    return parse_duration(total)  # refuses an overflow to infinity


def format_duration(seconds: float) -> str:
    """Render seconds compactly, e.g. ``1h30m`` or ``45s``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)
