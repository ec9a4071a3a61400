"""Handing a container's log stream over (serve --detach): timestamps, the resume point."""

from __future__ import annotations

import pytest

from harness.runtime.docker_logs import LogCursor, ResumeFilter, split_timestamp


def test_split_timestamp_strips_dockers_prefix_to_nanoseconds() -> None:
    ts, message = split_timestamp(b"2024-05-01T10:00:02.000000123Z tick 7\n")
    assert message == b"tick 7\n"
    assert ts == 1714557602 * 1_000_000_000 + 123
    assert split_timestamp(b"2024-05-01T12:00:02.5+02:00 x")[0] == 1714557602_500_000_000
    # A partial message (no newline) keeps its bytes; no prefix: unchanged, no time.
    assert split_timestamp(b"2024-05-01T10:00:02.000000000Z abc") == (1714557602 * 10**9, b"abc")
    assert split_timestamp(b"no timestamp here\n") == (None, b"no timestamp here\n")


def resumed(stream: list[int], copied: int) -> list[int]:
    """What a second follower writes after the first copied ``stream[:copied]``: Docker's
    answer to ``since`` (whole seconds) is filtered by the resume point."""
    cursor = LogCursor()
    for ts in stream[:copied]:
        cursor.add(ts)
    since_s, skip = cursor.resume_point()
    answer = [ts for ts in stream if ts >= since_s * 1_000_000_000]
    keep = ResumeFilter(since_s, skip)
    return [ts for ts in answer if keep.keep(ts)]


S = 1_000_000_000


@pytest.mark.parametrize("copied", [0, 1, 3, 5, 6, 8, 9])
def test_resume_point_neither_repeats_nor_loses(copied: int) -> None:
    # Same-nanosecond stamps and stdout/stderr stored slightly out of time order.
    stream = [10 * S, 10 * S + 5, 11 * S + 1, 11 * S + 1, 10 * S + 999_999_999, 12 * S,
              12 * S - 1, 12 * S + 7, 13 * S]  # fmt: skip
    assert resumed(stream, copied) == stream[copied:]


def test_log_cursor_keeps_only_the_last_two_seconds() -> None:
    cursor = LogCursor()
    for i in range(1000):
        cursor.add(i * S // 10)  # ten messages a second for 100 s
    assert len(cursor._recent) <= 21
    assert cursor.resume_point() == (98, 20)
    assert LogCursor().resume_point() == (0, 0)
