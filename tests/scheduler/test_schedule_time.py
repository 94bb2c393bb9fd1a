"""Cron and interval timing: parse tables, next fire times across zones and DST, missed slots."""

from __future__ import annotations

from datetime import datetime

import pytest

from vlmjobs.scheduler.schedule_time import (
    next_cron,
    next_every,
    parse_cron,
    parse_every,
    slots_between,
    zone,
)

D = datetime


@pytest.mark.parametrize(
    ("expr", "field", "expected"),
    [
        ("*/15 * * * *", "minutes", {0, 15, 30, 45}),  # case: step over the whole range
        ("5/20 * * * *", "minutes", {5, 25, 45}),  # case: start/step runs to the end
        ("0 9-17/4 * * *", "hours", {9, 13, 17}),  # case: stepped range
        ("0 0 1,15,31 * *", "days", {1, 15, 31}),  # case: list
        ("0 0 * jan,JUL *", "months", {1, 7}),  # case: month names, any case
        ("0 0 * * mon-fri", "weekdays", {1, 2, 3, 4, 5}),  # case: weekday name range
        ("0 0 * * 7", "weekdays", {0}),  # case: 7 is Sunday
        ("0 0 * * 0,7", "weekdays", {0}),  # case: both Sundays are one day
        ("@daily", "hours", {0}),  # case: macro
        ("@hourly", "minutes", {0}),  # case: macro
    ],
)
def test_parse_cron_fields(expr: str, field: str, expected: set[int]) -> None:
    assert set(getattr(parse_cron(expr), field)) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "has 4 fields"),  # case: too few fields
        ("* * * * * *", "has 6 fields"),  # case: seconds field (not supported)
        ("61 * * * *", "minute field: 61 is outside 0-59"),  # case: out of range
        ("* 24 * * *", "hour field: 24 is outside 0-23"),  # case: hour 24
        ("* * 0 * *", "day-of-month field: 0 is outside 1-31"),  # case: day 0
        ("*/0 * * * *", "step '0'"),  # case: zero step
        ("5-1 * * * *", "runs backwards"),  # case: reversed range
        ("* * * foo *", "month field: 'foo' is not a number"),  # case: unknown name
        ("1,,2 * * * *", "empty item"),  # case: empty list item
        ("@sometimes", "has 1 fields"),  # case: unknown macro
    ],
)
def test_parse_cron_errors(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match="cron") as info:
        parse_cron(expr)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        ("0 2 * * *", "UTC", D(2026, 11, 22, 5, 0), D(2026, 11, 23, 2, 0)),  # case: tomorrow
        ("0 2 * * *", "UTC", D(2026, 11, 22, 1, 59, 59), D(2026, 11, 22, 2, 0)),  # case: today
        ("0 2 * * *", "UTC", D(2026, 11, 22, 2, 0), D(2026, 11, 23, 2, 0)),  # case: strictly after
        ("*/15 * * * *", "UTC", D(2026, 11, 22, 10, 7, 30), D(2026, 11, 22, 10, 15)),  # case: step
        ("0 23 31 12 *", "UTC", D(2026, 12, 31, 23, 0), D(2027, 12, 31, 23, 0)),  # case: year wrap
        ("0 9 * * mon-fri", "UTC", D(2026, 11, 20, 18, 0), D(2026, 11, 23, 9, 0)),  # case: weekend
        ("0 0 13 * fri", "UTC", D(2026, 11, 1), D(2026, 11, 6)),  # case: dom OR dow (a Friday)
        ("0 0 */2 * mon", "UTC", D(2026, 11, 1), D(2026, 11, 9)),  # case: '*/2' dom: AND
        ("0 0 29 2 *", "UTC", D(2026, 1, 1), D(2028, 2, 29)),  # case: next leap day
        ("@weekly", "UTC", D(2026, 11, 22, 0, 0), D(2026, 11, 29)),  # case: Sundays at midnight
        ("0 2 * * *", "Europe/Berlin", D(2026, 11, 22, 5), D(2026, 11, 23, 1)),  # case: CET +1
        ("0 2 * * *", "Europe/Berlin", D(2026, 7, 1, 5), D(2026, 7, 2, 0)),  # case: CEST +2
        ("0 2 * * *", "Asia/Kolkata", D(2026, 11, 22, 0), D(2026, 11, 22, 20, 30)),  # case: +5:30
        # 02:30 does not exist on 8 March 2026 in New York: it fires at 03:30 EDT (07:30 UTC).
        ("30 2 * * *", "America/New_York", D(2026, 3, 8, 5), D(2026, 3, 8, 7, 30)),  # case: gap
        # 01:30 happens twice on 1 November 2026: it fires once, at the first (EDT, 05:30 UTC).
        ("30 1 * * *", "America/New_York", D(2026, 11, 1, 4), D(2026, 11, 1, 5, 30)),  # case: fold
        (
            "30 1 * * *",
            "America/New_York",
            D(2026, 11, 1, 5, 30),
            D(2026, 11, 2, 6, 30),
        ),  # case: once
        # Half-hourly across the fall-back: the repeated hour (06:00-06:59 UTC) does not fire again.
        (
            "*/30 * * * *",
            "America/New_York",
            D(2026, 11, 1, 5, 45),
            D(2026, 11, 1, 7),
        ),  # case: repeat
    ],
)
def test_next_cron(expr: str, tz: str, after: datetime, expected: datetime) -> None:
    assert next_cron(parse_cron(expr), after, zone(tz)) == expected


def test_cron_that_never_fires_is_an_error() -> None:
    with pytest.raises(ValueError, match="never fires"):
        next_cron(parse_cron("0 0 30 2 *"), D(2026, 1, 1), zone("UTC"))


def test_unknown_zone_names_it() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        zone("Mars/Olympus")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),  # case: seconds
        ("10m", 600),  # case: minutes
        ("2h", 7200),  # case: hours
        ("1d", 86400),  # case: days
        ("1h30m", 5400),  # case: combined units
        ("1.5m", 90),  # case: fraction
        (" 10M ", 600),  # case: spaces and case
    ],
)
def test_parse_every(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10", "not a duration"),  # case: no unit
        ("10x", "not a duration"),  # case: unknown unit
        ("", "not a duration"),  # case: empty
        ("m", "not a duration"),  # case: no number
        ("10m5", "not a duration"),  # case: trailing number
        ("0s", "shorter than 1 s"),  # case: zero
        ("0.5s", "shorter than 1 s"),  # case: below beat's resolution
    ],
)
def test_parse_every_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_every(text)


A = D(2026, 11, 22, 12, 0, 0)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (A, D(2026, 11, 22, 12, 0, 10)),  # case: on the anchor: one period later
        (D(2026, 11, 22, 12, 0, 3), D(2026, 11, 22, 12, 0, 10)),  # case: early in a period
        (D(2026, 11, 22, 12, 0, 10), D(2026, 11, 22, 12, 0, 20)),  # case: on a slot: strictly after
        (D(2026, 11, 22, 12, 0, 35), D(2026, 11, 22, 12, 0, 40)),  # case: late: stays on the grid
        (D(2026, 11, 22, 11, 0, 0), D(2026, 11, 22, 12, 0, 10)),  # case: before the anchor
    ],
)
def test_next_every(after: datetime, expected: datetime) -> None:
    assert next_every(A, 10, after) == expected


@pytest.mark.parametrize(
    ("expr", "every_s", "end", "cap", "expected"),
    [
        (None, 10.0, D(2026, 11, 22, 12, 0, 35), 1000, 3),  # case: interval, 3 later slots
        (None, 10.0, D(2026, 11, 22, 12, 0, 9), 1000, 0),  # case: interval, none
        ("0 * * * *", None, D(2026, 11, 22, 17, 0), 1000, 5),  # case: hourly over 5 hours
        ("* * * * *", None, D(2026, 11, 23, 12, 0), 100, 100),  # case: counting stops at the cap
    ],
)
def test_slots_between(
    expr: str | None, every_s: float | None, end: datetime, cap: int, expected: int
) -> None:
    cron = parse_cron(expr) if expr else None
    assert slots_between(cron, every_s, zone("UTC"), A, end, cap) == expected
