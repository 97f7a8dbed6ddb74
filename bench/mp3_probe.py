"""MP3 duration without decoding: ``consumer.audio``'s frame walker against PyAV (ffmpeg).

A measurement, not a test: ``.venv/bin/python -m bench.mp3_probe [--reps N] [--long-seconds S]``
(PyAV comes with the dev extra). It writes a corpus of mp3 files (and some hostile files named
``.mp3``) into a temporary folder and, for each file, prints:

* the truth: the duration obtained by decoding every frame, twice: with
  ``consumer.audio.decode`` (libsndfile/mpg123, fed the byte range the walker found) and with
  PyAV (ffmpeg's demuxer and decoder; a packet that fails to decode is counted and skipped);
* ``sf.info``: libsndfile's own length for the file (for mp3: mpg123's estimate);
* the walker: ``consumer.audio.probe(path)`` (``sf.info`` plus the frame-header walk);
* PyAV without decoding: ``container.duration`` and ``stream.duration * time_base`` after
  ``av.open`` (which runs ffmpeg's format probe and ``avformat_find_stream_info``), and the
  sum of ``packet.duration`` over ``container.demux(stream)``.

A second table shows what ``decode()`` would get from libsndfile without the walker's byte
range: the file opened by its path, and the whole file fed through a pipe.

Each timed method runs ``--reps`` times; the table shows the median wall time in ms. A cell
is marked ``ok`` when it is within ``--tolerance`` seconds of the truth, ``BAD`` when not,
``?`` when the two decoders disagree with each other. For a file from which neither decoder
gets any audio, refusing (an exception or a duration of 0) counts as ``ok``. The tallies at
the end count those marks; what to conclude from them is left to the reader.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from importlib.metadata import version
from pathlib import Path
from typing import Final, Generic, TypeVar

import av
import av.audio.stream
import av.container
import av.error
import av.logging
import lameenc
import numpy as np
import numpy.typing as npt
import soundfile as sf

from consumer import audio
from devkit.synth import multi_instrument_mix

T = TypeVar("T")

_RATE = 44_100
_MIX_SECONDS = 22.0


# --- the corpus ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    hostile: bool
    what: str
    path: Path


def _lame(
    mix: npt.NDArray[np.float32], rate: int, kbps: int, *, quality: int = 2
) -> Iterator[bytes]:
    """CBR mp3 bytes from float ``[channels, frames]``, as consumer.audio writes them.

    LAME's streaming API (lameenc) writes no Xing/Info header. Yields chunk by chunk.
    """
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(kbps)
    encoder.set_in_sample_rate(rate)
    encoder.set_out_sample_rate(rate)
    encoder.set_channels(mix.shape[0])
    encoder.set_quality(quality)
    encoder.silence()
    block = 1 << 16
    for start in range(0, mix.shape[1], block):
        part = np.clip(mix[:, start : start + block], -1.0, 1.0) * (2**15 - 1)
        yield bytes(encoder.encode(np.ascontiguousarray(part.astype(np.int16).T).tobytes()))
    yield bytes(encoder.flush())


def _mp3(mix: npt.NDArray[np.float32], rate: int, kbps: int, *, quality: int = 2) -> bytes:
    return b"".join(_lame(mix, rate, kbps, quality=quality))


def _mpeg1_frame_size(header: bytes) -> int:
    """Bytes in an MPEG-1 layer III frame at 44.1 kHz (written here, not the walker's)."""
    kbps = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)[header[2] >> 4]
    return 144_000 * kbps // _RATE + ((header[2] >> 1) & 1)


def _id3v2_with_cover(picture_bytes: int, rng: np.random.Generator) -> bytes:
    """An ID3v2.3 tag holding one APIC frame of random 'JPEG' bytes (full of 0xFFE syncs)."""
    image = b"\xff\xd8\xff\xe0" + rng.bytes(picture_bytes - 4)
    body = b"\x00image/jpeg\x00\x03\x00" + image
    frame = b"APIC" + struct.pack(">I", len(body)) + b"\x00\x00" + body
    size = len(frame)
    syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x03\x00\x00" + syncsafe + frame


def _id3v1() -> bytes:
    tag = b"TAG" + b"Title".ljust(30, b"\0") + b"Artist".ljust(30, b"\0")
    tag += b"Album".ljust(30, b"\0") + b"2024" + b"Comment".ljust(30, b"\0") + b"\x0c"
    assert len(tag) == 128
    return tag


def _forged_xing(frames: int) -> bytes:
    """A 128 kbit/s 44.1 kHz stereo frame holding only a Xing tag that claims ``frames``."""
    header = b"\xff\xfb\x90\x00"
    body = header + bytes(32) + b"Xing" + struct.pack(">II", 1, frames)
    return body.ljust(_mpeg1_frame_size(header), b"\0")


def _first_bitrate_index(mp3: bytes, index: int) -> bytes:
    """``mp3`` with its first frame header's bitrate index replaced (padding bit kept)."""
    return mp3[:2] + bytes([(index << 4) | (mp3[2] & 0x0F)]) + mp3[3:]


def _wav(mix: npt.NDArray[np.float32]) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, mix.T, _RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def build_corpus(folder: Path, long_seconds: float) -> list[Sample]:
    rng = np.random.default_rng(1234)
    mix = multi_instrument_mix(_MIX_SECONDS, _RATE, seed=1)
    s1, s2, s3, s20 = _RATE, 2 * _RATE, 3 * _RATE, 20 * _RATE
    cbr128 = _mp3(mix[:, :s20], _RATE, 128)
    cbr320 = _mp3(mix[:, :s20], _RATE, 320)
    tiles = max(1, math.ceil(long_seconds / _MIX_SECONDS))
    files: list[tuple[str, bool, str, Callable[[], bytes]]] = [
        ("cbr320", False, "20 s stereo 44.1 kHz CBR 320k", lambda: cbr320),
        ("cbr128", False, "20 s stereo 44.1 kHz CBR 128k", lambda: cbr128),
        ("mono128", False, "20 s mono CBR 128k", lambda: _mp3(mix[:1, :s20], _RATE, 128)),
        (
            "sr22050",
            False,
            "20 s stereo 22.05 kHz (MPEG-2) 64k",
            lambda: _mp3(multi_instrument_mix(20.0, 22_050, seed=2), 22_050, 64),
        ),
        (
            "vbr_320_96",
            False,
            "2 s at 320k then 20 s at 96k, no Xing",
            lambda: _mp3(mix[:, :s2], _RATE, 320) + _mp3(mix[:, s2:], _RATE, 96),
        ),
        (
            "vbr_96_320",
            False,
            "2 s at 96k then 20 s at 320k, no Xing",
            lambda: _mp3(mix[:, :s2], _RATE, 96) + _mp3(mix[:, s2:], _RATE, 320),
        ),
        (
            "id3v2_100k",
            False,
            "100 KB ID3v2 tag (random cover art) + cbr128",
            lambda: _id3v2_with_cover(100_000, rng) + cbr128,
        ),
        ("id3v1", False, "cbr128 + 128-byte ID3v1 TAG", lambda: cbr128 + _id3v1()),
        ("truncated", False, "cbr128, last frame cut half-way", lambda: cbr128[:-200]),
        (
            "long_cbr320",
            False,
            f"{tiles * _MIX_SECONDS:g} s CBR 320k (tiled mix, LAME q7)",
            lambda: _mp3(np.tile(mix, (1, tiles)), _RATE, 320, quality=7),
        ),
        ("random", True, "64 KiB of random bytes", lambda: rng.bytes(1 << 16)),
        ("text", True, "4 KB of text", lambda: b"Not audio at all, just words.\n" * 140),
        ("empty", True, "0 bytes", lambda: b""),
        ("wav_named", True, "a 3 s 16-bit WAV named .mp3", lambda: _wav(mix[:, :s3])),
        (
            "1frame_zeros",
            True,
            "one 320k frame + 1 MiB of zeros",
            lambda: cbr320[: _mpeg1_frame_size(cbr320[:4])] + bytes(1 << 20),
        ),
        (
            "garbage_hdr",
            True,
            "64 x (header: bitrate idx 15, rate idx 3 + 413 zero bytes)",
            lambda: (b"\xff\xfb\xfe\x00" + bytes(413)) * 64,
        ),
        (
            "lying_hdr",
            True,
            "cbr320 whose first header says 32k",
            lambda: _first_bitrate_index(cbr320, 1),
        ),
        (
            "xing_1e7",
            True,
            "forged Xing claiming 10^7 frames + 1 s of 128k",
            lambda: _forged_xing(10**7) + _mp3(mix[:, :s1], _RATE, 128),
        ),
        (
            "xing_10",
            True,
            "forged Xing claiming 10 frames + cbr128 (20 s)",
            lambda: _forged_xing(10) + cbr128,
        ),
    ]
    samples = []
    for name, hostile, what, make in files:
        path = folder / f"{name}.mp3"
        path.write_bytes(make())
        samples.append(Sample(name, hostile, what, path))
    return samples


# --- the methods -----------------------------------------------------------------------


@dataclass(frozen=True)
class Timed(Generic[T]):
    value: T | None
    error: str | None  # "ExceptionType: message" when the call raised
    ms: float  # median wall time over the repetitions


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _timed(fn: Callable[[], T], reps: int) -> Timed[T]:
    times: list[float] = []
    value: T | None = None
    error: str | None = None
    for _ in range(reps):
        start = time.perf_counter()
        try:
            value, error = fn(), None
        except Exception as exc:
            value, error = None, _describe(exc)
        times.append((time.perf_counter() - start) * 1000)
    return Timed(value, error, statistics.median(times))


def consumer_decode_seconds(path: Path) -> float:
    """Truth 1: every frame decoded by ``consumer.audio.decode`` (libsndfile via the pipe)."""
    info = audio.probe(path)
    decoded = audio.decode(
        path, max_seconds=1e9, target_rate=info.sample_rate, target_channels=info.channels
    )
    frames: int = decoded.samples.shape[1]
    return frames / decoded.sample_rate


@dataclass(frozen=True)
class AvDecoded:
    seconds: float
    bad_packets: int  # packets the decoder rejected (skipped, as the ffmpeg CLI does)


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    if not container.streams.audio:
        raise LookupError(f"no audio stream in what ffmpeg reads as {container.format.name}")
    return container.streams.audio[0]


def pyav_decode(path: Path) -> AvDecoded:
    """Truth 2: every frame decoded by ffmpeg through PyAV."""
    with av.open(str(path)) as container:
        stream = _audio_stream(container)
        seconds, bad = 0.0, 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                bad += 1
                continue
            seconds += sum(frame.samples / frame.sample_rate for frame in frames)
        return AvDecoded(seconds, bad)


def sf_info_seconds(path: Path) -> float:
    """libsndfile's length for the file as it stands (for mp3, mpg123's estimate)."""
    info = sf.info(str(path))
    return float(info.frames / info.samplerate)


def _sf_read_all(source: str | int) -> float:
    with sf.SoundFile(source, closefd=False) as reader:
        frames = 0
        while got := len(reader.read(1 << 16, dtype="float32")):
            frames += got
        return float(frames / reader.samplerate)


def sf_path_decode_seconds(path: Path) -> float:
    """libsndfile decoding the file by its path: what decode() would do with no pipe."""
    return _sf_read_all(str(path))


def sf_pipe_decode_seconds(path: Path) -> float:
    """libsndfile decoding the whole file through a pipe: the pipe without the walker's range."""
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        try:
            with open(write_fd, "wb") as sink:
                sink.write(path.read_bytes())
        except OSError:
            pass  # the reader gave up: nothing left to deliver

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        return _sf_read_all(read_fd)
    finally:
        os.close(read_fd)
        feeder.join()


def walker_seconds(path: Path) -> float:
    """``consumer.audio.probe``: sf.info for the format, the frame walk for mp3's length."""
    return audio.probe(path).duration_seconds


@dataclass(frozen=True)
class AvHeader:
    container_s: float | None  # container.duration / AV_TIME_BASE
    stream_s: float | None  # stream.duration * stream.time_base
    stream_frames: int
    format: str


def pyav_header(path: Path) -> AvHeader:
    """PyAV without reading packets: what ``av.open`` declares."""
    with av.open(str(path)) as container:
        stream = _audio_stream(container)
        container_s = None if container.duration is None else container.duration / av.time_base
        stream_s = None
        if stream.duration is not None and stream.time_base is not None:
            stream_s = float(stream.duration * stream.time_base)
        return AvHeader(container_s, stream_s, stream.frames, container.format.name)


@dataclass(frozen=True)
class AvDemuxed:
    seconds: float
    packets: int
    without_duration: int  # packets whose duration is unset or 0 (the final flush included)


def pyav_demux(path: Path) -> AvDemuxed:
    """PyAV reading every packet without decoding: the sum of packet durations."""
    with av.open(str(path)) as container:
        stream = _audio_stream(container)
        total, packets, missing = Fraction(0), 0, 0
        for packet in container.demux(stream):
            packets += 1
            if packet.duration:
                total += packet.duration * packet.time_base
            else:
                missing += 1
        return AvDemuxed(float(total), packets, missing)


def walker_only_seconds(path: Path) -> float:
    """The header walk alone (``_scan_mp3``), without ``sf.info``; 44.1 kHz assumed."""
    return audio._scan_mp3(path)[1] / _RATE


def ffmpeg_messages(path: Path) -> tuple[str, list[str]]:
    """The format ffmpeg detects and its warnings/errors while opening (untimed)."""
    av.logging.set_level(av.logging.WARNING)
    av.logging.set_skip_repeated(False)  # or a message is folded into a later file's
    try:
        with av.logging.Capture() as logs:
            try:
                with av.open(str(path)) as container:
                    fmt = container.format.name
            except Exception as exc:
                fmt = type(exc).__name__
    finally:
        av.logging.set_level(None)
    seen: list[str] = []
    for level, name, message in logs:
        line = f"[{name}] {message.strip()}"
        if level <= av.logging.WARNING and line not in seen:
            seen.append(line)
    return fmt, seen


# --- judging and printing --------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    sample: Sample
    size: int
    truth_sf: Timed[float]
    truth_av: Timed[AvDecoded]
    sf_path: Timed[float]
    sf_pipe: Timed[float]
    sf_info: Timed[float]
    walker: Timed[float]
    header: Timed[AvHeader]
    demux: Timed[AvDemuxed]
    fmt: str
    fmt_no_ext: str
    messages: list[str]


def _decoded(value: float | None) -> float:
    return value if value is not None else 0.0


def truth_of(row: Row, tol: float) -> float | str:
    """Seconds when both decoders agree, "none" when neither gets audio, else "disputed"."""
    sf_s = _decoded(row.truth_sf.value)
    av_s = _decoded(row.truth_av.value.seconds if row.truth_av.value else None)
    if sf_s <= 0 and av_s <= 0:
        return "none"
    if sf_s > 0 and av_s > 0 and abs(sf_s - av_s) <= tol:
        return av_s
    return "disputed"


def mark(value: float | None, truth: float | str, tol: float) -> str:
    if truth == "disputed":
        return "?"
    if truth == "none":
        return "ok" if value is None or value <= 0 else "BAD"
    assert isinstance(truth, float)
    return "ok" if value is not None and abs(value - truth) <= tol else "BAD"


def _short_error(error: str) -> str:
    return error.split(":", 1)[0].removesuffix("Error")


def _cell(value: float | None, error: str | None, truth: float | str, tol: float) -> str:
    shown = f"{value:.3f}" if value is not None else _short_error(error or "None")
    return f"{shown} {mark(value, truth, tol)}"


METHODS: Final = (
    "sf.info",
    "walker",
    "av container",
    "av stream",
    "av demux",
    "sf decode path",
    "sf decode pipe",
)


def method_values(row: Row) -> dict[str, tuple[float | None, str | None]]:
    header = row.header.value
    return {
        "sf.info": (row.sf_info.value, row.sf_info.error),
        "walker": (row.walker.value, row.walker.error),
        "av container": (header.container_s if header else None, row.header.error),
        "av stream": (header.stream_s if header else None, row.header.error),
        "av demux": (row.demux.value.seconds if row.demux.value else None, row.demux.error),
        "sf decode path": (row.sf_path.value, row.sf_path.error),
        "sf decode pipe": (row.sf_pipe.value, row.sf_pipe.error),
    }


def print_table(rows: Sequence[Row], tol: float) -> None:
    columns = (
        ("file", 12),
        ("truth sf", 9),
        ("truth av", 9),
        ("sf.info s", 14),
        ("walker s", 16),
        ("ms", 7),
        ("av container s", 16),
        ("av stream s", 16),
        ("ms", 7),
        ("av demux s", 14),
        ("ms", 7),
    )
    print(
        " ".join(
            f"{title:>{width}}" if i else f"{title:<{width}}"
            for i, (title, width) in enumerate(columns)
        )
    )
    for row in rows:
        truth = truth_of(row, tol)
        values = method_values(row)
        av_truth = row.truth_av.value
        cells = [
            row.sample.name,
            f"{row.truth_sf.value:.3f}" if row.truth_sf.value is not None else "error",
            f"{av_truth.seconds:.3f}" if av_truth is not None else "error",
            _cell(*values["sf.info"], truth, tol),
            _cell(*values["walker"], truth, tol),
            f"{row.walker.ms:.1f}",
            _cell(*values["av container"], truth, tol),
            _cell(*values["av stream"], truth, tol),
            f"{row.header.ms:.1f}",
            _cell(*values["av demux"], truth, tol),
            f"{row.demux.ms:.1f}",
        ]
        print(
            " ".join(
                f"{c:>{w}}" if i else f"{c:<{w}}"
                for i, (c, (_, w)) in enumerate(zip(cells, columns, strict=True))
            )
        )


def print_decode_table(rows: Sequence[Row], tol: float) -> None:
    print(
        "\nDecoding every frame (1 run each): consumer.audio.decode (walker's whole frames"
        " through a pipe), PyAV, and libsndfile without the walker's byte range"
    )
    widths = (12, 11, 11, 18, 18)
    titles = ("file", "consumer s", "PyAV s", "sf by path s", "sf pipe, all s")
    print(
        " ".join(
            f"{t:>{w}}" if i else f"{t:<{w}}"
            for i, (t, w) in enumerate(zip(titles, widths, strict=True))
        )
    )
    for row in rows:
        truth = truth_of(row, tol)
        values = method_values(row)
        av_truth = row.truth_av.value
        cells = (
            row.sample.name,
            f"{row.truth_sf.value:.3f}"
            if row.truth_sf.value is not None
            else _short_error(row.truth_sf.error or ""),
            f"{av_truth.seconds:.3f}"
            if av_truth is not None
            else _short_error(row.truth_av.error or ""),
            _cell(*values["sf decode path"], truth, tol),
            _cell(*values["sf decode pipe"], truth, tol),
        )
        print(
            " ".join(
                f"{c:>{w}}" if i else f"{c:<{w}}"
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )


def print_notes(rows: Sequence[Row], tol: float) -> None:
    for row in rows:
        print(f"\n{row.sample.name} ({row.size} bytes): {row.sample.what}")
        print(f"  ffmpeg format: {row.fmt} (same bytes without the .mp3 name: {row.fmt_no_ext})")
        if row.header.value is not None:
            print(f"  av stream.frames: {row.header.value.stream_frames}")
        if row.demux.value is not None:
            demuxed = row.demux.value
            print(f"  av demux: {demuxed.packets} packets, {demuxed.without_duration} w/o duration")
        if row.truth_av.value is not None and row.truth_av.value.bad_packets:
            print(f"  av decode: {row.truth_av.value.bad_packets} packets rejected by the decoder")
        truth = truth_of(row, tol)
        if truth == "disputed":
            by_sf = row.truth_sf.value or row.truth_sf.error
            by_av = row.truth_av.value.seconds if row.truth_av.value else row.truth_av.error
            print(f"  truth disputed: consumer.audio.decode {by_sf}, PyAV decode {by_av}")
        errors = {
            "truth sf (consumer.audio.decode)": row.truth_sf.error,
            "truth av (PyAV decode)": row.truth_av.error,
            "sf.info": row.sf_info.error,
            "walker (consumer.audio.probe)": row.walker.error,
            "av.open": row.header.error,
            "av demux": row.demux.error,
            "sf decode by path": row.sf_path.error,
            "sf decode via pipe, whole file": row.sf_pipe.error,
        }
        for what, error in errors.items():
            if error:
                print(f"  {what} raised {error}")
        for message in row.messages:
            print(f"  ffmpeg says: {message}")


def print_tallies(rows: Sequence[Row], tol: float) -> None:
    print(
        "\nTallies (ok = within tolerance of the decoded truth, or refusing a file with no audio)"
    )
    for method in METHODS:
        marks: dict[str, list[str]] = {"ok": [], "BAD": [], "?": []}
        for row in rows:
            value, _ = method_values(row)[method]
            marks[mark(value, truth_of(row, tol), tol)].append(row.sample.name)
        good_ok = sum(
            1 for row in rows if not row.sample.hostile and row.sample.name in marks["ok"]
        )
        good = sum(1 for row in rows if not row.sample.hostile)
        print(
            f"  {method:<14} ok {len(marks['ok'])}/{len(rows)} (good files {good_ok}/{good});"
            f" BAD: {', '.join(marks['BAD']) or '-'}; disputed: {', '.join(marks['?']) or '-'}"
        )


def print_long_timings(row: Row, walker_only: Timed[float], reps: int) -> None:
    seconds = _decoded(row.truth_sf.value) or 1.0
    print(
        f"\nTimings on {row.sample.name} ({row.size / 1e6:.1f} MB, {seconds:.0f} s of audio);"
        f" median of {reps} unless noted"
    )
    timings = (
        ("sf.info (libsndfile open)", row.sf_info.ms),
        ("walker: _scan_mp3 alone", walker_only.ms),
        ("walker: consumer.audio.probe", row.walker.ms),
        ("PyAV: av.open + container/stream duration", row.header.ms),
        ("PyAV: demux, sum packet.duration", row.demux.ms),
        ("decode: consumer.audio.decode (1 run, probes too)", row.truth_sf.ms),
        ("decode: PyAV, every frame (1 run)", row.truth_av.ms),
    )
    for what, ms in timings:
        print(f"  {what:<52} {ms:9.1f} ms  ({ms / (seconds / 60):8.2f} ms per audio minute)")


def measure(sample: Sample, reps: int, no_ext_folder: Path) -> Row:
    path = sample.path
    no_ext = no_ext_folder / path.stem
    os.link(path, no_ext)
    fmt, messages = ffmpeg_messages(path)
    fmt_no_ext, _ = ffmpeg_messages(no_ext)
    return Row(
        sample=sample,
        size=path.stat().st_size,
        truth_sf=_timed(lambda: consumer_decode_seconds(path), 1),
        truth_av=_timed(lambda: pyav_decode(path), 1),
        sf_path=_timed(lambda: sf_path_decode_seconds(path), 1),
        sf_pipe=_timed(lambda: sf_pipe_decode_seconds(path), 1),
        sf_info=_timed(lambda: sf_info_seconds(path), reps),
        walker=_timed(lambda: walker_seconds(path), reps),
        header=_timed(lambda: pyav_header(path), reps),
        demux=_timed(lambda: pyav_demux(path), reps),
        fmt=fmt,
        fmt_no_ext=fmt_no_ext,
        messages=messages,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mp3_probe", description=__doc__)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per method")
    parser.add_argument("--long-seconds", type=float, default=600.0, help="the long CBR file")
    parser.add_argument("--tolerance", type=float, default=0.06, help="seconds (2 mp3 frames)")
    parser.add_argument("--keep", type=Path, help="write the corpus here and keep it")
    args = parser.parse_args(argv)
    libavformat = ".".join(map(str, av.library_versions["libavformat"]))
    print(
        f"PyAV {av.__version__} (libavformat {libavformat}),"
        f" libsndfile {sf.__libsndfile_version__}, lameenc {version('lameenc')},"
        f" reps {args.reps}, tolerance {args.tolerance} s"
    )
    with tempfile.TemporaryDirectory(prefix="mp3_probe-") as tmp:
        folder: Path = args.keep or Path(tmp)
        (folder / "noext").mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        samples = build_corpus(folder, args.long_seconds)
        print(
            f"corpus written to {folder} in {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
        rows = []
        for sample in samples:
            print(f"measuring {sample.name}", file=sys.stderr)
            rows.append(measure(sample, args.reps, folder / "noext"))
        long_row = next(row for row in rows if row.sample.name == "long_cbr320")
        walker_only = _timed(lambda: walker_only_seconds(long_row.sample.path), args.reps)
    print()
    print_table(rows, args.tolerance)
    print_decode_table(rows, args.tolerance)
    print_tallies(rows, args.tolerance)
    print_long_timings(long_row, walker_only, args.reps)
    print_notes(rows, args.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
