"""durations.py: "30m", "1h30m", "90s" ↔ seconds."""

from __future__ import annotations

import math

import pytest

from gitlab_hook.durations import format_duration, parse_duration


@pytest.mark.parametrize("text, seconds", [
    ("30m", 1800), ("90s", 90), ("1h30m", 5400), ("1h 30m", 5400), ("2d", 172800), ("1d2h3m4s", 93784),
    ("45s", 45), ("1.5h", 5400), ("0.5m", 30), ("500ms", 0.5), ("1ms", 0.001), ("1s500ms", 1.5),
    ("2m500ms", 120.5), ("90", 90), ("0", 0), ("0s", 0), ("  30m  ", 1800), ("30M", 1800), ("1H", 3600),
    ("12.25", 12.25), ("10 m", 600),
])
def test_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value, seconds", [(0, 0.0), (60, 60.0), (1.5, 1.5), (86400, 86400.0)])
def test_parse_numbers(value, seconds):
    out = parse_duration(value)
    assert out == seconds and isinstance(out, float)


@pytest.mark.parametrize("text", [
    "", "   ", "m", "30 minutes", "30min", "1y", "h1", "-5m", "5m-", "1h30", "1h,30m", "30m later", "abc",
    "5 5m", "1e3s", "1,5h", "½h",
])
def test_parse_refuses(text):
    with pytest.raises(ValueError) as exc:
        parse_duration(text)
    assert "duration" in str(exc.value)


@pytest.mark.parametrize("value", [-1, -0.5, True, False, None, [], {}, b"30m", math.nan, math.inf, -math.inf,
                                   10 ** 400, "1" * 400, "9" * 400 + "s"])
def test_parse_refuses_other_values(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_error_names_the_input():
    with pytest.raises(ValueError, match="'soon'"):
        parse_duration("soon")


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (1, "1s"), (45, "45s"), (59, "59s"), (60, "1m"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m"),
    (86400, "1d"), (93784, "1d2h3m4s"), (172800, "2d"), (3601, "1h1s"), (59.6, "1m"), (0.4, "0s"), (7 * 86400, "7d"),
])
def test_format(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, 1, 59, 60, 61, 3599, 3600, 3661, 86399, 86400, 90061, 10 ** 7])
def test_format_then_parse_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == seconds
