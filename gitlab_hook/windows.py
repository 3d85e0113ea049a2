"""Work-hours windows such as ``mon-fri 09:00-20:00`` in a time zone; DST-safe; pure.

Grammar (one window; several are given as a YAML list or separated by ``;``)::

    window := days " " HH:MM "-" HH:MM
    days   := "daily" | "*" | day ("-" day)? ("," day ("-" day)?)*
    day    := mon | tue | wed | thu | fri | sat | sun

An end earlier than the start crosses midnight: ``fri 22:00-02:00`` runs from Friday 22:00 to
Saturday 02:00. ``00:00-24:00`` is the whole day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WINDOW_RE = re.compile(r"^\s*(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")


class WindowError(ValueError):
    """A window that does not parse; the text says what is wrong and shows the grammar."""


@dataclass(frozen=True)
class Window:
    """Days of the week (0 = Monday) and a start/end time of day in minutes."""

    days: frozenset[int]
    start: int
    end: int  # may be <= start: crosses midnight
    text: str

    def contains(self, local: datetime) -> bool:
        """Whether a local (zone-aware) time falls inside the window."""
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # Crossing midnight: the evening part belongs to its day, the early part to the day before.
        return (day in self.days and minute >= self.start) or ((day - 1) % 7 in self.days and minute < self.end)


def _minutes(hhmm: str, *, allow_24: bool) -> int:
    h, m = (int(x) for x in hhmm.split(":"))
    if allow_24 and (h, m) == (24, 0):
        return 24 * 60
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise WindowError(f"{hhmm} is not a time of day (HH:MM, 00:00 to 23:59, or 24:00 as an end)")
    return h * 60 + m


def _days(spec: str) -> frozenset[int]:
    if spec in ("daily", "*"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in spec.split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(e not in DAYS for e in ends):
            raise WindowError(f"{part!r} is not a day or day range (use mon..sun, e.g. mon-fri or sat,sun)")
        a, b = DAYS.index(ends[0]), DAYS.index(ends[-1])
        out.update(DAYS.index(DAYS[(a + i) % 7]) for i in range((b - a) % 7 + 1))
    return frozenset(out)


def parse_window(text: str) -> Window:
    """Parse one window, e.g. ``mon-fri 09:00-20:00``."""
    m = _WINDOW_RE.match(text.lower())
    if not m:
        raise WindowError(f"{text!r} is not a window like 'mon-fri 09:00-20:00' (days, a space, HH:MM-HH:MM)")
    start = _minutes(m["start"], allow_24=False)
    end = _minutes(m["end"], allow_24=True)
    if start == end:
        raise WindowError(f"{text!r} is empty: start and end are the same")
    return Window(_days(m["days"]), start, end, text.strip())


def parse_windows(value: str | list[str] | None) -> tuple[Window, ...]:
    """Parse the ``keep_running`` value: one window, a ``;``-separated string, or a list."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else value.split(";")
    return tuple(parse_window(item) for item in items if item.strip())


def in_windows(windows: tuple[Window, ...], when: datetime, tz: str) -> Window | None:
    """The window that covers ``when`` (aware) in zone ``tz``, or None."""
    local = when.astimezone(ZoneInfo(tz))
    for w in windows:
        if w.contains(local):
            return w
    return None


def next_opening(windows: tuple[Window, ...], after: datetime, tz: str, horizon_days: int = 8) -> datetime | None:
    """The next moment (UTC) a window opens after ``after``, for start-at-window-open; minute precision."""
    zone = ZoneInfo(tz)
    local = after.astimezone(zone)
    best: datetime | None = None
    for offset in range(horizon_days):
        day = (local + timedelta(days=offset)).date()
        for w in windows:
            if day.weekday() not in w.days:
                continue
            naive = datetime.combine(day, time(w.start // 60, w.start % 60))
            # fold=0: in a repeated hour take the first; a skipped hour resolves forward.
            opening = naive.replace(tzinfo=zone).astimezone(timezone.utc)
            if opening > after and (best is None or opening < best):
                best = opening
        if best is not None:
            return best
    return best
