"""Work-hours windows: grammar, days, midnight crossing, time zones and DST."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from gitlab_hook.windows import WindowError, in_windows, next_opening, parse_window, parse_windows

UTC = timezone.utc


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


def test_weekday_window_in_moscow():
    w = parse_windows("mon-fri 09:00-20:00")
    # 2026-11-27 is a Friday; Moscow is UTC+3 all year.
    assert in_windows(w, at("2026-11-27 06:00"), "Europe/Moscow") is not None  # 09:00 MSK
    assert in_windows(w, at("2026-11-27 05:59"), "Europe/Moscow") is None
    assert in_windows(w, at("2026-11-27 16:59"), "Europe/Moscow") is not None  # 19:59
    assert in_windows(w, at("2026-11-27 17:00"), "Europe/Moscow") is None  # 20:00: end excluded
    assert in_windows(w, at("2026-11-28 08:00"), "Europe/Moscow") is None  # Saturday


def test_window_across_midnight_belongs_to_its_start_day():
    w = parse_windows("fri 22:00-02:00")
    assert in_windows(w, at("2026-11-27 23:30"), "UTC")  # Friday night
    assert in_windows(w, at("2026-11-28 01:59"), "UTC")  # Saturday early
    assert not in_windows(w, at("2026-11-28 02:00"), "UTC")
    assert not in_windows(w, at("2026-11-27 01:00"), "UTC")  # Friday early belongs to Thursday


def test_several_windows_and_day_lists():
    w = parse_windows(["mon-fri 09:00-20:00", "sat,sun 12:00-14:00"])
    assert in_windows(w, at("2026-11-29 13:00"), "UTC").text == "sat,sun 12:00-14:00"
    assert len(parse_windows("mon 09:00-10:00; tue 09:00-10:00")) == 2
    assert parse_window("sun-tue 10:00-11:00").days == frozenset({6, 0, 1})
    assert parse_window("daily 00:00-24:00").contains(at("2026-11-27 23:59"))


def test_dst_change_in_berlin_uses_local_wall_clock():
    w = parse_windows("daily 09:00-17:00")
    # Berlin: UTC+1 in winter, UTC+2 after 2026-03-29 02:00 local.
    assert in_windows(w, at("2026-03-28 08:00"), "Europe/Berlin")  # 09:00 CET
    assert in_windows(w, at("2026-03-29 07:00"), "Europe/Berlin")  # 09:00 CEST
    assert not in_windows(w, at("2026-03-29 06:30"), "Europe/Berlin")  # 08:30 CEST
    night = parse_windows("sat 23:00-03:00")
    assert in_windows(night, at("2026-03-29 00:30"), "Europe/Berlin")  # 02:30 does not exist → still inside


def test_next_opening_respects_dst():
    w = parse_windows("mon-fri 09:00-20:00")
    # Friday 2026-03-27 21:00 CET → next opening Monday 2026-03-30 09:00 CEST = 07:00 UTC.
    assert next_opening(w, at("2026-03-27 20:00"), "Europe/Berlin") == at("2026-03-30 07:00")


@pytest.mark.parametrize("bad", ["mon-fri", "9-17", "funday 09:00-10:00", "mon 25:00-26:00",
                                 "mon 09:00-09:00", "mon 09:60-10:00", "mon-fri-sat 09:00-10:00"])
def test_bad_windows_say_what_is_wrong(bad):
    with pytest.raises(WindowError):
        parse_window(bad)


def test_bad_keep_running_stops_the_start_naming_the_key(make_settings):
    from gitlab_hook.settings import ConfigError

    rules = {"runners": [{"vm": "buildfront", "branches": ["stage"], "keep_running": "mon-fri 9-17"}]}
    with pytest.raises(ConfigError) as e:
        make_settings(rules)
    assert "runners.0.keep_running" in str(e.value) and "mon-fri 9-17" in str(e.value)
    assert "rules.yaml" in str(e.value)
