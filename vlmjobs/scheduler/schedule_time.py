"""When a schedule fires: 5-field cron expressions in a time zone, and fixed intervals.

Pure functions on datetimes. Instants going in and out are naive UTC (the
database's convention, ``db/models.utcnow``); a cron expression is matched
against the wall clock of its IANA time zone (``zoneinfo``).

Cron: ``minute hour day-of-month month day-of-week`` with ``*``, ``a-b``,
``*/n``, ``a-b/n``, lists ``a,b``, month and weekday names (``jan``, ``mon``),
weekday 0 or 7 for Sunday, and the macros ``@hourly``, ``@daily``,
``@weekly``, ``@monthly``, ``@yearly``. Day-of-month and day-of-week combine
as in Vixie cron: when both are restricted (neither starts with ``*``) a day
matching EITHER fires; otherwise both must match.

Daylight-saving changes, as cron does them: a wall-clock time that does not
exist (the spring-forward gap) fires one hour later, at the same minute past
the new hour; a wall-clock time that happens twice (fall back) fires once, at
its first occurrence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# (name, low, high, names mapped to numbers)
FIELDS = [
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(MONTHS)}),
    ("day-of-week", 0, 7, {d: i for i, d in enumerate(WEEKDAYS)}),
]
# Feb 29 on a given weekday can be 28 years away; no valid expression needs longer.
SEARCH_YEARS = 29
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the allowed values of each field (weekday 0 = Sunday)."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_star: bool  # day-of-month field starts with '*'
    weekday_star: bool

    def day_matches(self, d: datetime) -> bool:
        in_month = d.day in self.days
        in_week = (d.isoweekday() % 7) in self.weekdays
        if self.day_star or self.weekday_star:
            return in_month and in_week
        return in_month or in_week


def _value(token: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    raw = token.lower()
    value = names.get(raw)
    if value is None:
        if not raw.isdigit():
            hint = f" or a name ({', '.join(names)})" if names else ""
            raise ValueError(f"{name} field: {token!r} is not a number {low}-{high}{hint}")
        value = int(raw)
    if not low <= value <= high:
        raise ValueError(f"{name} field: {value} is outside {low}-{high}")
    return value


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{name} field: step {step_text!r} in {part!r} must be 1 or more")
            step = int(step_text)
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, stop = _value(a, name, low, high, names), _value(b, name, low, high, names)
            if start > stop:
                raise ValueError(f"{name} field: range {base!r} runs backwards")
        elif base:
            start = _value(base, name, low, high, names)
            stop = high if slash else start  # "5/15" means 5, 20, 35, 50
        else:
            raise ValueError(f"{name} field: empty item in {text!r}")
        out.update(range(start, stop + 1, step))
    return out


def parse_cron(text: str) -> Cron:
    """Parse a 5-field expression or macro; ValueError names the bad field and value."""
    expr = MACROS.get(text.strip().lower(), text.strip())
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(
            f"cron {text!r} has {len(parts)} fields: write 5 (minute hour day-of-month month "
            "day-of-week), e.g. '0 2 * * *', or a macro like @daily"
        )
    try:
        sets = [_field(p, *spec) for p, spec in zip(parts, FIELDS, strict=True)]
    except ValueError as e:
        raise ValueError(f"cron {text!r}: {e}") from None
    weekdays = frozenset(d % 7 for d in sets[4])  # 7 is Sunday too
    return Cron(
        text=text.strip(),
        minutes=frozenset(sets[0]),
        hours=frozenset(sets[1]),
        days=frozenset(sets[2]),
        months=frozenset(sets[3]),
        weekdays=weekdays,
        day_star=parts[2].startswith("*"),
        weekday_star=parts[4].startswith("*"),
    )


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError says how to name one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name: UTC, Europe/Berlin, America/New_York"
        ) from None


def _wall_to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    # fold=0: the first of a repeated time; for a missing time, the offset before the gap,
    # which lands one hour later on the new clock.
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC).replace(tzinfo=None)


def _next_wall(cron: Cron, wall: datetime) -> datetime | None:
    """The first wall-clock minute at or after ``wall`` (naive, whole minute) that matches."""
    limit = wall + timedelta(days=366 * SEARCH_YEARS)
    while wall < limit:
        if wall.month not in cron.months:
            wall = (wall.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0)
        elif not cron.day_matches(wall):
            wall = (wall + timedelta(days=1)).replace(hour=0, minute=0)
        elif wall.hour not in cron.hours:
            wall = (wall + timedelta(hours=1)).replace(minute=0)
        elif wall.minute not in cron.minutes:
            wall += timedelta(minutes=1)
        else:
            return wall
    return None


def next_cron(cron: Cron, after: datetime, tz: ZoneInfo) -> datetime:
    """The first instant (naive UTC) strictly after ``after`` (naive UTC) that ``cron`` fires
    at in ``tz``; ValueError when it never fires (e.g. '0 0 30 2 *')."""
    local = after.replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None)
    wall = local.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while True:
        found = _next_wall(cron, wall)
        if found is None:
            raise ValueError(f"cron {cron.text!r} never fires: check its day and month fields")
        instant = _wall_to_utc(found, tz)
        # After a fall-back, a wall time already passed (its first occurrence) maps before
        # ``after``: skip it, so a repeated hour does not fire twice.
        if instant > after:
            return instant
        wall = found + timedelta(minutes=1)


def parse_every(text: str) -> float:
    """Seconds in a duration like 30s, 10m, 2h, 1d or 1h30m; ValueError says the format."""
    raw = text.strip().lower()
    pieces = _DURATION.findall(raw)
    if not raw or "".join(n + u for n, u in pieces) != raw:
        raise ValueError(
            f"interval {text!r} is not a duration: write a number and a unit s, m, h or d "
            "(30s, 10m, 2h, 1d, 1h30m)"
        )
    seconds = sum(float(n) * UNITS[u] for n, u in pieces)
    if seconds < 1:
        raise ValueError(f"interval {text!r} is shorter than 1 s: beat cannot fire that often")
    return seconds


def next_every(anchor: datetime, every_s: float, after: datetime) -> datetime:
    """The first slot ``anchor + k * every_s`` (k >= 1) strictly after ``after``; slots stay on
    the anchor's grid however late the caller is."""
    step = timedelta(seconds=every_s)
    if after < anchor:
        return anchor + step
    k = int((after - anchor) / step) + 1
    return anchor + k * step


def slots_between(
    cron: Cron | None, every_s: float | None, tz: ZoneInfo, start: datetime, end: datetime, cap: int
) -> int:
    """How many slots fall in (start, end], counting at most ``cap`` (missed-run reports)."""
    if every_s is not None:
        return min(cap, max(0, int((end - start) / timedelta(seconds=every_s))))
    assert cron is not None
    n, t = 0, start
    while n < cap:
        t = next_cron(cron, t, tz)
        if t > end:
            break
        n += 1
    return n
