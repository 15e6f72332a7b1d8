"""`.map` pulls its inputs lazily with a bounded number outstanding, so memory stays flat however
long the input is; results still come back in input order."""

from __future__ import annotations

import itertools

from runner._function import FEED_CHUNK, MAP_WINDOW


def test_map_keeps_a_bounded_number_of_inputs_outstanding(provider):
    from apps import window

    pulled = 0

    def numbers():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    worst = 0
    with window.app.run():
        for got, value in enumerate(window.ident.map(numbers())):
            assert value == got
            worst = max(worst, pulled - got)
            if got == 30_000:
                break
    # Outstanding inputs never exceed the window (plus one feed chunk in flight).
    assert worst <= MAP_WINDOW + FEED_CHUNK, worst
    assert pulled < 30_000 + MAP_WINDOW + FEED_CHUNK


def test_unordered_map_is_bounded_too(provider):
    from apps import window

    pulled = 0

    def numbers():
        nonlocal pulled
        for i in range(20_000):
            pulled += 1
            yield i

    seen = 0
    worst = 0
    with window.app.run():
        total = 0
        for value in window.ident.map(numbers(), order_outputs=False):
            seen += 1
            total += value
            worst = max(worst, pulled - seen)
    assert total == sum(range(20_000))
    assert worst <= MAP_WINDOW + FEED_CHUNK, worst
