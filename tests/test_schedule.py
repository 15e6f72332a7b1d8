"""Behaviour of `Period` and `Cron`: field syntax, the day rule, time zones and DST, calendar months,
the errors for bad input, and a seeded brute-force comparison of `next_after`.

Standard library only; no provider is needed.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from zoneinfo import ZoneInfo

import pytest

from runner._schedule import Cron, Period, Schedule
from runner.exception import InvalidError

UTC = dt.timezone.utc
MINUTE = dt.timedelta(minutes=1)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def fires(schedule: Schedule, start: dt.datetime, n: int) -> list[dt.datetime]:
    out, t = [], start
    for _ in range(n):
        t = schedule.next_after(t)
        out.append(t)
    return out


def local(t: dt.datetime, zone: str) -> tuple:
    """(day, hour, minute) of `t` on the wall clock of `zone`."""
    w = t.astimezone(ZoneInfo(zone))
    return (w.day, w.hour, w.minute)


# ---- the interface ------------------------------------------------------------------------------
def test_next_after_returns_aware_utc_strictly_after():
    c = Cron("0 9 * * *")
    at_fire = utc(2025, 1, 10, 9, 0)
    nxt = c.next_after(at_fire)
    assert nxt == utc(2025, 1, 11, 9, 0)
    assert nxt.utcoffset() == dt.timedelta(0)
    assert c.next_after(at_fire - dt.timedelta(microseconds=1)) == at_fire
    p = Period(minutes=5)
    assert p.next_after(at_fire) == utc(2025, 1, 10, 9, 5)
    assert p.next_after(at_fire).utcoffset() == dt.timedelta(0)


def test_next_after_accepts_any_aware_datetime():
    plus5 = dt.timezone(dt.timedelta(hours=5))
    t = dt.datetime(2025, 1, 10, 14, 0, tzinfo=plus5)  # 09:00 UTC
    assert Cron("30 9 * * *").next_after(t) == utc(2025, 1, 10, 9, 30)
    assert Period(hours=1).next_after(t) == utc(2025, 1, 10, 10, 0)


@pytest.mark.parametrize("schedule", [Cron("* * * * *"), Period(minutes=1)])
def test_next_after_rejects_naive_datetime(schedule):
    with pytest.raises(InvalidError, match="timezone-aware"):
        schedule.next_after(dt.datetime(2025, 1, 1))


def test_both_are_schedules():
    assert isinstance(Cron("@daily"), Schedule) and isinstance(Period(days=1), Schedule)


# ---- cron field syntax ---------------------------------------------------------------------------
def test_star_fires_every_minute_and_drops_seconds():
    assert fires(Cron("* * * * *"), utc(2025, 1, 1, 10, 0, 30), 3) == [
        utc(2025, 1, 1, 10, 1), utc(2025, 1, 1, 10, 2), utc(2025, 1, 1, 10, 3)]


def test_single_number():
    c = Cron("5 * * * *")
    assert c.next_after(utc(2025, 1, 1, 10, 4, 59)) == utc(2025, 1, 1, 10, 5)
    assert c.next_after(utc(2025, 1, 1, 10, 5)) == utc(2025, 1, 1, 11, 5)


def test_list():
    assert fires(Cron("5,40,20 * * * *"), utc(2025, 1, 1, 10, 0), 4) == [
        utc(2025, 1, 1, 10, 5), utc(2025, 1, 1, 10, 20), utc(2025, 1, 1, 10, 40), utc(2025, 1, 1, 11, 5)]


def test_range():
    assert fires(Cron("10-12 * * * *"), utc(2025, 1, 1, 10, 0), 4) == [
        utc(2025, 1, 1, 10, 10), utc(2025, 1, 1, 10, 11), utc(2025, 1, 1, 10, 12), utc(2025, 1, 1, 11, 10)]


def test_star_step():
    assert [t.minute for t in fires(Cron("*/20 * * * *"), utc(2025, 1, 1, 10, 0), 4)] == [20, 40, 0, 20]


def test_range_step():
    got = fires(Cron("10-30/10 * * * *"), utc(2025, 1, 1, 10, 0), 4)
    assert got == [utc(2025, 1, 1, 10, 10), utc(2025, 1, 1, 10, 20), utc(2025, 1, 1, 10, 30), utc(2025, 1, 1, 11, 10)]


def test_start_step_runs_to_the_top_of_the_field():
    got = fires(Cron("50/5 * * * *"), utc(2025, 1, 1, 10, 0), 3)
    assert got == [utc(2025, 1, 1, 10, 50), utc(2025, 1, 1, 10, 55), utc(2025, 1, 1, 11, 50)]


def test_step_larger_than_range_keeps_the_start():
    assert [t.hour for t in fires(Cron("0 */30 * * *"), utc(2025, 1, 1, 10, 0), 2)] == [0, 0]


def test_hour_and_minute_lists_combine():
    got = fires(Cron("0,30 9,17 * * *"), utc(2025, 1, 1, 10, 0), 5)
    assert [(t.day, t.hour, t.minute) for t in got] == [(1, 17, 0), (1, 17, 30), (2, 9, 0), (2, 9, 30), (2, 17, 0)]


def test_month_step():
    got = fires(Cron("0 0 1 */3 *"), utc(2025, 1, 1, 0, 0), 4)
    assert got == [utc(2025, 4, 1), utc(2025, 7, 1), utc(2025, 10, 1), utc(2026, 1, 1)]


def test_whitespace_between_fields_is_free():
    assert Cron("  0\t9  * *   *  ").next_after(utc(2025, 1, 1)) == utc(2025, 1, 1, 9, 0)


# ---- names and Sunday ----------------------------------------------------------------------------
def test_month_names_case_insensitive():
    got = fires(Cron("0 0 1 JAN,jul *"), utc(2025, 1, 1, 0, 0), 3)
    assert got == [utc(2025, 7, 1), utc(2026, 1, 1), utc(2026, 7, 1)]
    assert Cron("0 0 1 Mar-May *") == Cron("0 0 1 3-5 *")


def test_weekday_names_and_ranges():
    # 2025-01-06 is a Monday
    got = fires(Cron("0 9 * * Mon-FRI"), utc(2025, 1, 3, 10, 0), 3)  # from Friday after 9:00
    assert got == [utc(2025, 1, 6, 9), utc(2025, 1, 7, 9), utc(2025, 1, 8, 9)]
    assert Cron("0 9 * * mon-fri") == Cron("0 9 * * 1-5")
    assert Cron("0 0 * * sun,wed/2") == Cron("0 0 * * 0,3,5,7")


@pytest.mark.parametrize("dow", ["0", "7", "sun", "SUN"])
def test_sunday_is_0_and_7(dow):
    got = fires(Cron(f"0 0 * * {dow}"), utc(2025, 1, 1), 2)  # Wednesday
    assert got == [utc(2025, 1, 5), utc(2025, 1, 12)]
    assert all(t.weekday() == 6 for t in got)


def test_weekday_range_ending_at_7_reaches_sunday():
    got = fires(Cron("0 0 * * 5-7"), utc(2025, 1, 1), 4)
    assert [t.strftime("%a") for t in got] == ["Fri", "Sat", "Sun", "Fri"]


# ---- the day-of-month / day-of-week rule ----------------------------------------------------------
def test_dom_and_dow_both_restricted_match_either():
    # the 13th, or any Friday: Jan 2025 Fridays are 3, 10, 17, 24, 31
    got = fires(Cron("0 0 13 * 5"), utc(2025, 1, 1), 6)
    assert [t.day for t in got] == [3, 10, 13, 17, 24, 31]


def test_only_dow_restricted_means_dow_only():
    got = fires(Cron("0 0 * * 5"), utc(2025, 1, 1), 3)
    assert [t.day for t in got] == [3, 10, 17]


def test_only_dom_restricted_means_dom_only():
    got = fires(Cron("0 0 13 * *"), utc(2025, 1, 1), 3)
    assert got == [utc(2025, 1, 13), utc(2025, 2, 13), utc(2025, 3, 13)]


def test_star_step_dom_counts_as_star_like_cronie():
    # "*/2" starts with "*", so both must match: odd days that are Mondays (Jan 2025 Mondays: 6, 13, 20, 27)
    got = fires(Cron("0 0 */2 * 1"), utc(2025, 1, 1), 3)
    assert [(t.month, t.day) for t in got] == [(1, 13), (1, 27), (2, 3)]


def test_full_dom_range_is_restricted_so_or_rule_gives_every_day():
    assert [t.day for t in fires(Cron("0 0 1-31 * 1"), utc(2025, 1, 1), 3)] == [2, 3, 4]


# ---- macros ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("macro, expansion", [
    ("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *"), ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"), ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"), ("@DAILY", "0 0 * * *"),
])
def test_macros_equal_their_expansion(macro, expansion):
    assert Cron(macro) == Cron(expansion)
    t = utc(2025, 5, 14, 10, 30)
    assert Cron(macro).next_after(t) == Cron(expansion).next_after(t)


def test_macro_fire_times():
    t = utc(2025, 5, 14, 10, 30)  # a Wednesday
    assert Cron("@yearly").next_after(t) == utc(2026, 1, 1)
    assert Cron("@monthly").next_after(t) == utc(2025, 6, 1)
    assert Cron("@weekly").next_after(t) == utc(2025, 5, 18)
    assert Cron("@daily").next_after(t) == utc(2025, 5, 15)
    assert Cron("@hourly").next_after(t) == utc(2025, 5, 14, 11)


# ---- calendar rollover ---------------------------------------------------------------------------
def test_day_31_skips_short_months():
    got = fires(Cron("0 0 31 * *"), utc(2025, 1, 31, 12), 3)
    assert got == [utc(2025, 3, 31), utc(2025, 5, 31), utc(2025, 7, 31)]


def test_year_rollover():
    assert Cron("59 23 31 12 *").next_after(utc(2025, 12, 31, 23, 59)) == utc(2026, 12, 31, 23, 59)
    assert Cron("* * * * *").next_after(utc(2025, 12, 31, 23, 59)) == utc(2026, 1, 1, 0, 0)


def test_leap_day():
    c = Cron("0 0 29 2 *")
    assert c.next_after(utc(2025, 3, 1)) == utc(2028, 2, 29)
    assert c.next_after(utc(2028, 2, 29)) == utc(2032, 2, 29)
    assert c.next_after(utc(2096, 3, 1)) == utc(2104, 2, 29)  # 2100 is not a leap year


def test_feb_30_is_fine_when_the_weekday_can_match():
    # OR rule: Feb 30 never comes, but Mondays in February do
    assert Cron("0 0 30 2 1").next_after(utc(2025, 1, 1)) == utc(2025, 2, 3)
    assert Cron("0 0 31 2,3 *").next_after(utc(2025, 1, 1)) == utc(2025, 3, 31)


# ---- time zones and DST ---------------------------------------------------------------------------
def test_paris_nine_oclock_in_winter_and_summer():
    c = Cron("0 9 * * *", timezone="Europe/Paris")
    assert c.next_after(utc(2025, 1, 10)) == utc(2025, 1, 10, 8, 0)
    assert c.next_after(utc(2025, 7, 10)) == utc(2025, 7, 10, 7, 0)


def test_new_york_weekdays():
    c = Cron("30 8 * * 1-5", timezone="America/New_York")
    # Friday 2025-01-10 14:00 UTC is 09:00 EST, after 08:30: next is Monday 08:30 EST = 13:30 UTC
    assert c.next_after(utc(2025, 1, 10, 14)) == utc(2025, 1, 13, 13, 30)


def test_timezone_day_boundary():
    c = Cron("0 0 1 * *", timezone="Asia/Tokyo")  # midnight on the 1st in Tokyo is 15:00 UTC the day before
    assert c.next_after(utc(2025, 1, 15)) == utc(2025, 1, 31, 15, 0)


def test_dst_gap_fires_once_at_the_end_of_the_gap():
    # Paris 2024-03-31: 02:00 CET -> 03:00 CEST (01:00 UTC); 02:30 does not exist that night
    c = Cron("30 2 * * *", timezone="Europe/Paris")
    assert c.next_after(utc(2024, 3, 30, 12)) == utc(2024, 3, 31, 1, 0)
    assert local(utc(2024, 3, 31, 1, 0), "Europe/Paris") == (31, 3, 0)
    assert c.next_after(utc(2024, 3, 31, 1, 0)) == utc(2024, 4, 1, 0, 30)  # 02:30 CEST next day


def test_dst_gap_several_matches_fire_once():
    c = Cron("0,15,45 2,3 * * *", timezone="Europe/Paris")
    got = fires(c, utc(2024, 3, 31, 0, 0), 4)  # 01:00 CET
    # 02:00, 02:15, 02:45 fall in the gap -> one fire at 03:00 CEST, which also matches; then 03:15, 03:45
    assert got == [utc(2024, 3, 31, 1, 0), utc(2024, 3, 31, 1, 15), utc(2024, 3, 31, 1, 45), utc(2024, 4, 1, 0, 0)]


def test_dst_gap_new_york():
    c = Cron("30 2 * * *", timezone="America/New_York")  # 2024-03-10 02:00 EST -> 03:00 EDT (07:00 UTC)
    assert c.next_after(utc(2024, 3, 10, 0)) == utc(2024, 3, 10, 7, 0)


def test_every_quarter_hour_through_the_gap():
    got = fires(Cron("*/15 * * * *", timezone="Europe/Paris"), utc(2024, 3, 31, 0, 30), 4)
    assert [local(t, "Europe/Paris")[1:] for t in got] == [(1, 45), (3, 0), (3, 15), (3, 30)]
    assert got[1] - got[0] == dt.timedelta(minutes=15)


def test_dst_overlap_fires_once_at_the_first_occurrence():
    # Paris 2024-10-27: 03:00 CEST -> 02:00 CET (01:00 UTC); 02:30 happens at 00:30 UTC and 01:30 UTC
    c = Cron("30 2 * * *", timezone="Europe/Paris")
    assert c.next_after(utc(2024, 10, 26, 12)) == utc(2024, 10, 27, 0, 30)
    assert c.next_after(utc(2024, 10, 27, 0, 30)) == utc(2024, 10, 28, 1, 30)
    # asked from inside the repeated hour (02:15 CET), the second 02:30 does not fire
    assert c.next_after(utc(2024, 10, 27, 1, 15)) == utc(2024, 10, 28, 1, 30)


def test_hourly_through_the_overlap_skips_the_repeated_hour():
    got = fires(Cron("0 * * * *", timezone="Europe/Paris"), utc(2024, 10, 26, 23, 30), 3)
    assert got == [utc(2024, 10, 27, 0, 0), utc(2024, 10, 27, 2, 0), utc(2024, 10, 27, 3, 0)]


def test_overlap_new_york():
    c = Cron("30 1 * * *", timezone="America/New_York")  # 2024-11-03 01:30 EDT (05:30 UTC) and EST (06:30 UTC)
    assert c.next_after(utc(2024, 11, 3, 0)) == utc(2024, 11, 3, 5, 30)
    assert c.next_after(utc(2024, 11, 3, 5, 30)) == utc(2024, 11, 4, 6, 30)


# ---- Period ---------------------------------------------------------------------------------------
def test_period_fixed_units():
    start = utc(2025, 1, 1, 12, 0)
    assert fires(Period(minutes=5), start, 3) == [start + dt.timedelta(minutes=m) for m in (5, 10, 15)]
    assert Period(hours=1, minutes=30).next_after(start) == utc(2025, 1, 1, 13, 30)
    assert Period(days=1).next_after(start) == utc(2025, 1, 2, 12, 0)
    assert Period(weeks=2).next_after(start) == utc(2025, 1, 15, 12, 0)


def test_period_seconds_and_floats():
    start = utc(2025, 1, 1, 12, 0)
    assert fires(Period(seconds=1.5), start, 2) == [start + dt.timedelta(seconds=1.5), start + dt.timedelta(seconds=3)]
    assert Period(hours=0.5).next_after(start) == utc(2025, 1, 1, 12, 30)


def test_period_month_is_a_calendar_month_clamped():
    p = Period(months=1)
    assert p.next_after(utc(2024, 1, 31, 9)) == utc(2024, 2, 29, 9)
    assert p.next_after(utc(2025, 1, 31, 9)) == utc(2025, 2, 28, 9)
    assert p.next_after(utc(2025, 1, 15)) == utc(2025, 2, 15)  # not 30 days
    assert p.next_after(utc(2025, 12, 15)) == utc(2026, 1, 15)
    assert Period(months=2).next_after(utc(2025, 1, 31)) == utc(2025, 3, 31)
    assert Period(months=13).next_after(utc(2025, 1, 31)) == utc(2026, 2, 28)
    assert Period(years=1).next_after(utc(2024, 2, 29)) == utc(2025, 2, 28)


def test_period_months_plus_days():
    assert Period(months=1, days=1).next_after(utc(2025, 1, 31)) == utc(2025, 3, 1)


def test_period_chains_from_the_previous_fire():
    # the daemon passes the previous fire time: a clamped day stays clamped
    assert fires(Period(months=1), utc(2025, 1, 31), 3) == [utc(2025, 2, 28), utc(2025, 3, 28), utc(2025, 4, 28)]


def test_period_is_keyword_only():
    with pytest.raises(TypeError):
        Period(5)  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, needle", [
    ({}, "positive interval"),
    ({"minutes": 0}, "positive interval"),
    ({"seconds": 1e-9}, "positive interval"),
    ({"minutes": -5}, "minutes must be a non-negative number, got -5"),
    ({"seconds": float("nan")}, "seconds must be a non-negative number"),
    ({"hours": float("inf")}, "hours must be a non-negative number"),
    ({"hours": "1"}, "hours must be a non-negative number, got '1'"),
    ({"days": True}, "days must be a non-negative number"),
    ({"months": 1.5}, "months must be a whole number"),
    ({"days": 10**12}, "too long"),
])
def test_period_rejects_bad_values(kwargs, needle):
    with pytest.raises(InvalidError) as info:
        Period(**kwargs)
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert message.startswith("Period(")


def test_period_repr_describe_equality():
    assert repr(Period(minutes=5)) == "Period(minutes=5)"
    assert repr(Period(hours=1, minutes=30)) == "Period(hours=1, minutes=30)"
    assert eval(repr(Period(months=1, seconds=2.5))) == Period(months=1, seconds=2.5)  # noqa: S307
    assert Period(minutes=5).describe() == "every 5m"
    assert Period(hours=1, minutes=30).describe() == "every 1h 30m"
    assert Period(months=1, days=2).describe() == "every 1mo 2d"
    assert Period(seconds=1.5).describe() == "every 1.5s"
    assert Period(weeks=1) == Period(days=7)
    assert Period(years=1) == Period(months=12)
    assert hash(Period(minutes=60)) == hash(Period(hours=1))
    assert Period(minutes=5) != Period(minutes=6)
    assert Period(days=1) != Cron("@daily")
    assert len({Period(minutes=5), Period(minutes=5), Period(seconds=300)}) == 1


# ---- Cron repr, describe, equality -----------------------------------------------------------------
def test_cron_repr_describe_equality():
    c = Cron("0 9 * * 1-5", timezone="Europe/Paris")
    assert repr(c) == "Cron('0 9 * * 1-5', timezone='Europe/Paris')"
    assert repr(Cron("*/5 * * * *")) == "Cron('*/5 * * * *')"
    assert eval(repr(c)) == c  # noqa: S307
    assert c.describe() == "cron 0 9 * * 1-5 (Europe/Paris)"
    assert Cron("*/5  *  * * *").describe() == "cron */5 * * * * (UTC)"
    assert c.cron_string == "0 9 * * 1-5" and c.timezone == "Europe/Paris"
    assert Cron("0 9 * * 1-5") != c
    assert Cron("0 0 * * 0") == Cron("0 0 * * 7")
    assert Cron("0 0 * * *") != Cron("0 1 * * *")
    assert Cron("0 0 1-31 * 1") != Cron("0 0 * * 1")  # same sets, different day rule
    assert hash(Cron("@daily")) == hash(Cron("0 0 * * *"))


# ---- bad cron input -------------------------------------------------------------------------------
@pytest.mark.parametrize("expr, needles", [
    ("", ["expected 5 fields, got 0"]),
    ("* * * *", ["expected 5 fields, got 4", "minute hour day-of-month month day-of-week"]),
    ("0 * * * * *", ["expected 5 fields, got 6"]),
    ("60 * * * *", ["minute field value 60 is out of range 0-59"]),
    ("61 * * * *", ["minute field value 61 is out of range 0-59",
                    'the five fields are "minute hour day-of-month month day-of-week"']),
    ("* 24 * * *", ["hour field value 24 is out of range 0-23"]),
    ("* * 0 * *", ["day-of-month field value 0 is out of range 1-31"]),
    ("* * 32 * *", ["day-of-month field value 32 is out of range 1-31"]),
    ("* * * 0 *", ["month field value 0 is out of range 1-12"]),
    ("* * * 13 *", ["month field value 13 is out of range 1-12"]),
    ("* * * * 8", ["day-of-week field value 8 is out of range 0-7"]),
    ("0-60 * * * *", ["minute field value 60"]),
    ("5-3 * * * *", ["minute field range '5-3' is reversed", "low-high"]),
    ("* * * dec-jan *", ["month field range 'dec-jan' is reversed"]),
    ("*/0 * * * *", ["minute field step '0' in '*/0'", "positive"]),
    ("0 1-5/0 * * *", ["hour field step '0' in '1-5/0'"]),
    ("*/x * * * *", ["minute field step 'x'"]),
    ("*/ * * * *", ["minute field step ''"]),
    ("abc * * * *", ["minute field has 'abc'", "*/S"]),
    ("jan * * * *", ["minute field has 'jan'"]),
    ("* * * foo *", ["month field has 'foo'", "jan-dec"]),
    ("* * * * funday", ["day-of-week field has 'funday'", "sun-sat"]),
    ("* * * * mon-", ["day-of-week field has 'mon-'"]),
    ("1,,2 * * * *", ["minute field has an empty item"]),
    ("1, * * * *", ["minute field has an empty item"]),
    ("-1 * * * *", ["minute field has '-1'"]),
    ("1.5 * * * *", ["minute field has '1.5'"]),
    ("*/5/2 * * * *", ["minute field has '*/5/2'"]),
    ("1-2-3 * * * *", ["minute field has '1-2-3'"]),
    ("? * * * *", ["minute field has '?'"]),
    ("L * * * *", ["minute field has 'L'"]),
    ("@often", ["unknown macro '@often'", "@daily"]),
    ("@reboot", ["unknown macro '@reboot'"]),
    ("0 0 30 2 *", ["never fires", "'30'", "'2'"]),
    ("0 0 31 4,6,9,11 *", ["never fires", "'31'", "'4,6,9,11'"]),
    ("0 0 30,31 feb *", ["never fires"]),
    ("0 0 31 2 */2", ["never fires"]),
])
def test_bad_cron_strings(expr, needles):
    with pytest.raises(InvalidError) as info:
        Cron(expr)
    message = str(info.value)
    assert message.startswith(f'Cron("{expr}"): ')
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("zone", ["Mars/Base", "", "../../etc/passwd", "Europe/", "utc+1"])
def test_unknown_time_zone(zone):
    with pytest.raises(InvalidError) as info:
        Cron("0 9 * * *", timezone=zone)
    message = str(info.value)
    assert f'unknown time zone "{zone}"' in message and "\n" not in message
    assert "Europe/Paris" in message  # the expected form


def test_non_string_inputs():
    with pytest.raises(InvalidError, match="cron string"):
        Cron(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidError, match="unknown time zone"):
        Cron("* * * * *", timezone=None)  # type: ignore[arg-type]


# ---- speed -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("expr", ["0 0 29 2 *", "59 23 31 12 *", "0 0 29 2 */2", "0 0 */28 2 1", "* * * * *",
                                  "0 12 31 */2 *"])
def test_next_after_is_fast(expr):
    c = Cron(expr, timezone="Europe/Paris")
    t = utc(2025, 3, 1)
    n = 200
    began = time.perf_counter()
    for _ in range(n):
        c.next_after(t)
    assert (time.perf_counter() - began) / n < 0.003  # a minute-by-minute search would take seconds


# ---- brute force comparison ------------------------------------------------------------------------
SPECS = {"minute": (0, 59, None), "hour": (0, 23, None), "dom": (1, 31, None),
         "month": (1, 12, ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]),
         "dow": (0, 7, ["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}


def _value_token(rng: random.Random, value: int, field: str) -> str:
    low, _, names = SPECS[field]
    if names and value - low < len(names) and rng.random() < 0.3:
        name = names[value - low]
        return rng.choice([name, name.upper(), name.title()])
    return str(value)


def _gen_item(rng: random.Random, field: str, allow_star: bool = True) -> tuple[str, set[int]]:
    low, high, _ = SPECS[field]
    kind = rng.choice(["star", "star_step", "num", "range", "range_step", "start_step"] if allow_star
                      else ["num", "range", "range_step", "start_step"])
    a, b = sorted(rng.randint(low, high) for _ in range(2))
    step = rng.randint(1, max(1, (high - low) // 2))
    if kind == "star":
        return "*", set(range(low, high + 1))
    if kind == "star_step":
        return f"*/{step}", set(range(low, high + 1, step))
    if kind == "num":
        return _value_token(rng, a, field), {a}
    if kind == "range":
        return f"{_value_token(rng, a, field)}-{_value_token(rng, b, field)}", set(range(a, b + 1))
    if kind == "range_step":
        return f"{a}-{b}/{step}", set(range(a, b + 1, step))
    return f"{_value_token(rng, a, field)}/{step}", set(range(a, high + 1, step))


def _gen_field(rng: random.Random, field: str, star_weight: float) -> tuple[str, set[int], bool]:
    if rng.random() < star_weight:
        low, high, _ = SPECS[field]
        return "*", set(range(low, high + 1)), True
    if rng.random() < 0.3:  # a list
        items = [_gen_item(rng, field, allow_star=False) for _ in range(rng.randint(2, 3))]
        return ",".join(t for t, _ in items), set().union(*(s for _, s in items)), False
    token, values = _gen_item(rng, field)
    return token, values, token.startswith("*")


def _gen_expression(rng: random.Random) -> tuple[str, dict]:
    parts, spec = [], {}
    for field, star_weight in (("minute", 0.2), ("hour", 0.3), ("dom", 0.6), ("month", 0.6), ("dow", 0.6)):
        token, values, star = _gen_field(rng, field, star_weight)
        if field == "dow":
            values = {v % 7 for v in values}
        parts.append(token)
        spec[field], spec[field + "_star"] = values, star
    return " ".join(parts), spec


def _matches(spec: dict, w: dt.datetime) -> bool:
    if w.minute not in spec["minute"] or w.hour not in spec["hour"] or w.month not in spec["month"]:
        return False
    dom_ok, dow_ok = w.day in spec["dom"], (w.weekday() + 1) % 7 in spec["dow"]
    if spec["dom_star"] or spec["dow_star"]:
        return dom_ok and dow_ok
    return dom_ok or dow_ok


def _can_fire(spec: dict) -> bool:
    lengths = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
    if not (spec["dom_star"] or spec["dow_star"]):
        return True
    return any(d <= lengths[m] for m in spec["month"] for d in spec["dom"])


def _brute_utc(spec: dict, t: dt.datetime, window: dt.timedelta) -> dt.datetime | None:
    m = t.replace(second=0, microsecond=0) + MINUTE
    end = t + window
    while m <= end:
        if _matches(spec, m):
            return m
        m += MINUTE
    return None


def _brute_zone(spec: dict, t: dt.datetime, zone: ZoneInfo, window: dt.timedelta) -> dt.datetime | None:
    """Walk UTC minutes; fire when the local clock first passes a matching wall minute (high-water mark)."""
    m = t.replace(second=0, microsecond=0) - dt.timedelta(days=1)
    high = m.astimezone(zone).replace(tzinfo=None)
    end = t + window
    while m <= end:
        m += MINUTE
        wall = m.astimezone(zone).replace(tzinfo=None)
        if wall > high:
            passed, w = False, high + MINUTE
            while w <= wall and not passed:
                passed, w = _matches(spec, w), w + MINUTE
            high = wall
            if passed and m > t:
                return m
    return None


def _random_instant(rng: random.Random, start: dt.datetime, span: dt.timedelta) -> dt.datetime:
    offset = dt.timedelta(seconds=rng.randrange(int(span.total_seconds())), microseconds=rng.choice([0, 1, 500000]))
    return start + offset


def _check_against(cron: Cron, spec: dict, t: dt.datetime, expected: dt.datetime | None, window: dt.timedelta,
                   zone: ZoneInfo) -> None:
    got = cron.next_after(t)
    if expected is not None:
        assert got == expected, (cron, t)
    else:  # nothing in the window: the answer lies beyond it and is a real match
        assert got > t + window, (cron, t, got)
        assert _matches(spec, got.astimezone(zone).replace(tzinfo=None)), (cron, got)


def test_matches_brute_force_in_utc():
    rng = random.Random(20250301)
    window = dt.timedelta(days=3)
    checked = rejected = 0
    while checked < 150:
        expr, spec = _gen_expression(rng)
        try:
            cron = Cron(expr)
        except InvalidError:
            assert not _can_fire(spec), expr
            rejected += 1
            continue
        assert _can_fire(spec), expr
        t = _random_instant(rng, utc(2023, 1, 1), dt.timedelta(days=3 * 365))
        _check_against(cron, spec, t, _brute_utc(spec, t, window), window, ZoneInfo("UTC"))
        checked += 1
    assert rejected < checked


def _transitions(zone: ZoneInfo, year: int) -> list[dt.datetime]:
    out, t = [], utc(year, 1, 1)
    offset = t.astimezone(zone).utcoffset()
    while t.year == year:
        t += dt.timedelta(hours=1)
        now = t.astimezone(zone).utcoffset()
        if now != offset:
            out.append(t)
            offset = now
    return out


@pytest.mark.parametrize("zone_name", ["Europe/Paris", "America/New_York", "Australia/Lord_Howe"])
def test_matches_brute_force_around_dst(zone_name):
    # Lord Howe moves its clocks by 30 minutes
    rng = random.Random(zone_name)
    zone = ZoneInfo(zone_name)
    changes = _transitions(zone, 2024) + _transitions(zone, 2025)
    assert len(changes) == 4
    window = dt.timedelta(hours=30)
    checked = 0
    while checked < 30:
        expr, spec = _gen_expression(rng)
        if rng.random() < 0.7:  # aim at the hours around the change, on every day
            spec["hour"] = set(range(0, 5)) if rng.random() < 0.5 else {1, 2, 3}
            spec.update(dom=set(range(1, 32)), month=set(range(1, 13)), dow=set(range(7)), dom_star=True,
                        dow_star=True)
            expr = " ".join([expr.split()[0], ",".join(map(str, sorted(spec["hour"]))), "* * *"])
        try:
            cron = Cron(expr, timezone=zone_name)
        except InvalidError:
            assert not _can_fire(spec), expr
            continue
        t = _random_instant(rng, rng.choice(changes) - dt.timedelta(hours=6), dt.timedelta(hours=8))
        _check_against(cron, spec, t, _brute_zone(spec, t, zone, window), window, zone)
        checked += 1


def test_consecutive_fires_match_brute_force_through_dst():
    # every fire of a dense expression across both 2024 Paris changes, one by one
    zone = ZoneInfo("Europe/Paris")
    spec = {"minute": {0, 20, 40}, "hour": set(range(24)), "dom": set(range(1, 32)), "month": set(range(1, 13)),
            "dow": set(range(7)), "dom_star": True, "dow_star": True}
    cron = Cron("*/20 * * * *", timezone="Europe/Paris")
    for change in _transitions(zone, 2024):
        t = change - dt.timedelta(hours=3)
        for _ in range(15):
            expected = _brute_zone(spec, t, zone, dt.timedelta(hours=2))
            assert cron.next_after(t) == expected
            t = expected
