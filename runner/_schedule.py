"""Schedules for deployed functions, with Modal's names: `Period(hours=1)` and `Cron("0 9 * * 1-5")`.

The deploy daemon only ever asks one question of a schedule: "given this instant, when is the next
fire?" - `schedule.next_after(t)`, which takes a timezone-aware datetime and returns the first fire
instant strictly after it, as an aware datetime in UTC. The daemon calls it with the deploy time for
the first fire and with the previous fire time afterwards, so:

- `Period`: the first fire is `deploy time + period`, then every period after the previous fire.
  A month is a calendar month: the same day of the next month, clamped to that month's last day
  (Jan 31 + 1 month = Feb 28, or Feb 29 in a leap year). Because each step starts from the previous
  fire, a clamped day stays clamped (Jan 31 -> Feb 28 -> Mar 28). Month arithmetic is done in UTC.
- `Cron`: Vixie-cron / cronie syntax and semantics, five fields evaluated in the wall time of the
  schedule's time zone. A field that starts with `*` (`*`, `*/2`) counts as unrestricted for the
  day rule, as in cronie: when both day-of-month and day-of-week are restricted a day matches if
  EITHER matches, otherwise both must.

Daylight saving time (the rule is "fire when the local clock first reaches a matching wall time"):

- a wall time that does not exist (the spring-forward gap, e.g. 02:30 in Paris on the last Sunday
  of March) fires once, at the first instant after the gap (03:00 local). Several matching times
  in one gap fire once together.
- a wall time that happens twice (fall back, e.g. 02:30 in Paris on the last Sunday of October)
  fires once, at its first occurrence; nothing fires while the clock repeats the hour.

`next_after` steps field by field (month, then day, hour, minute), never minute by minute, so it
returns in well under a millisecond. An expression that can never fire (`0 0 30 2 *`) is rejected
when it is built, like every malformed one, with an `InvalidError` naming the field and token.

Standard library only: the daemon and `runner app list` (via `describe()`) import it.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as _dt
import math
import re
import zoneinfo

from .exception import InvalidError

__all__ = ["Cron", "Period", "Schedule"]

_UTC = _dt.timezone.utc
_MINUTE = _dt.timedelta(minutes=1)
_FIELDS_HINT = 'the five fields are "minute hour day-of-month month day-of-week"'
_SEARCH_YEARS = 100  # a valid expression fires far more often; this only bounds the loop


def _require_aware(t: _dt.datetime) -> None:
    if not isinstance(t, _dt.datetime) or t.tzinfo is None or t.utcoffset() is None:
        raise InvalidError(
            f"next_after() needs a timezone-aware datetime, got {t!r}; e.g. datetime.now(timezone.utc)"
        )


class Schedule:
    """What the deploy daemon uses: `next_after(t)` and `describe()`."""

    def next_after(self, t: _dt.datetime) -> _dt.datetime:
        """The first fire instant strictly after `t` (aware), as an aware datetime in UTC."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short human text, for `runner app list`."""
        raise NotImplementedError

    def _key(self) -> tuple:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))


# ---- Period --------------------------------------------------------------------------------------
_PERIOD_UNITS = (("years", "y"), ("months", "mo"), ("weeks", "w"), ("days", "d"), ("hours", "h"),
                 ("minutes", "m"), ("seconds", "s"))


class Period(Schedule):
    """Fire every fixed interval: `Period(days=1)`, `Period(minutes=5)`, `Period(months=1)`.

    `years` and `months` are calendar units and must be whole numbers; the others may be floats.
    """

    def __init__(self, *, years: int = 0, months: int = 0, weeks: float = 0, days: float = 0,
                 hours: float = 0, minutes: float = 0, seconds: float = 0) -> None:
        values = {"years": years, "months": months, "weeks": weeks, "days": days, "hours": hours,
                  "minutes": minutes, "seconds": seconds}
        given = {name: v for name, v in values.items() if not (_is_number(v) and v == 0)}
        call = _period_call(given)
        for name, value in values.items():
            _check_period_value(call, name, value)
        self.years, self.months, self.weeks, self.days = years, months, weeks, days
        self.hours, self.minutes, self.seconds = hours, minutes, seconds
        self._months = int(years) * 12 + int(months)
        try:
            self._delta = _dt.timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
        except OverflowError:
            raise InvalidError(f"{call} is too long; keep it under a million days") from None
        if self._months == 0 and self._delta <= _dt.timedelta(0):
            raise InvalidError(f"{call} needs a positive interval (at least 1 microsecond), e.g. Period(minutes=5)")

    def next_after(self, t: _dt.datetime) -> _dt.datetime:
        _require_aware(t)
        return _add_months(t.astimezone(_UTC), self._months) + self._delta

    def describe(self) -> str:
        parts = [f"{_num(getattr(self, name))}{unit}" for name, unit in _PERIOD_UNITS if getattr(self, name)]
        return "every " + " ".join(parts)

    def __repr__(self) -> str:
        return _period_call({name: getattr(self, name) for name, _ in _PERIOD_UNITS if getattr(self, name)})

    def _key(self) -> tuple:
        return (self._months, self._delta)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _period_call(given: dict) -> str:
    return "Period(" + ", ".join(f"{name}={value!r}" for name, value in given.items()) + ")"


def _check_period_value(call: str, name: str, value: object) -> None:
    if not _is_number(value) or not math.isfinite(value) or value < 0:  # type: ignore[operator]
        raise InvalidError(f"{call}: {name} must be a non-negative number, got {value!r}; e.g. Period({name}=5)")
    if name in ("years", "months") and value != int(value):  # type: ignore[arg-type]
        raise InvalidError(f"{call}: {name} must be a whole number (calendar {name}), got {value!r}; "
                           f"use days= or hours= for fractions")


def _add_months(t: _dt.datetime, months: int) -> _dt.datetime:
    """The same day `months` calendar months later, clamped to the last day of that month."""
    if not months:
        return t
    year, month0 = divmod(t.month - 1 + months, 12)
    year += t.year
    day = min(t.day, calendar.monthrange(year, month0 + 1)[1])
    return t.replace(year=year, month=month0 + 1, day=day)


# ---- Cron: parsing ---------------------------------------------------------------------------------
_MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_MONTH_NAMES = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_DOW_NAMES = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# name, low, high, names
_FIELD_SPECS = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, _MONTH_NAMES),
    ("day-of-week", 0, 7, _DOW_NAMES),
)
_ITEM = re.compile(r"^(?P<base>\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/(?P<step>[^/]*))?$")
_DIGITS = re.compile(r"^[0-9]+$")


class _Field:
    def __init__(self, field: str, low: int, high: int, names: dict | None, error) -> None:
        self.field, self.low, self.high, self.names, self.error = field, low, high, names, error

    def parse(self, text: str) -> set[int]:
        values: set[int] = set()
        for item in text.split(","):
            values |= self._item(item)
        if self.field == "day-of-week" and 7 in values:
            values.discard(7)
            values.add(0)  # 7 is Sunday too
        return values

    def _item(self, item: str) -> set[int]:
        match = _ITEM.match(item.lower())
        if not match:
            raise self._garbage(item)
        base, step_text = match["base"], match["step"]
        if base == "*":
            low, high = self.low, self.high
        elif "-" in base:
            low, high = (self._value(part, item) for part in base.split("-"))
            if low > high:
                raise self.error(f"{self.field} field range {item!r} is reversed; write it low-high, "
                                 f"e.g. {high}-{low}")
        else:
            low = self._value(base, item)
            high = self.high if step_text is not None else low  # "a/n": a, a+n, ... up to the top
        step = 1 if step_text is None else self._step(step_text, item)
        return set(range(low, high + 1, step))

    def _value(self, token: str, item: str) -> int:
        if _DIGITS.match(token):
            value = int(token)
        elif self.names and token in self.names:
            return self.names[token]
        else:
            raise self._garbage(item)
        if not self.low <= value <= self.high:
            raise self.error(f"{self.field} field value {value} is out of range {self.low}-{self.high}; "
                             f"{_FIELDS_HINT}")
        return value

    def _step(self, text: str, item: str) -> int:
        if not _DIGITS.match(text) or int(text) == 0:
            raise self.error(f"{self.field} field step {text!r} in {item!r} must be a positive whole number, "
                             f"e.g. */5")
        return int(text)

    def _garbage(self, item: str) -> InvalidError:
        names = ""
        if self.names:
            first, last = list(self.names)[0], list(self.names)[-1]
            names = f" (names {first}-{last} allowed)"
        shown = f"{item!r}" if item else "an empty item"
        return self.error(f"{self.field} field has {shown}; expected *, N, N-M, */S, N-M/S or N/S with "
                          f"N in {self.low}-{self.high}{names}, or a comma-separated list of them")


class Cron(Schedule):
    """Fire on a cron schedule in a time zone: `Cron("0 9 * * 1-5", timezone="Europe/Paris")`.

    Five fields (minute hour day-of-month month day-of-week) or a macro: @yearly, @annually,
    @monthly, @weekly, @daily, @midnight, @hourly.
    """

    def __init__(self, cron_string: str, timezone: str = "UTC") -> None:
        self.cron_string = cron_string
        self.timezone = timezone
        if not isinstance(cron_string, str):
            raise InvalidError(f"Cron() needs a cron string such as \"0 9 * * *\", got {cron_string!r}")
        self._tz = _zone(cron_string, timezone)
        fields = self._split(cron_string)
        parsed = [_Field(name, low, high, names, self._error).parse(text)
                  for text, (name, low, high, names) in zip(fields, _FIELD_SPECS)]
        self._minutes, self._hours, doms, months, dows = (tuple(sorted(values)) for values in parsed)
        self._doms, self._months, self._dows = frozenset(doms), months, frozenset(dows)
        self._dom_star, self._dow_star = fields[2].startswith("*"), fields[4].startswith("*")
        self._check_fires(fields)

    def _error(self, problem: str) -> InvalidError:
        return InvalidError(f'Cron("{self.cron_string}"): {problem}')

    def _split(self, cron_string: str) -> list[str]:
        text = cron_string.strip()
        if text.startswith("@"):
            if text.lower() not in _MACROS:
                raise self._error(f"unknown macro {text!r}; use one of {', '.join(_MACROS)} or five fields")
            text = _MACROS[text.lower()]
        fields = text.split()
        if len(fields) != 5:
            raise self._error(f"expected 5 fields, got {len(fields)}; {_FIELDS_HINT}, e.g. \"0 9 * * 1-5\"")
        return fields

    def _check_fires(self, fields: list[str]) -> None:
        if not (self._dom_star or self._dow_star) or (self._dom_star and len(self._doms) == 31):
            return  # any weekday, or the OR rule: every month has every weekday
        # leap years included: Feb 29 comes round, and over 28 years each date falls on each weekday
        if any(day <= calendar.monthrange(2000, month)[1] for month in self._months for day in self._doms):
            return
        raise self._error(f"never fires: day-of-month {fields[2]!r} never occurs in month {fields[3]!r}; "
                          f"pick days that exist in those months")

    # ---- the search ----
    def next_after(self, t: _dt.datetime) -> _dt.datetime:
        _require_aware(t)
        wall = t.astimezone(self._tz).replace(tzinfo=None)
        candidate = self._next_wall(wall)
        fire = self._fire_instant(candidate)
        while fire <= t:  # only while the clock repeats an hour: those wall times fired already
            candidate = self._next_wall(candidate)
            fire = self._fire_instant(candidate)
        return fire

    def _next_wall(self, wall: _dt.datetime) -> _dt.datetime:
        """The first matching wall time (naive, whole minute) strictly after `wall`."""
        t = wall.replace(second=0, microsecond=0) + _MINUTE
        limit = t.year + _SEARCH_YEARS
        while t.year <= limit:
            if t.month not in self._months:
                t = self._next_month(t)
            elif not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + _dt.timedelta(days=1)
            elif t.hour not in self._hours:
                t = self._next_hour(t)
            elif t.minute not in self._minutes:
                t = self._next_minute(t)
            else:
                return t
        raise InvalidError(f'Cron("{self.cron_string}"): no fire time within {_SEARCH_YEARS} years of {wall}')

    def _next_month(self, t: _dt.datetime) -> _dt.datetime:
        i = bisect.bisect_right(self._months, t.month)
        year, month = (t.year, self._months[i]) if i < len(self._months) else (t.year + 1, self._months[0])
        return _dt.datetime(year, month, 1)

    def _next_hour(self, t: _dt.datetime) -> _dt.datetime:
        i = bisect.bisect_right(self._hours, t.hour)
        if i < len(self._hours):
            return t.replace(hour=self._hours[i], minute=0)
        return t.replace(hour=0, minute=0) + _dt.timedelta(days=1)

    def _next_minute(self, t: _dt.datetime) -> _dt.datetime:
        i = bisect.bisect_right(self._minutes, t.minute)
        if i < len(self._minutes):
            return t.replace(minute=self._minutes[i])
        return t.replace(minute=0) + _dt.timedelta(hours=1)

    def _day_matches(self, t: _dt.datetime) -> bool:
        dom = t.day in self._doms
        dow = t.isoweekday() % 7 in self._dows
        if self._dom_star or self._dow_star:
            return dom and dow
        return dom or dow

    def _fire_instant(self, wall: _dt.datetime) -> _dt.datetime:
        """When the local clock first reaches `wall`: its first occurrence, or the end of a DST gap."""
        first = wall.replace(tzinfo=self._tz, fold=0).astimezone(_UTC)
        if first.astimezone(self._tz).replace(tzinfo=None) == wall:
            return first
        # In a gap, fold=1 reads the wall time with the offset after the change (an earlier instant);
        # the gap ends between the two readings: find the first second whose wall time is past `wall`.
        low = int(wall.replace(tzinfo=self._tz, fold=1).timestamp())
        high = int(first.timestamp())
        while low < high:
            mid = (low + high) // 2
            if _dt.datetime.fromtimestamp(mid, self._tz).replace(tzinfo=None) >= wall:
                high = mid
            else:
                low = mid + 1
        return _dt.datetime.fromtimestamp(high, _UTC)

    def describe(self) -> str:
        return f"cron {' '.join(self.cron_string.split())} ({self.timezone})"

    def __repr__(self) -> str:
        if self.timezone == "UTC":
            return f"Cron({self.cron_string!r})"
        return f"Cron({self.cron_string!r}, timezone={self.timezone!r})"

    def _key(self) -> tuple:
        return (self._minutes, self._hours, self._doms, self._months, self._dows, self._dom_star,
                self._dow_star, self._tz.key)


def _zone(cron_string: str, timezone: str) -> zoneinfo.ZoneInfo:
    try:
        if not isinstance(timezone, str) or not timezone:
            raise ValueError
        return zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        shown = f'"{timezone}"' if isinstance(timezone, str) else repr(timezone)
        raise InvalidError(f'Cron("{cron_string}", timezone={shown}): unknown time zone {shown}; '
                           f'use an IANA name such as "UTC" or "Europe/Paris"') from None
