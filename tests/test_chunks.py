"""Maps over fast functions travel in chunks; every item still gets its own outcome, and a chunk
that times out or loses its container is split back into single inputs at no cost."""

from __future__ import annotations

import pytest

from runner.exception import FunctionTimeoutError, RemoteError


def _warm(chunky):
    # Enough fast items that the pool measures the function as fast and starts chunking.
    assert list(chunky.work.map(range(3000))) == [x * 10 for x in range(3000)]
    assert chunky.work._pool().chunk_size() > 1


def _inputs(special: int) -> list[int]:
    return list(range(500)) + [special] + list(range(500, 1000))


def test_an_item_error_in_a_chunk_stays_with_that_item(provider):
    from apps import chunky

    with chunky.app.run():
        _warm(chunky)
        out = list(chunky.work.map(_inputs(-1), return_exceptions=True))
        with pytest.raises(ValueError, match="minus one"):
            list(chunky.work.map(_inputs(-1)))
    assert isinstance(out[500], ValueError)
    assert out[:500] == [x * 10 for x in range(500)] and out[501:] == [x * 10 for x in range(500, 1000)]


def test_a_timeout_inside_a_chunk_fails_only_that_item(provider):
    from apps import chunky

    with chunky.app.run():
        _warm(chunky)
        out = list(chunky.work.map(_inputs(-2), return_exceptions=True))
    assert isinstance(out[500], FunctionTimeoutError)
    assert out[:500] == [x * 10 for x in range(500)] and out[501:] == [x * 10 for x in range(500, 1000)]


def test_a_crash_inside_a_chunk_fails_only_that_item(provider):
    from apps import chunky

    with chunky.app.run():
        _warm(chunky)
        out = list(chunky.work.map(_inputs(-3), return_exceptions=True))
    assert isinstance(out[500], RemoteError) and "in-" in str(out[500]) and "item 500" in str(out[500])
    assert out[:500] == [x * 10 for x in range(500)] and out[501:] == [x * 10 for x in range(500, 1000)]


def test_each_item_has_its_own_input_id(provider):
    from apps import chunky

    with chunky.app.run():
        list(chunky.whoami.map(range(3000)))
        ids = list(chunky.whoami.map(range(3000)))
    assert len(set(ids)) == 3000 and all(i.startswith("in-") for i in ids)
