"""Audio probe, decode and encode on small generated clips.

The clips are chirps and sines written with soundfile or encoded with lameenc in
``tmp_path``; damaged files are made from them by cutting, patching or overwriting bytes.
The mp3 frame-header walker below is a deliberately separate oracle: it checks the
encoder's output, so it shares no code with ``consumer.audio``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import lameenc
import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
import torch
from demucs.audio import encode_mp3, i16_pcm

from consumer import audio
from consumer.audio import CONTENT_TYPES, AudioFormat, decode, encode, probe
from consumer.errors import AudioTooLong, CorruptAudio, StemError, UnsupportedAudio
from tests.support.helpers import mpeg1_layer3_headers

RATE = 44_100
Audio = npt.NDArray[np.float32]

# What libmpg123 plays of an mp3 with no gapless (LAME) tag, which LAME's streaming API
# does not write: the encoder's 576-sample delay plus the decoder's own 529.
MP3_DELAY = 576 + 529


def clip(seconds: float, *, rate: int = RATE, channels: int = 2) -> Audio:
    """Chirps and sines, different per channel, peaks well inside [-1, 1].

    Chirps make the signal aperiodic, so a wrong alignment cannot pass for a right one.
    """
    t = np.arange(round(seconds * rate)) / rate
    rows = [
        0.4 * np.sin(2 * np.pi * (220 * t + 300 * t**2)),
        0.3 * np.sin(2 * np.pi * 330 * t) + 0.2 * np.sin(2 * np.pi * (110 * t + 200 * t**2)),
    ]
    rows += [0.1 * (k + 1) * np.sin(2 * np.pi * 500 * (k + 1) * t) for k in range(channels - 2)]
    return np.ascontiguousarray(np.stack(rows[:channels]), dtype=np.float32)


def write(path: Path, samples: Audio, rate: int = RATE, **kwargs: str) -> Path:
    sf.write(path, samples.T, rate, **kwargs)
    return path


def lame(samples: Audio, *, vbr: bool = False) -> bytes:
    """Raw LAME output, outside ``encode``: what another encoder might hand the worker."""
    encoder = lameenc.Encoder()
    encoder.set_in_sample_rate(RATE)
    encoder.set_channels(samples.shape[0])
    encoder.set_quality(2)
    if vbr:
        encoder.set_vbr(4)
        encoder.set_vbr_quality(2)
    else:
        encoder.set_bit_rate(320)
    encoder.silence()
    pcm = (np.clip(samples, -1, 1) * (2**15 - 1)).astype(np.int16).T.tobytes()
    return bytes(encoder.encode(pcm)) + bytes(encoder.flush())


def snr_db(reference: Audio, estimate: Audio) -> float:
    noise = reference - estimate
    return float(10 * np.log10(np.sum(reference**2) / np.sum(noise**2)))


def flac_declaring(path: Path, total_frames: int) -> Path:
    """Patch a FLAC's STREAMINFO total-samples field (the low 36 bits of bytes 18-25)."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    assert data[4] & 0x7F == 0, "STREAMINFO must come first"
    field = int.from_bytes(data[18:26], "big")
    field = (field & ~((1 << 36) - 1)) | total_frames
    data[18:26] = field.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def id3v23_tag(payload: bytes) -> bytes:
    """An ID3v2.3 tag holding one APIC-like private frame, as cover art would sit there."""
    frame = b"PRIV" + len(payload).to_bytes(4, "big") + b"\x00\x00" + payload
    size = len(frame)
    syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x03\x00\x00" + syncsafe + frame


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_lossless_round_trip_is_exact_to_16_bit_precision(tmp_path: Path, fmt: AudioFormat) -> None:
    source = clip(1.0)

    encoded = encode(source, RATE, fmt, tmp_path / f"x.{fmt}")
    decoded = decode(encoded.path, max_seconds=10, target_rate=RATE)

    assert decoded.samples.shape == source.shape
    # Written as trunc(x * 32767), read back as n / 32768: at most ~2 LSB apart.
    np.testing.assert_allclose(decoded.samples, source, atol=1e-4, rtol=0)
    assert decoded.source == audio.AudioInfo(fmt, RATE, 2, RATE)


def test_mp3_round_trip_is_the_input_delayed_by_encoder_and_decoder_delay(tmp_path: Path) -> None:
    source = clip(2.0)

    encoded = encode(source, RATE, "mp3", tmp_path / "x.mp3")
    decoded = decode(encoded.path, max_seconds=10, target_rate=RATE).samples

    frames = source.shape[1]
    assert snr_db(source, decoded[:, MP3_DELAY : MP3_DELAY + frames]) > 30
    assert snr_db(source, decoded[:, :frames]) < 0, "without the delay it must not line up"


def test_decoded_mp3_is_at_most_a_few_frames_longer_than_its_input(tmp_path: Path) -> None:
    # No gapless tag, so delay and padding are played: the length is whole 1152-sample
    # frames covering delay + input, about 37 ms more than the input here.
    source = clip(2.0)

    encoded = encode(source, RATE, "mp3", tmp_path / "x.mp3")
    decoded = decode(encoded.path, max_seconds=10, target_rate=RATE)

    extra = decoded.samples.shape[1] - source.shape[1]
    assert decoded.samples.shape[1] % 1152 == 0
    assert MP3_DELAY < extra < 0.1 * RATE
    assert decoded.source.frames == decoded.samples.shape[1] == probe(encoded.path).frames


def test_decoded_samples_are_float32_c_contiguous_channels_first(tmp_path: Path) -> None:
    path = write(tmp_path / "x.wav", clip(0.5), subtype="PCM_24")

    decoded = decode(path, max_seconds=10, target_rate=RATE)

    assert decoded.samples.dtype == np.float32
    assert decoded.samples.flags.c_contiguous
    assert decoded.samples.shape == (2, RATE // 2)
    assert decoded.sample_rate == RATE


# --- channels and rate -----------------------------------------------------------------


def test_mono_source_becomes_two_identical_channels(tmp_path: Path) -> None:
    mono = clip(1.0, channels=1)
    path = write(tmp_path / "mono.flac", mono, subtype="PCM_16")

    decoded = decode(path, max_seconds=10, target_rate=RATE)

    assert decoded.samples.shape == (2, RATE)
    np.testing.assert_array_equal(decoded.samples[0], decoded.samples[1])
    np.testing.assert_allclose(decoded.samples[0], mono[0], atol=1e-4, rtol=0)
    assert decoded.source.channels == 1


def test_surround_source_keeps_its_first_two_channels(tmp_path: Path) -> None:
    six = clip(0.5, channels=6)
    path = write(tmp_path / "six.wav", six, subtype="FLOAT")

    decoded = decode(path, max_seconds=10, target_rate=RATE)

    np.testing.assert_array_equal(decoded.samples, six[:2])
    assert decoded.source.channels == 6


def test_48khz_source_is_resampled_to_44_1khz_with_the_right_length(tmp_path: Path) -> None:
    path = write(tmp_path / "x.wav", clip(1.5, rate=48_000), 48_000, subtype="FLOAT")

    decoded = decode(path, max_seconds=10, target_rate=RATE)

    assert decoded.samples.shape == (2, 66_150)  # 1.5 s at 44.1 kHz
    assert decoded.sample_rate == RATE
    assert decoded.source == audio.AudioInfo("wav", 48_000, 2, 72_000)
    # Same signal at the new rate, away from the filter's edges.
    expected = clip(1.5)[:, 1000:-1000]
    assert snr_db(expected, decoded.samples[:, 1000:-1000]) > 40


def test_stereo_cannot_be_stretched_to_more_channels(tmp_path: Path) -> None:
    path = write(tmp_path / "x.wav", clip(0.2))

    with pytest.raises(UnsupportedAudio, match="2-channel audio cannot become 4 channels"):
        decode(path, max_seconds=10, target_rate=RATE, target_channels=4)


# --- probing and duration limits -------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_probe_reads_no_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: AudioFormat
) -> None:
    path = encode(clip(1.0), RATE, fmt, tmp_path / f"x.{fmt}").path

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("probe decoded samples")

    monkeypatch.setattr(sf.SoundFile, "read", no_reading)
    monkeypatch.setattr(sf.SoundFile, "buffer_read", no_reading)
    info = probe(path)

    assert (info.format, info.sample_rate, info.channels) == (fmt, RATE, 2)
    assert info.duration_seconds == pytest.approx(1.0, abs=0.05)


def test_probe_reports_the_duration_the_header_declares(tmp_path: Path) -> None:
    # One second of samples behind a header claiming five hours: only a probe that
    # reads no samples can report the five hours.
    path = flac_declaring(write(tmp_path / "x.flac", clip(1.0), subtype="PCM_16"), 5 * 3600 * RATE)

    assert probe(path).duration_seconds == 5 * 3600


def test_declared_duration_over_the_limit_raises_before_decoding(tmp_path: Path) -> None:
    # Reading this file fails (libsndfile cannot seek to the declared end), so
    # AudioTooLong can only come from the header check.
    path = flac_declaring(write(tmp_path / "x.flac", clip(1.0), subtype="PCM_16"), 5 * 3600 * RATE)

    with pytest.raises(AudioTooLong, match=r"flac declares 18000\.0 s, over the 600 s limit"):
        decode(path, max_seconds=600, target_rate=RATE)


def test_stream_longer_than_its_header_stops_at_the_limit_while_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an mp3 whose headers undercount it by half (as a lying length would)
    path = tmp_path / "x.mp3"
    path.write_bytes(lame(clip(4.0)))
    real_scan = audio._scan_mp3

    def undercount(p: Path) -> tuple[slice, int]:
        frames, pcm_frames = real_scan(p)
        return frames, pcm_frames // 2

    monkeypatch.setattr(audio, "_scan_mp3", undercount)

    # When the limit lies between the declared and the real length
    # Then reading stops there with AudioTooLong
    with pytest.raises(AudioTooLong, match=r"runs past the 3 s limit although it declares 2\.0"):
        decode(path, max_seconds=3, target_rate=RATE, block_frames=4096)


def test_vbr_mp3_without_xing_header_is_neither_cut_short_nor_rejected(tmp_path: Path) -> None:
    # LAME's streaming API writes no Xing header, so libsndfile can only estimate a VBR
    # file's length from its first frame: loud-first is underestimated (and libsndfile
    # stops reading there), quiet-first overestimated.
    loud = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 2 * RATE)).astype(np.float32)
    quiet = np.zeros_like(loud)
    loud_first, quiet_first = tmp_path / "loud_first.mp3", tmp_path / "quiet_first.mp3"
    loud_first.write_bytes(lame(np.concatenate([loud, quiet], axis=1), vbr=True))
    quiet_first.write_bytes(lame(np.concatenate([quiet, loud], axis=1), vbr=True))
    assert sf.info(loud_first).duration < 3.0 < 5.0 < sf.info(quiet_first).duration

    for path in (loud_first, quiet_first):
        assert 4.0 < probe(path).duration_seconds < 4.1
        decoded = decode(path, max_seconds=4.5, target_rate=RATE)
        assert 4.0 * RATE < decoded.samples.shape[1] < 4.1 * RATE


def test_mp3_behind_a_large_id3v2_tag_decodes_in_full(tmp_path: Path) -> None:
    # 200 KB of random "cover art": full of 0xFF sync lookalikes, and larger than the
    # header buffer libsndfile can search when reading from a pipe.
    source = clip(1.0)
    art = np.random.default_rng(1).bytes(200_000)
    plain = tmp_path / "plain.mp3"
    plain.write_bytes(lame(source))
    tagged = tmp_path / "tagged.mp3"
    tagged.write_bytes(id3v23_tag(art) + plain.read_bytes())

    assert probe(tagged) == probe(plain)
    np.testing.assert_array_equal(
        decode(tagged, max_seconds=10, target_rate=RATE).samples,
        decode(plain, max_seconds=10, target_rate=RATE).samples,
    )


def test_mp3_info_frame_is_not_counted_as_audio(tmp_path: Path) -> None:
    # Put a Xing/Info tag where LAME's file writer puts one: an extra first frame of
    # zeroed side information with the tag after it, padding bit cleared (1044 bytes).
    stream = lame(clip(2.0))
    frames = len(mpeg1_layer3_headers(stream))
    header = stream[:2] + bytes([stream[2] & ~0b10]) + stream[3:4]
    tag = b"Info" + b"".join(n.to_bytes(4, "big") for n in (3, frames, len(stream) + 1044))
    info_frame = (header + bytes(32) + tag).ljust(1044, b"\x00")
    path = tmp_path / "x.mp3"
    path.write_bytes(info_frame + stream)

    info = probe(path)
    decoded = decode(path, max_seconds=10, target_rate=RATE)

    assert info.frames == frames * 1152
    # With a tag, mpg123 also trims its decoder delay: a little shorter still.
    assert 0 < info.frames - decoded.samples.shape[1] < 0.05 * RATE


def test_mp3_probe_resyncs_after_damage_without_counting_false_frames(tmp_path: Path) -> None:
    data = bytearray(lame(clip(2.0)))
    headers = mpeg1_layer3_headers(bytes(data))
    rng = np.random.default_rng(4)
    data[20_000:30_000] = rng.bytes(10_000)
    for offset in range(20_100, 29_000, 900):  # headers of this very stream, in the junk
        data[offset : offset + 4] = bytes(data[:4])
    path = tmp_path / "x.mp3"
    path.write_bytes(bytes(data))

    intact = [pos for pos, _, _ in headers if not 20_000 - 4 < pos < 30_000]
    assert probe(path).frames == len(intact) * 1152


def test_mp3_bytes_named_wav_are_decoded_as_mp3(tmp_path: Path) -> None:
    path = tmp_path / "really_an.wav"
    path.write_bytes(lame(clip(1.0)))

    assert probe(path).format == "mp3"
    assert decode(path, max_seconds=10, target_rate=RATE).samples.shape[0] == 2


# --- unreadable, unsupported, implausible ----------------------------------------------


def test_empty_file_raises_corrupt_audio(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp3"
    path.touch()

    with pytest.raises(CorruptAudio, match="empty"):
        decode(path, max_seconds=10, target_rate=RATE)


def test_random_bytes_named_wav_raise_corrupt_audio(tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(2).bytes(10_000))

    with pytest.raises(CorruptAudio, match="not readable as wav, mp3 or flac"):
        probe(path)


@pytest.mark.parametrize(
    ("fmt", "subtype", "named"),
    [("OGG", "VORBIS", "OGG"), ("AIFF", "PCM_16", "AIFF"), ("W64", "PCM_16", "W64")],
)
def test_other_containers_libsndfile_reads_raise_unsupported_audio(
    tmp_path: Path, fmt: str, subtype: str, named: str
) -> None:
    path = write(tmp_path / "x.wav", clip(0.2), format=fmt, subtype=subtype)

    with pytest.raises(UnsupportedAudio, match=rf"{named} .* is not wav, mp3 or flac"):
        decode(path, max_seconds=10, target_rate=RATE)


def test_containers_libsndfile_cannot_read_are_named_not_called_corrupt(tmp_path: Path) -> None:
    m4a = tmp_path / "x.mp3"
    m4a.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00" + bytes(200))

    with pytest.raises(UnsupportedAudio, match="MP4/M4A audio is not wav, mp3 or flac"):
        probe(m4a)


@pytest.mark.parametrize(
    ("rate", "channels", "seconds", "complaint"),
    [
        (4_000, 1, 0.1, "implausible sample rate of 4000 Hz"),
        (RATE, 10, 0.1, "declares 10 channels"),
        (RATE, 2, 0.0, "holds no audio frames"),
    ],
)
def test_implausible_headers_raise_corrupt_audio(
    tmp_path: Path, rate: int, channels: int, seconds: float, complaint: str
) -> None:
    samples = np.zeros((channels, round(seconds * rate)), dtype=np.float32)
    path = write(tmp_path / "x.wav", samples, rate, subtype="PCM_16")

    with pytest.raises(CorruptAudio, match=complaint):
        probe(path)


def test_flac_without_a_declared_length_raises_corrupt_audio(tmp_path: Path) -> None:
    # total_samples = 0 means "unknown": libsndfile then cannot read the file to its end.
    path = flac_declaring(write(tmp_path / "x.flac", clip(0.5), subtype="PCM_16"), 0)

    with pytest.raises(CorruptAudio, match="does not declare its length"):
        probe(path)


def test_float_wav_holding_nan_raises_corrupt_audio(tmp_path: Path) -> None:
    samples = clip(0.5)
    samples[1, 1000] = np.nan
    path = write(tmp_path / "x.wav", samples, subtype="FLOAT")

    with pytest.raises(CorruptAudio, match="non-finite samples"):
        decode(path, max_seconds=10, target_rate=RATE)


# --- damaged files ---------------------------------------------------------------------


def test_truncated_flac_raises_corrupt_audio(tmp_path: Path) -> None:
    whole = write(tmp_path / "whole.flac", clip(1.0), subtype="PCM_16").read_bytes()
    path = tmp_path / "cut.flac"
    path.write_bytes(whole[: len(whole) // 2])

    with pytest.raises(CorruptAudio, match=r"flac stream fails to decode .*lost sync"):
        decode(path, max_seconds=10, target_rate=RATE)


def test_truncated_mp3_decodes_its_whole_frames(tmp_path: Path) -> None:
    whole = lame(clip(2.0))
    path = tmp_path / "cut.mp3"
    path.write_bytes(whole[: len(whole) // 2 + 100])  # ends inside a frame

    decoded = decode(path, max_seconds=10, target_rate=RATE)

    frame_bytes = 1044  # 320 kbit/s at 44.1 kHz, without the occasional padding byte
    assert decoded.samples.shape[1] == (len(whole) // 2 + 100) // frame_bytes * 1152
    assert decoded.source.frames == probe(path).frames == decoded.samples.shape[1]


def test_truncated_wav_decodes_the_frames_that_are_there(tmp_path: Path) -> None:
    # Like every WAV reader, libsndfile trusts the bytes over the header's data size
    # (streaming writers leave it wrong), so a cut WAV is shorter, not corrupt.
    source = clip(1.0)
    whole = write(tmp_path / "whole.wav", source, subtype="PCM_16").read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(whole[: 44 + 4 * 10_000])

    decoded = decode(path, max_seconds=10, target_rate=RATE)

    np.testing.assert_allclose(decoded.samples, source[:, :10_000], atol=1e-4, rtol=0)


def test_mp3_with_a_damaged_stretch_raises_corrupt_audio(tmp_path: Path) -> None:
    data = bytearray(lame(clip(2.0)))
    data[20_000:30_000] = np.random.default_rng(3).bytes(10_000)  # mpg123 resyncs <= 1 KiB
    path = tmp_path / "x.mp3"
    path.write_bytes(bytes(data))

    with pytest.raises(CorruptAudio, match="mp3 stream fails to decode"):
        decode(path, max_seconds=10, target_rate=RATE)


def _cut(data: bytes, seed: int) -> bytes:
    return data[: int(len(data) * (seed + 1) / 9)]


def _scribble(data: bytes, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    damaged = bytearray(data)
    for start in rng.integers(0, len(data) - 64, size=4):
        damaged[start : start + 64] = rng.bytes(64)
    return bytes(damaged)


@pytest.mark.parametrize("damage", [_cut, _scribble], ids=["cut", "scribbled"])
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_damaged_files_decode_or_raise_a_stem_error(
    tmp_path: Path, fmt: AudioFormat, damage: Callable[[bytes, int], bytes]
) -> None:
    whole = encode(clip(0.5), RATE, fmt, tmp_path / f"whole.{fmt}").path.read_bytes()
    outcomes: list[str] = []
    for seed in range(8):
        path = tmp_path / f"damaged{seed}.{fmt}"
        path.write_bytes(damage(whole, seed))
        assert path.read_bytes() != whole  # really damaged
        try:
            decoded = decode(path, max_seconds=10, target_rate=RATE)
        except StemError as exc:
            outcomes.append(exc.code)
            continue
        assert decoded.samples.shape[0] == 2
        assert np.isfinite(decoded.samples).all()
        outcomes.append("decoded")
    # Every damaged file ended one of these ways (any other exception fails above).
    assert len(outcomes) == 8
    assert set(outcomes) <= {"decoded", "corrupt_audio", "unsupported_audio"}, outcomes


# --- encoding --------------------------------------------------------------------------


@pytest.mark.parametrize("bitrate", [320, 128, 96])
def test_mp3_is_constant_bitrate_at_the_requested_rate_and_keeps_the_sample_rate(
    tmp_path: Path, bitrate: int
) -> None:
    encoded = encode(clip(1.0), RATE, "mp3", tmp_path / "x.mp3", mp3_bitrate=bitrate)

    headers = mpeg1_layer3_headers(encoded.path.read_bytes())

    assert len(headers) > 30
    # 96 kbit/s is where LAME would otherwise resample 44.1 kHz stereo to 32 kHz.
    assert {(kbps, rate) for _, kbps, rate in headers} == {(bitrate, RATE)}


def test_mp3_bytes_equal_demucs_encode_mp3(tmp_path: Path) -> None:
    # 3 s is more than two of encode's blocks: feeding LAME in blocks changes nothing.
    source = clip(3.0)
    reference = tmp_path / "demucs.mp3"
    encode_mp3(torch.from_numpy(source.copy()), reference, samplerate=RATE, bitrate=320)

    ours = encode(source, RATE, "mp3", tmp_path / "ours.mp3")

    assert ours.path.read_bytes() == reference.read_bytes()


def test_pcm_is_quantised_like_demucs_i16_pcm_including_clamping(tmp_path: Path) -> None:
    source = clip(0.5) * 3  # peaks far outside [-1, 1]
    expected = i16_pcm(torch.from_numpy(source.copy())).numpy()

    encoded = encode(source, RATE, "wav", tmp_path / "x.wav")
    written, _ = sf.read(encoded.path, dtype="int16", always_2d=True)

    np.testing.assert_array_equal(written.T, expected)
    assert written.max() == 2**15 - 1
    assert written.min() == -(2**15 - 1)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_encoded_audio_describes_the_written_file(tmp_path: Path, fmt: AudioFormat) -> None:
    dest = tmp_path / f"x.{fmt}"

    encoded = encode(clip(1.25, channels=1), RATE, fmt, dest)

    data = dest.read_bytes()
    assert encoded.path == dest
    assert encoded.format == fmt
    assert encoded.content_type == CONTENT_TYPES[fmt]
    assert encoded.size_bytes == len(data)
    assert encoded.sha256 == hashlib.sha256(data).hexdigest()
    assert (encoded.sample_rate, encoded.channels) == (RATE, 1)
    assert encoded.duration_seconds == 1.25
    assert probe(dest).format == fmt


def test_content_types() -> None:
    assert CONTENT_TYPES == {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac"}


@pytest.mark.parametrize(
    ("channels", "rate", "bitrate", "complaint"),
    [
        (2, RATE, 100, "not an MPEG-1 layer III bitrate"),
        (2, 22_050, 320, "MPEG-1 needs 32, 44.1 or 48 kHz"),
        (3, RATE, 320, "cannot encode 3 channels"),
    ],
)
def test_encode_refuses_an_mp3_that_would_not_be_what_was_asked_for(
    tmp_path: Path, channels: int, rate: int, bitrate: int, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        encode(clip(0.1, channels=channels), rate, "mp3", tmp_path / "x.mp3", mp3_bitrate=bitrate)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_failed_encode_leaves_no_file(tmp_path: Path, fmt: AudioFormat) -> None:
    samples = clip(3.0)  # NaN in the third block: the first two are already written
    samples[0, -10] = np.nan
    dest = tmp_path / f"x.{fmt}"

    with pytest.raises(ValueError, match="non-finite samples"):
        encode(samples, RATE, fmt, dest)

    assert not dest.exists()


# --- sample formats and resampling (issue 18) ----------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_pcm24_is_24_bit_quantised_as_pcm16_is(tmp_path: Path, fmt: AudioFormat) -> None:
    source = clip(0.5)

    encoded = encode(source, RATE, fmt, tmp_path / f"x.{fmt}", sample_format="pcm24")

    assert sf.info(str(encoded.path)).subtype == "PCM_24"
    ints, _ = sf.read(str(encoded.path), dtype="int32")
    expected = (np.clip(source, -1, 1) * (2**23 - 1)).astype(np.int32).T
    np.testing.assert_array_equal(ints >> 8, expected)


def test_float32_wav_keeps_samples_beyond_full_scale_only_unclamped(tmp_path: Path) -> None:
    source = clip(0.5) * 3

    unclamped = encode(
        source, RATE, "wav", tmp_path / "a.wav", sample_format="float32", clamp=False
    )
    clamped = encode(source, RATE, "wav", tmp_path / "b.wav", sample_format="float32")

    assert sf.info(str(unclamped.path)).subtype == "FLOAT"
    np.testing.assert_array_equal(sf.read(str(unclamped.path), dtype="float32")[0].T, source)
    np.testing.assert_array_equal(
        sf.read(str(clamped.path), dtype="float32")[0].T, np.clip(source, -1, 1)
    )


@pytest.mark.parametrize(
    ("fmt", "sample_format", "clamp"),
    [("flac", "float32", True), ("mp3", "pcm24", True), ("wav", "pcm16", False)],
)
def test_impossible_sample_formats_are_refused(
    tmp_path: Path, fmt: AudioFormat, sample_format: audio.SampleFormat, clamp: bool
) -> None:
    with pytest.raises(ValueError, match=r"cannot|need|only"):
        encode(
            clip(0.1), RATE, fmt, tmp_path / f"x.{fmt}", sample_format=sample_format, clamp=clamp
        )


@pytest.mark.parametrize(("to_rate", "frames"), [(48000, 24000), (22050, 11025), (RATE, RATE // 2)])
def test_resampled_stems_have_the_exact_length_and_keep_a_tone(to_rate: int, frames: int) -> None:
    seconds = 0.5
    t = np.arange(int(RATE * seconds)) / RATE
    tone = np.stack([np.sin(2 * np.pi * 1000 * t)] * 2).astype(np.float32) * 0.5

    out = audio.resampled(audio._ArraySource(tone), RATE, to_rate)
    got = np.concatenate(list(out.blocks(4096)), axis=-1)

    assert out.shape == (2, frames) == got.shape
    expected = np.sin(2 * np.pi * 1000 * np.arange(frames) / to_rate) * 0.5
    middle = slice(frames // 4, 3 * frames // 4)  # away from the filter's edges
    np.testing.assert_allclose(got[0, middle], expected[middle], atol=1e-3)
