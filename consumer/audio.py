"""Probe, decode and encode audio: pure functions over paths and arrays.

Decoding goes through libsndfile (``soundfile``) for all three accepted containers. Since
1.1 libsndfile decodes MPEG audio itself (with libmpg123), so wav, flac and mp3 share one
decoder, one error type and no ffmpeg subprocess. The container's own header decides the
format, never the file's name.

mp3 needs two detours, both found by measuring libsndfile 1.2.2:

* libsndfile reports mpg123's *estimate* of an mp3's length, and it stops reading there.
  Without a Xing/Info header (streams cut from radio, LAME's streaming API, ...) the
  estimate is the file size over the first frame's bitrate, so a VBR file can be off by a
  factor of several either way: audio would be cut off silently, or a short track that
  starts with silence rejected as too long. :func:`probe` therefore counts an mp3's
  frames by walking their headers (no decoding), and :func:`decode` feeds the mp3 to
  libsndfile through a pipe, where it cannot estimate and reads to the end of the stream.
* Opened from a pipe, libsndfile cannot find the first frame behind an ID3v2 tag larger
  than its header buffer (30 KB worked, 60 KB did not; cover art is often larger), and
  fails on a frame cut off by the end of the file instead of stopping. The pipe therefore
  carries only the whole frames the header walk found.

A limit on the frames actually read backs up every declared duration, so a stream that
turns out longer than its header said stops at ``max_seconds`` either way.

Encoding mp3 uses lameenc (LAME), exactly as Demucs' own writer
``demucs.audio.encode_mp3`` does: 16-bit PCM from ``clamp(x, -1, 1) * (2**15 - 1)``
truncated toward zero, CBR, quality 2 (this module's default; the worker passes
``STEM_MP3_QUALITY``, default 3: half the encoding CPU, no loss measured by
``python -m bench costs``). Two differences, both deliberate: the output
sample rate is pinned to the input's (LAME otherwise resamples low bitrates, e.g.
96 kbit/s stereo at 44.1 kHz comes out at 32 kHz), and the PCM is fed in blocks so a long
track is never held twice. wav and flac get the same 16-bit integers through libsndfile,
so the three formats quantise identically (``sampleFormat`` ``pcm16``). ``pcm24`` wav/flac
quantise the same way to 24 bits (``clamp(x, -1, 1) * (2**23 - 1)``, truncated), and
``float32`` wav stores the samples as IEEE float, clamped to [-1, 1] unless the caller
asks for none (Demucs' ``--float32 --clip-mode none``). LAME's streaming API writes no Xing/LAME
gapless tag, so decoders play the encoder delay and padding: a decoded mp3 starts
576 + 529 samples late and runs up to ~50 ms long (the same as Demucs' writer).

:func:`resampled` converts a stem to another sample rate with libsoxr (``soxr``, its
"very high quality" setting), streamed block by block.

Errors: bad input raises a :class:`~consumer.errors.StemError` (``CorruptAudio``,
``UnsupportedAudio``, ``AudioTooLong``) whose message says what is wrong. Arguments a
caller should never pass (a negative limit, a 3-D array, a non-standard bitrate) raise
``ValueError``: those are bugs in the worker, not in the audio.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, Protocol

import julius
import lameenc
import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr
import torch
from demucs.audio import convert_audio_channels

from consumer.errors import AudioTooLong, CorruptAudio, UnsupportedAudio
from stem_contracts import CONTENT_TYPES as _CONTRACT_CONTENT_TYPES

__all__ = [
    "CONTENT_TYPES",
    "ENCODE_BLOCK_FRAMES",
    "MP3_SAMPLE_RATES",
    "AudioFormat",
    "AudioInfo",
    "BlockSource",
    "DecodedAudio",
    "EncodedAudio",
    "SampleFormat",
    "decode",
    "encode",
    "probe",
    "resampled",
]

AudioFormat = Literal["wav", "mp3", "flac"]
SampleFormat = Literal["pcm16", "pcm24", "float32"]
_SF_SUBTYPES: Final[dict[SampleFormat, str]] = {
    "pcm16": "PCM_16",
    "pcm24": "PCM_24",
    "float32": "FLOAT",
}

# The wire contract owns the content types (staged sources and stems share them).
CONTENT_TYPES: Final[Mapping[str, str]] = _CONTRACT_CONTENT_TYPES

# libsndfile's major format names for the containers we accept. RF64/W64 and the rest
# are other containers, whatever the payload.
_SF_FORMATS: Final[dict[str, AudioFormat]] = {
    "WAV": "wav",
    "WAVEX": "wav",
    "FLAC": "flac",
    "MP3": "mp3",
}
_SF_WRITE_FORMATS: Final[dict[AudioFormat, str]] = {"wav": "WAV", "flac": "FLAC"}

# Headers outside these bounds are damaged, not exotic.
_MIN_SAMPLE_RATE: Final = 8_000
_MAX_SAMPLE_RATE: Final = 384_000
_MAX_CHANNELS: Final = 8
_SF_UNKNOWN_LENGTH: Final = 2**63 - 1  # libsndfile's SF_COUNT_MAX

# Containers libsndfile cannot open but that are clearly audio of another kind: named in
# UnsupportedAudio rather than called corrupt. (offset, magic bytes, name)
_FOREIGN_MAGIC: Final[tuple[tuple[int, bytes, str], ...]] = (
    (4, b"ftyp", "MP4/M4A"),
    (0, b"OggS", "Ogg"),
    (0, b"FORM", "AIFF/IFF"),
    (0, b"caff", "CAF"),
    (0, b"wvpk", "WavPack"),
    (0, b"MAC ", "Monkey's Audio"),
    (0, b"#!AMR", "AMR"),
    (0, b"MThd", "MIDI"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "ASF/WMA"),
)

_MP3_BITRATES_KBPS: Final = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
# The MPEG-1 rates: the only ones at which every bitrate above exists, so the CBR asked
# for is the CBR written.
_MP3_SAMPLE_RATES: Final = (32_000, 44_100, 48_000)
ENCODE_BLOCK_FRAMES: Final = 2**16
"""Frames an encoder reads from its block source at a time."""
MP3_SAMPLE_RATES: Final = _MP3_SAMPLE_RATES
"""The rates mp3 stems can have."""
_IO_CHUNK_BYTES: Final = 1 << 20


@dataclass(frozen=True)
class AudioInfo:
    """What a file declares about its audio, read without decoding the samples."""

    format: AudioFormat
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class DecodedAudio:
    """Samples ready for the model: float32 ``[channels, frames]``, C-contiguous.

    ``source`` is the original file's info; its ``frames`` is what was actually decoded.
    """

    samples: npt.NDArray[np.float32]
    sample_rate: int
    source: AudioInfo


@dataclass(frozen=True)
class EncodedAudio:
    """A written audio file and the facts a result event reports about it."""

    path: Path
    format: AudioFormat
    content_type: str
    size_bytes: int
    sha256: str
    sample_rate: int
    channels: int
    duration_seconds: float


def probe(path: Path) -> AudioInfo:
    """Read a file's format, rate, channels and length without decoding its samples.

    Raises ``UnsupportedAudio`` for a readable file that is not wav/mp3/flac and
    ``CorruptAudio`` for one that cannot be parsed or declares implausible values.
    """
    return _probe(path).info


def decode(
    path: Path,
    *,
    max_seconds: float,
    target_rate: int,
    target_channels: int = 2,
    block_frames: int = 2**18,
) -> DecodedAudio:
    """Decode a file to float32 ``[target_channels, frames]`` at ``target_rate``.

    The declared duration is checked against ``max_seconds`` before any sample is read,
    and the frames actually read are checked again while reading. Channels are converted
    as ``demucs.audio.convert_audio_channels`` does (mono is duplicated, extra channels
    are dropped); the rate is converted with ``julius.resample_frac`` only when it differs.
    """
    if max_seconds <= 0 or target_rate <= 0 or target_channels < 1 or block_frames < 1:
        raise ValueError(
            f"invalid decode arguments: max_seconds={max_seconds}, target_rate={target_rate},"
            f" target_channels={target_channels}, block_frames={block_frames}"
        )
    probed = _probe(path)
    info = probed.info
    if info.duration_seconds > max_seconds:
        raise AudioTooLong(
            f"{path.name}: {info.format} declares {info.duration_seconds:.1f} s,"
            f" over the {max_seconds:g} s limit"
        )
    if target_channels not in (1, info.channels) and 1 < info.channels < target_channels:
        raise UnsupportedAudio(
            f"{path.name}: {info.channels}-channel audio cannot become {target_channels} channels"
        )
    max_frames = math.floor(max_seconds * info.sample_rate)
    with _open_for_reading(path, probed) as stream:
        frames = _read_frames(stream, path, info, max_frames, max_seconds, block_frames)
    if len(frames) == 0:
        raise CorruptAudio(f"{path.name}: the {info.format} stream holds no decodable audio")
    samples = _convert(frames, info.sample_rate, target_rate, target_channels)
    return DecodedAudio(samples, target_rate, replace(info, frames=len(frames)))


class BlockSource(Protocol):
    """Float samples handed out block by block, so a long stem need not be in memory."""

    @property
    def shape(self) -> tuple[int, int]:
        """``(channels, frames)``."""
        ...

    def blocks(self, block_frames: int) -> Iterator[npt.NDArray[np.float32]]:
        """Consecutive float32 ``[channels, n]`` blocks covering every frame once."""
        ...


class _ArraySource:
    def __init__(self, samples: npt.NDArray[np.floating[Any]]) -> None:
        if samples.ndim != 2 or not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(
                f"samples must be float [channels, frames], got {samples.dtype} {samples.shape}"
            )
        self._samples = samples
        self.shape: tuple[int, int] = (samples.shape[0], samples.shape[1])

    def blocks(self, block_frames: int) -> Iterator[npt.NDArray[np.float32]]:
        for start in range(0, self.shape[1], block_frames):
            yield self._samples[:, start : start + block_frames].astype(np.float32, copy=False)


def encode(
    samples: npt.NDArray[np.floating[Any]] | BlockSource,
    sample_rate: int,
    fmt: AudioFormat,
    dest: Path,
    *,
    mp3_bitrate: int = 320,
    mp3_quality: int = 2,
    sample_format: SampleFormat = "pcm16",
    clamp: bool = True,
) -> EncodedAudio:
    """Write float ``[channels, frames]`` samples to ``dest`` as wav/flac (16- or 24-bit
    PCM, or float32 wav) or CBR mp3.

    ``samples`` is an array or a :class:`BlockSource` (streamed block by block). Samples
    are clamped to [-1, 1] (``clamp=False`` keeps float32 samples as they are); preventing
    clipping (Demucs' ``prevent_clip``) is the caller's choice. A failed write leaves no
    file behind. The encoders release the GIL: stems can be encoded in parallel threads.
    """
    source = _ArraySource(samples) if isinstance(samples, np.ndarray) else samples
    _check_encodable(source, sample_rate, fmt, mp3_bitrate, mp3_quality)
    if sample_format not in _SF_SUBTYPES or (
        sample_format != "pcm16" and fmt not in ("wav", "flac")
    ):
        raise ValueError(f"cannot write {fmt} as {sample_format}")
    if sample_format == "float32" and fmt != "wav":
        raise ValueError(f"float32 samples need wav, not {fmt}")
    if not clamp and sample_format != "float32":
        raise ValueError("only float32 samples can be written unclamped")
    channels, frames = source.shape
    try:
        if fmt == "mp3":
            digest = _write_mp3(source, sample_rate, dest, mp3_bitrate, mp3_quality)
        else:
            _write_sndfile(source, sample_rate, fmt, dest, sample_format, clamp)
            # libsndfile rewrites the header on close: hash what ended up on disk.
            digest = _sha256_file(dest)
        size = dest.stat().st_size
    except BaseException:
        dest.unlink(missing_ok=True)  # never leave half a stem where a whole one is expected
        raise
    return EncodedAudio(
        path=dest,
        format=fmt,
        content_type=CONTENT_TYPES[fmt],
        size_bytes=size,
        sha256=digest,
        sample_rate=sample_rate,
        channels=channels,
        duration_seconds=frames / sample_rate,
    )


# --- probing ---------------------------------------------------------------------------


class _Probed(NamedTuple):
    info: AudioInfo
    # For mp3, the bytes from the first frame to the end of the last whole one: what the
    # decoder is fed (a frame cut off by the end of the file makes mpg123 fail, not stop).
    mp3_frames: slice = slice(0, 0)


def _probe(path: Path) -> _Probed:
    # A missing file is the worker's bug, not the audio's: let OSError through.
    if path.stat().st_size == 0:
        raise CorruptAudio(f"{path.name}: the file is empty")
    try:
        sf_info = sf.info(str(path))
    except sf.SoundFileError as exc:
        raise _unreadable(path, exc) from exc
    fmt = _SF_FORMATS.get(sf_info.format)
    if fmt is None or (fmt == "mp3" and sf_info.subtype != "MPEG_LAYER_III"):
        raise UnsupportedAudio(
            f"{path.name}: {sf_info.format_info} ({sf_info.subtype_info}) is not wav, mp3 or flac"
        )
    frames = int(sf_info.frames)
    mp3_frames = slice(0, 0)
    if fmt == "mp3":
        mp3_frames, frames = _scan_mp3(path)  # libsndfile's mp3 length is only an estimate
    elif frames >= _SF_UNKNOWN_LENGTH:
        raise CorruptAudio(f"{path.name}: the {fmt} header does not declare its length")
    info = AudioInfo(fmt, int(sf_info.samplerate), int(sf_info.channels), frames)
    _check_plausible(path, info)
    return _Probed(info, mp3_frames)


def _unreadable(path: Path, exc: Exception) -> UnsupportedAudio | CorruptAudio:
    """Name another container if the bytes look like one; otherwise the file is corrupt."""
    with path.open("rb") as fh:
        head = fh.read(16)
    for offset, magic, name in _FOREIGN_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return UnsupportedAudio(f"{path.name}: {name} audio is not wav, mp3 or flac")
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:  # ADTS: layer bits 00
        return UnsupportedAudio(f"{path.name}: AAC (ADTS) audio is not wav, mp3 or flac")
    return CorruptAudio(
        f"{path.name}: not readable as wav, mp3 or flac ({_libsndfile_reason(exc)})"
    )


def _check_plausible(path: Path, info: AudioInfo) -> None:
    if not _MIN_SAMPLE_RATE <= info.sample_rate <= _MAX_SAMPLE_RATE:
        raise CorruptAudio(
            f"{path.name}: {info.format} declares an implausible sample rate of"
            f" {info.sample_rate} Hz (accepted: {_MIN_SAMPLE_RATE}-{_MAX_SAMPLE_RATE})"
        )
    if not 1 <= info.channels <= _MAX_CHANNELS:
        raise CorruptAudio(
            f"{path.name}: {info.format} declares {info.channels} channels"
            f" (accepted: 1-{_MAX_CHANNELS})"
        )
    if info.frames <= 0:
        raise CorruptAudio(f"{path.name}: the {info.format} file holds no audio frames")


def _libsndfile_reason(exc: Exception) -> str:
    reason = getattr(exc, "error_string", None)
    return str(reason) if reason else str(exc)


# --- mp3 frame headers -----------------------------------------------------------------

# Layer III bitrates by bitrate index, for MPEG-1 (True) and MPEG-2/2.5 (False).
_LAYER3_KBPS: Final[dict[bool, tuple[int, ...]]] = {
    True: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    False: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
# Sample rates by the header's version bits: 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5.
_MPEG_RATES: Final[dict[int, tuple[int, int, int]]] = {
    3: (44_100, 48_000, 32_000),
    2: (22_050, 24_000, 16_000),
    0: (11_025, 12_000, 8_000),
}
_TRAILING_TAGS: Final = (b"TAG", b"APETAGEX", b"LYRICS")


class _Mp3Frame(NamedTuple):
    version: int
    sample_rate: int
    size: int  # bytes, header included
    samples: int  # PCM frames it decodes to
    tag_offset: int  # where a Xing/Info tag would start, after the side information


def _mp3_frame_at(data: mmap.mmap, pos: int) -> _Mp3Frame | None:
    """The MPEG layer III frame whose header starts at ``pos``, if one does and fits."""
    if pos + 4 > len(data) or data[pos] != 0xFF or data[pos + 1] & 0xE0 != 0xE0:
        return None
    b1, b2, b3 = data[pos + 1], data[pos + 2], data[pos + 3]
    version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 3
    # Layer III only; free-format (index 0) and the reserved codes are not frames we count.
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    mpeg1 = version == 3
    rate = _MPEG_RATES[version][rate_index]
    size = (144_000 if mpeg1 else 72_000) * _LAYER3_KBPS[mpeg1][bitrate_index] // rate
    size += (b2 >> 1) & 1  # padding byte
    if pos + size > len(data):
        return None  # a frame cut off by the end of the file: decoders drop it too
    mono = b3 >> 6 == 3
    side_info = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    crc = 0 if b1 & 1 else 2
    return _Mp3Frame(version, rate, size, 1152 if mpeg1 else 576, pos + 4 + crc + side_info)


def _skip_id3v2(data: mmap.mmap) -> int:
    pos = 0
    while data[pos : pos + 3] == b"ID3" and pos + 10 <= len(data):
        size_bytes = data[pos + 6 : pos + 10]
        if any(b & 0x80 for b in size_bytes):
            break  # not a syncsafe size: not a tag
        # syncsafe: 7 bits a byte
        size = (size_bytes[0] << 21) | (size_bytes[1] << 14) | (size_bytes[2] << 7) | size_bytes[3]
        footer = 10 if data[pos + 5] & 0x10 else 0
        pos += 10 + size + footer
    return pos


def _scan_mp3(path: Path) -> tuple[slice, int]:
    """(byte range of the frames, PCM frames) of an mp3, from its frame headers alone.

    Bytes between frames (junk, a damaged stretch) are skipped the way a decoder resyncs:
    a header found by searching only counts when the next header confirms it, since 0xFFE
    sync patterns turn up in any binary data (cover art above all).
    """
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos = _skip_id3v2(data)
        first = end = -1
        pcm_frames = 0
        stream: tuple[int, int] | None = None  # (version, rate) every frame must share
        in_sync = False
        while pos + 4 <= len(data):
            frame = _mp3_frame_at(data, pos)
            if frame is not None and stream not in (None, (frame.version, frame.sample_rate)):
                frame = None
            if frame is not None and not in_sync and not _confirmed(data, pos, frame):
                frame = None
            if frame is None:
                if data[pos : pos + 8].startswith(_TRAILING_TAGS):
                    break
                in_sync = False
                pos = data.find(b"\xff", pos + 1)
                if pos < 0:
                    break
                continue
            if first < 0:
                first, stream = pos, (frame.version, frame.sample_rate)
                if not _is_info_frame(data, pos, frame):  # a Xing/Info tag decodes to nothing
                    pcm_frames += frame.samples
            else:
                pcm_frames += frame.samples
            in_sync = True
            pos = end = pos + frame.size
    if first < 0:
        raise CorruptAudio(f"{path.name}: no complete MPEG layer III frame found")
    return slice(first, end), pcm_frames


def _confirmed(data: mmap.mmap, pos: int, frame: _Mp3Frame) -> bool:
    following = pos + frame.size
    if following + 4 > len(data) or data[following : following + 8].startswith(_TRAILING_TAGS):
        return True
    nxt = _mp3_frame_at(data, following)
    return nxt is not None and (nxt.version, nxt.sample_rate) == (frame.version, frame.sample_rate)


def _is_info_frame(data: mmap.mmap, pos: int, frame: _Mp3Frame) -> bool:
    tag = data[frame.tag_offset : frame.tag_offset + 4]
    return tag in (b"Xing", b"Info") or data[pos + 36 : pos + 40] == b"VBRI"


# --- decoding --------------------------------------------------------------------------


@contextmanager
def _open_for_reading(path: Path, probed: _Probed) -> Iterator[Any]:
    """A libsndfile reader: on the file itself, or for mp3 on a pipe (see module doc)."""
    if probed.info.format != "mp3":
        with _soundfile(path, str(path)) as reader:
            yield reader
        return
    with _pipe_from(path, probed.mp3_frames) as fd, _soundfile(path, fd) as reader:
        yield reader


@contextmanager
def _soundfile(path: Path, source: str | int) -> Iterator[Any]:
    try:
        reader = sf.SoundFile(source, closefd=False)
    except sf.SoundFileError as exc:
        raise CorruptAudio(
            f"{path.name}: libsndfile cannot open it for decoding ({_libsndfile_reason(exc)})"
        ) from exc
    with reader:
        yield reader


@contextmanager
def _pipe_from(path: Path, byte_range: slice) -> Iterator[int]:
    """The read end of a pipe that a thread fills with ``byte_range`` of the file."""
    read_fd, write_fd = os.pipe()
    sink = open(write_fd, "wb")  # noqa: SIM115 - the feeder thread owns and closes it
    failures: list[OSError] = []

    def feed() -> None:
        try:
            with sink, path.open("rb") as src:
                src.seek(byte_range.start)
                left = byte_range.stop - byte_range.start
                while left > 0 and (chunk := src.read(min(left, _IO_CHUNK_BYTES))):
                    sink.write(chunk)
                    left -= len(chunk)
        except BrokenPipeError:
            pass  # the reader stopped early (too long, corrupt): nothing left to deliver
        except OSError as exc:
            failures.append(exc)

    feeder = threading.Thread(target=feed, name=f"feed-{path.name}", daemon=True)
    feeder.start()
    try:
        yield read_fd
    finally:
        os.close(read_fd)  # unblocks a feeder still writing: it gets EPIPE
        feeder.join()
    if failures:
        raise failures[0]


def _read_frames(
    reader: Any,
    path: Path,
    info: AudioInfo,
    max_frames: int,
    max_seconds: float,
    block_frames: int,
) -> npt.NDArray[np.float32]:
    """All frames as ``[frames, channels]``, read block by block into one buffer."""
    # libsndfile fills the buffer in place, so blocks are never copied or concatenated.
    buffer = np.empty((min(info.frames + block_frames, max_frames + 1), info.channels), np.float32)
    filled = 0
    while True:
        if filled == len(buffer):  # the stream outgrew its header, not yet the limit
            grown = np.empty((min(2 * len(buffer), max_frames + 1), info.channels), np.float32)
            grown[:filled] = buffer
            buffer = grown
        try:
            got = len(reader.read(out=buffer[filled : filled + block_frames]))
        except sf.SoundFileError as exc:
            # libsndfile's error discards the block it was reading: say where it started.
            raise CorruptAudio(
                f"{path.name}: the {info.format} stream fails to decode somewhere after"
                f" {filled / info.sample_rate:.1f} s ({_libsndfile_reason(exc)})"
            ) from exc
        if got == 0:
            return buffer[:filled]
        # A damaged float wav decodes to NaN/inf, which would poison every stem.
        if not np.isfinite(buffer[filled : filled + got]).all():
            raise CorruptAudio(
                f"{path.name}: the {info.format} stream holds non-finite samples after"
                f" {filled / info.sample_rate:.1f} s"
            )
        filled += got
        if filled > max_frames:
            raise AudioTooLong(
                f"{path.name}: the {info.format} stream runs past the {max_seconds:g} s limit"
                f" although it declares {info.duration_seconds:.1f} s"
            )


def _convert(
    frames: npt.NDArray[np.float32], rate: int, target_rate: int, target_channels: int
) -> npt.NDArray[np.float32]:
    wav = convert_audio_channels(torch.from_numpy(frames.T), target_channels)
    if rate != target_rate:
        wav = julius.resample_frac(wav, rate, target_rate)
    out: npt.NDArray[np.float32] = wav.contiguous().numpy()
    return np.ascontiguousarray(out, dtype=np.float32)


# --- encoding --------------------------------------------------------------------------


def _check_encodable(
    samples: BlockSource,
    sample_rate: int,
    fmt: str,
    mp3_bitrate: int,
    mp3_quality: int,
) -> None:
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"unknown audio format {fmt!r}; expected one of {sorted(CONTENT_TYPES)}")
    channels, frames = samples.shape
    max_channels = 2 if fmt == "mp3" else _MAX_CHANNELS
    if not 1 <= channels <= max_channels or frames == 0:
        raise ValueError(f"cannot encode {channels} channels x {frames} frames as {fmt}")
    if sample_rate <= 0:
        raise ValueError(f"invalid sample rate {sample_rate}")
    if fmt == "mp3":
        if mp3_bitrate not in _MP3_BITRATES_KBPS:
            raise ValueError(f"{mp3_bitrate} kbit/s is not an MPEG-1 layer III bitrate")
        if sample_rate not in _MP3_SAMPLE_RATES:
            raise ValueError(f"mp3 at {sample_rate} Hz: MPEG-1 needs 32, 44.1 or 48 kHz")
        if not 0 <= mp3_quality <= 9:
            raise ValueError(f"LAME quality must be 0-9, got {mp3_quality}")


def _finite_blocks(samples: BlockSource) -> Iterator[npt.NDArray[np.float32]]:
    start = 0
    for block in samples.blocks(ENCODE_BLOCK_FRAMES):
        if not np.isfinite(block).all():
            raise ValueError(f"non-finite samples in frames {start}-{start + block.shape[1]}")
        start += block.shape[1]
        yield block


def _pcm16_blocks(samples: BlockSource) -> Iterator[npt.NDArray[np.int16]]:
    """Interleaved ``[frames, channels]`` int16 blocks, quantised as ``demucs.audio.i16_pcm``."""
    for block in _finite_blocks(samples):
        pcm = (np.clip(block, -1.0, 1.0) * (2**15 - 1)).astype(np.int16)  # truncates, as .short()
        yield np.ascontiguousarray(pcm.T)


def _pcm24_blocks(samples: BlockSource) -> Iterator[npt.NDArray[np.int32]]:
    """Interleaved int32 blocks holding 24-bit samples in their top 24 bits (libsndfile
    writes the top bits of int data to PCM_24), quantised as ``_pcm16_blocks`` is."""
    for block in _finite_blocks(samples):
        pcm = (np.clip(block, -1.0, 1.0) * (2**23 - 1)).astype(np.int32)  # truncates
        yield np.ascontiguousarray(pcm.T) << 8


def _float_blocks(samples: BlockSource, clamp: bool) -> Iterator[npt.NDArray[np.float32]]:
    for block in _finite_blocks(samples):
        out = np.clip(block, -1.0, 1.0) if clamp else block
        yield np.ascontiguousarray(out.T, dtype=np.float32)


def _write_mp3(
    samples: BlockSource,
    sample_rate: int,
    dest: Path,
    bitrate: int,
    quality: int,
) -> str:
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(bitrate)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_out_sample_rate(sample_rate)  # or LAME resamples at low bitrates
    encoder.set_channels(samples.shape[0])
    encoder.set_quality(quality)
    encoder.silence()
    digest = hashlib.sha256()
    with dest.open("wb") as out:
        for pcm in _pcm16_blocks(samples):
            chunk = bytes(encoder.encode(pcm.tobytes()))
            out.write(chunk)
            digest.update(chunk)
        chunk = bytes(encoder.flush())
        out.write(chunk)
        digest.update(chunk)
    return digest.hexdigest()


def _write_sndfile(
    samples: BlockSource,
    sample_rate: int,
    fmt: AudioFormat,
    dest: Path,
    sample_format: SampleFormat,
    clamp: bool,
) -> None:
    blocks: Iterator[npt.NDArray[Any]]
    if sample_format == "pcm16":
        blocks = _pcm16_blocks(samples)
    elif sample_format == "pcm24":
        blocks = _pcm24_blocks(samples)
    else:
        blocks = _float_blocks(samples, clamp)
    with sf.SoundFile(
        str(dest),
        "w",
        samplerate=sample_rate,
        channels=samples.shape[0],
        format=_SF_WRITE_FORMATS[fmt],
        subtype=_SF_SUBTYPES[sample_format],
    ) as out:
        for block in blocks:
            out.write(block)


# --- resampling ------------------------------------------------------------------------


class _Resampled:
    """A block source at another sample rate: libsoxr's streaming resampler over the
    blocks of ``source``, cut or padded at the end to ``round(frames * to / from)``."""

    def __init__(self, source: BlockSource, from_rate: int, to_rate: int) -> None:
        self._source = source
        self._from = from_rate
        self._to = to_rate
        channels, frames = source.shape
        self.shape: tuple[int, int] = (channels, round(frames * to_rate / from_rate))

    def blocks(self, block_frames: int) -> Iterator[npt.NDArray[np.float32]]:
        channels, wanted = self.shape
        stream = soxr.ResampleStream(self._from, self._to, channels, dtype="float32", quality="VHQ")

        def resampled_chunks() -> Iterator[npt.NDArray[np.float32]]:
            for block in self._source.blocks(block_frames):
                yield stream.resample_chunk(np.ascontiguousarray(block.T), last=False)
            yield stream.resample_chunk(np.zeros((0, channels), np.float32), last=True)

        buffer = np.zeros((channels, 0), np.float32)
        given = 0
        for chunk in resampled_chunks():
            buffer = np.concatenate([buffer, chunk.T.astype(np.float32)], axis=1)
            while buffer.shape[1] >= block_frames and given < wanted:
                n = min(block_frames, wanted - given)
                yield buffer[:, :n]
                given, buffer = given + n, buffer[:, n:]
        left = wanted - given
        if left > 0:  # the end: soxr may give a frame more or less than the exact length
            tail = buffer[:, :left]
            yield np.pad(tail, ((0, 0), (0, left - tail.shape[1])))


def resampled(source: BlockSource, from_rate: int, to_rate: int) -> BlockSource:
    """``source`` at ``to_rate`` (itself when the rates are equal)."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"invalid sample rates {from_rate} -> {to_rate}")
    return source if from_rate == to_rate else _Resampled(source, from_rate, to_rate)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_IO_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
