"""What ``stemctl`` shows: sizes in human units, durations, plain progress lines off a
terminal, and track ids made from file names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stem_contracts import ID_PATTERN
from stemctl.display import human_duration, human_size, progress_bars
from stemctl.support import track_ids


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (727_244, "710.2 KiB"),
        (1_048_575, "1.0 MiB"),  # 1023.999 KiB would round to "1024.0 KiB"
        (10_590_617, "10.1 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (5 * 1024**5, "5120.0 TiB"),
    ],
)
def test_sizes_are_shown_in_binary_units_with_one_decimal(size: int, shown: str) -> None:
    assert human_size(size) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.0, "0.0 s"), (4.04, "4.0 s"), (59.94, "59.9 s"), (205.4, "3:25"), (3725, "1:02:05")],
)
def test_durations_are_seconds_then_minutes_and_hours(seconds: float, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_off_a_terminal_progress_is_a_line_per_phase_and_per_quarter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with progress_bars() as bars:
        bar = bars.add("song.wav", phase="waiting")
        bar.update(phase="decoding")
        for percent in range(0, 101, 5):
            bar.update(percent / 100, phase="separating")
        bar.update(phase="writing")
        bar.update(phase="writing")
        bar.finish("done in 3.0 s")

    assert capsys.readouterr().err.splitlines() == [
        "song.wav: decoding",
        "song.wav: separating 0 %",
        "song.wav: separating 25 %",
        "song.wav: separating 50 %",
        "song.wav: separating 75 %",
        "song.wav: separating 100 %",
        "song.wav: writing",
        "song.wav: done in 3.0 s",
    ]


def test_track_ids_are_valid_and_distinct_and_read_like_the_file_names() -> None:
    files = [
        Path("/music/Café Song (live).flac"),
        Path("/other/Café Song (live).mp3"),
        Path("a/.hidden.wav"),
        Path("a/—.wav"),
        Path("a/" + "x" * 300 + ".wav"),
    ]

    ids = track_ids(files)

    assert ids[:4] == ["Cafe-Song-live", "Cafe-Song-live-2", "hidden", "track"]
    assert all(re.fullmatch(ID_PATTERN, track) for track in ids)
    assert len(set(ids)) == len(ids)
