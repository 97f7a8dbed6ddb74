"""Every kind of job the reliability suite submits, and the outcome each must end in.

A *good* kind must end as ``stems.processed`` whose objects exist and match their sha256;
a *poison* kind must end in ``stem-dlq`` carrying the ``errorCode`` named here. The same
table drives the chaos run (many of each, under kills and storage faults) and the plain
bad-input test (one of each, nothing else going on), so a chaos failure can be told apart
from a plain one.

The staged audio is small and generated here: 1 s clips in each format, and the bad
files — random bytes, empty and truncated files, text named ``.mp3``, an Ogg Vorbis file,
a 1 s FLAC whose header declares five hours, two hours of silence compressed to ~200 KB,
and a file over the size cap. A wrong extension on *good* audio is not poison: the
container's own header decides the format (``consumer.audio``), so an mp3 named ``.wav``
must be processed.

Every submission carries a ``chaosId`` attribute, so even a body that names no job (not
JSON, not UTF-8, too big) can be found again in ``stem-dlq``. Canary strings stand in for
secrets — a token in an ``authorization`` attribute, a signed URL's signature, free text
in bodies — and must never appear in a worker's logs.
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import soundfile as sf

from consumer.audio import encode as encode_audio
from devkit.synth import multi_instrument_mix
from stem_contracts import HTDEMUCS_6S_STEMS, Job, encode

__all__ = [
    "GOOD_KINDS",
    "LIMITS",
    "MODEL",
    "POISON_KINDS",
    "Context",
    "Kind",
    "Limits",
    "Submission",
    "counts",
    "flac_declaring",
    "make_submissions",
    "silence_flac",
    "stage_sources",
]

MODEL: Final = "htdemucs_6s"


@dataclass(frozen=True)
class Limits:
    """The worker limits the catalogue's bad files are made to break."""

    max_audio_seconds: float = 5.0
    max_audio_bytes: int = 1024 * 1024


LIMITS: Final = Limits()
CLIP_SECONDS: Final = 1.0


@dataclass(frozen=True)
class Context:
    """Where things are: buckets, the staged sources by name, and this run's canary."""

    staging_bucket: str
    output_bucket: str
    forbidden_bucket: str
    sources: Mapping[str, str]
    canary: str = field(default_factory=lambda: f"CANARY{secrets.token_hex(8)}")

    def default_prefix(self, job: Job) -> str:
        return f"gs://{self.output_bucket}/stems/{job.track_id}/{job.job_id}"


@dataclass(frozen=True)
class Submission:
    """One message to publish to ``stem-separate`` and what must become of it."""

    key: str
    """The ``chaosId`` attribute: unique per submission."""
    kind: str
    data: bytes
    attributes: Mapping[str, str]
    expected_code: str | None
    """None: must end as ``stems.processed``; else the ``errorCode`` it must carry in stem-dlq."""
    job: Job | None = None
    """The job, for submissions whose body is one (good jobs always)."""
    output_prefix: str | None = None
    """Where a good job's stems must be: ``{output_prefix}/{stem}.{format}``."""

    @property
    def good(self) -> bool:
        return self.expected_code is None

    @property
    def wanted_objects(self) -> frozenset[str]:
        """The object names a good job may write under its prefix: its stems, their
        waveforms, the manifest."""
        if self.job is None:
            return frozenset()
        stems = self.job.stems or HTDEMUCS_6S_STEMS
        return frozenset(
            {
                "manifest.json",
                *(f"{s}.{self.job.format}" for s in stems),
                *(f"{s}.peaks.json" for s in stems),
            }
        )


Build = Callable[[Context, str, int], tuple[bytes, dict[str, str], Job | None]]


@dataclass(frozen=True)
class Kind:
    name: str
    expected_code: str | None
    build: Build

    @property
    def good(self) -> bool:
        return self.expected_code is None


# --- staged sources ---------------------------------------------------------------------


def _clip(seconds: float = CLIP_SECONDS, rate: int = 44100, channels: int = 2) -> np.ndarray:
    return multi_instrument_mix(seconds, rate)[:channels]


def _write(path: Path, samples: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    sf.write(path, samples.T, rate, format=fmt, subtype=subtype)
    return path.read_bytes()


def flac_declaring(seconds: float, workdir: Path) -> bytes:
    """A 1 s FLAC of silence whose STREAMINFO declares ``seconds`` of audio (a few KB)."""
    data = bytearray(
        _write(workdir / "declares.flac", np.zeros((2, 44100), np.float32), 44100, "FLAC", "PCM_16")
    )
    # "fLaC", a 4-byte block header, then STREAMINFO: its first 18 bytes end with the
    # 36-bit total sample count.
    fields = int.from_bytes(data[8:26], "big")
    fields = (fields & ~((1 << 36) - 1)) | int(seconds * 44100)
    data[8:26] = fields.to_bytes(18, "big")
    return bytes(data)


def silence_flac(seconds: float, workdir: Path) -> bytes:
    """``seconds`` of real, decodable silence: FLAC compresses it to almost nothing."""
    path = workdir / "silence.flac"
    rate = 8000
    with sf.SoundFile(path, "w", rate, 1, format="FLAC", subtype="PCM_16") as out:
        minute = np.zeros(rate * 60, dtype=np.int16)
        for _ in range(int(seconds // 60)):
            out.write(minute)
    return path.read_bytes()


def _audio_files(workdir: Path) -> dict[str, tuple[str, bytes]]:
    """name → (object name, bytes) of everything staged in the staging bucket."""
    stereo = _clip()
    wav = _write(workdir / "a.wav", stereo, 44100, "WAV", "PCM_16")
    flac = _write(workdir / "a.flac", stereo, 44100, "FLAC", "PCM_16")
    mono48 = _write(workdir / "m.flac", _clip(rate=48000, channels=1), 48000, "FLAC", "PCM_16")
    encode_audio(stereo, 44100, "mp3", workdir / "a.mp3")
    mp3 = (workdir / "a.mp3").read_bytes()
    ogg = _write(workdir / "a.ogg", stereo, 44100, "OGG", "VORBIS")
    # Over the byte cap (and the duration cap: the byte cap is checked first, unread).
    too_large = _write(workdir / "big.wav", _clip(seconds=7.0), 44100, "WAV", "PCM_16")
    assert len(too_large) > LIMITS.max_audio_bytes
    return {
        "wav": ("in/clip.wav", wav),
        "flac_mono_48k": ("in/mono-48k.flac", mono48),
        "mp3": ("in/clip.mp3", mp3),
        "mp3_named_wav": ("in/really-an-mp3.wav", mp3),
        "wav_named_ogg": ("in/really-a-wav.ogg", wav),
        "truncated_wav": ("in/truncated.wav", wav[: len(wav) * 3 // 5]),
        "random_bytes": ("in/random.wav", random.Random(7).randbytes(20_000)),
        "empty": ("in/empty.flac", b""),
        "text_named_mp3": ("in/notes.mp3", b"this is not audio, it is a shopping list\n" * 50),
        "truncated_flac": ("in/truncated.flac", flac[: len(flac) // 2]),
        "ogg_vorbis": ("in/clip.ogg", ogg),
        "declares_hours": ("in/declares-5h.flac", flac_declaring(5 * 3600, workdir)),
        "hours_of_silence": ("in/silence-2h.flac", silence_flac(2 * 3600, workdir)),
        "too_large": ("in/too-large.wav", too_large),
    }


def stage_sources(
    gcs: Any, staging_bucket: str, forbidden_bucket: str, workdir: Path
) -> dict[str, str]:
    """Upload the catalogue's audio (directly, not through any proxy); name → gs:// URI.

    ``forbidden`` is a *valid* clip in a bucket jobs may not use: were the allow-list not
    enforced, a job on it would be processed.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    uris = {}
    for name, (object_name, data) in _audio_files(workdir).items():
        gcs.bucket(staging_bucket).blob(object_name).upload_from_string(data)
        uris[name] = f"gs://{staging_bucket}/{object_name}"
    gcs.bucket(forbidden_bucket).blob("in/clip.wav").upload_from_string(
        (workdir / "a.wav").read_bytes()
    )
    uris["forbidden"] = f"gs://{forbidden_bucket}/in/clip.wav"
    return uris


# --- building messages -------------------------------------------------------------------


def _job_message(
    job: Job, *, extra_body: Mapping[str, Any] | None = None, **attributes: str
) -> tuple[bytes, dict[str, str], Job]:
    data, attrs = encode(job)
    if extra_body:
        # Readers ignore unknown fields; these carry free text that must not be logged.
        data = json.dumps({**json.loads(data), **extra_body}).encode()
    return data, {**attrs, **attributes}, job


def _job(ctx: Context, job_id: str, source: str, **fields: Any) -> Job:
    return Job(
        job_id=job_id,
        track_id=f"track-{job_id}",
        source_uri=ctx.sources.get(source, source),
        model=MODEL,
        correlation_id=f"corr-{job_id}",
        **fields,
    )


def _good(source: str, **fields: Any) -> Build:
    def build(ctx: Context, job_id: str, index: int) -> tuple[bytes, dict[str, str], Job | None]:
        del index
        extra = dict(fields)
        if extra.pop("custom_output", False):
            extra["output_uri"] = f"gs://{ctx.output_bucket}/custom/{job_id}"
        return _job_message(
            _job(ctx, job_id, source, **extra),
            extra_body={"notes": f"free text {ctx.canary}"},
        )

    return build


def _dict_body(fields: Callable[[Context, str], dict[str, Any]]) -> Build:
    """A JSON object body that is *not* a valid job (built raw: the model would refuse it)."""

    def build(ctx: Context, job_id: str, index: int) -> tuple[bytes, dict[str, str], Job | None]:
        del index
        body = {"jobId": job_id, "trackId": f"track-{job_id}", "model": MODEL}
        body.update(fields(ctx, job_id))
        return json.dumps(body).encode(), {"jobId": job_id}, None

    return build


def _raw(data: Callable[[Context], bytes]) -> Build:
    def build(ctx: Context, job_id: str, index: int) -> tuple[bytes, dict[str, str], Job | None]:
        del index
        return data(ctx), {"jobId": job_id}, None

    return build


def _poison_audio(source: str) -> Build:
    def build(ctx: Context, job_id: str, index: int) -> tuple[bytes, dict[str, str], Job | None]:
        del index
        return _job_message(_job(ctx, job_id, source))

    return build


GOOD_KINDS: Final[tuple[Kind, ...]] = (
    Kind("wav_to_mp3", None, _good("wav")),
    Kind("mono_48k_flac_to_wav", None, _good("flac_mono_48k", format="wav")),
    Kind("mp3_to_flac", None, _good("mp3", format="flac")),
    Kind(
        "mp3_named_wav_two_stems_128k",
        None,
        _good("mp3_named_wav", stems=("vocals", "drums"), mp3_bitrate=128),
    ),
    Kind("wav_named_ogg_custom_output", None, _good("wav_named_ogg", custom_output=True)),
    Kind("truncated_wav", None, _good("truncated_wav", format="wav")),
)

POISON_KINDS: Final[tuple[Kind, ...]] = (
    # The body is not a job at all.
    Kind("invalid_json", "invalid_message", _raw(lambda c: f'{{"jobId": "{c.canary}'.encode())),
    Kind(
        "not_utf8",
        "invalid_message",
        _raw(lambda c: b'{"jobId": "\xff\xfe' + c.canary.encode() + b'"}'),
    ),
    Kind(
        "huge_body",
        "invalid_message",
        _raw(lambda c: json.dumps({"jobId": "x", "pad": c.canary * 80_000}).encode()),
    ),
    Kind(
        "schema_violation",
        "invalid_message",
        _dict_body(
            lambda c, j: {"jobId": "../" + j, "sourceUri": c.sources["wav"], "mp3Bitrate": 1}
        ),
    ),
    # Object names that would leave their bucket or prefix, and URLs that are not gs://.
    Kind(
        "signed_url_source",
        "invalid_message",
        _dict_body(
            lambda c, j: {
                "sourceUri": "https://storage.googleapis.com/b/o.wav?X-Goog-Algorithm="
                f"GOOG4-RSA-SHA256&X-Goog-Signature={c.canary}"
            }
        ),
    ),
    Kind(
        "source_path_traversal",
        "invalid_message",
        _dict_body(
            lambda c, j: {"sourceUri": f"gs://{c.staging_bucket}/in/../../{c.forbidden_bucket}/x"}
        ),
    ),
    Kind(
        "output_encoded_slashes",
        "invalid_message",
        _dict_body(
            lambda c, j: {
                "sourceUri": c.sources["wav"],
                "outputUri": f"gs://{c.output_bucket}/stems%2F..%2F..%2F{c.forbidden_bucket}",
            }
        ),
    ),
    Kind(
        "output_absolute_path",
        "invalid_message",
        _dict_body(
            lambda c, j: {
                "sourceUri": c.sources["wav"],
                "outputUri": f"gs://{c.output_bucket}//etc",
            }
        ),
    ),
    Kind(
        "output_dot_dot_encoded",
        "invalid_message",
        _dict_body(
            lambda c, j: {
                "sourceUri": c.sources["wav"],
                "outputUri": f"gs://{c.output_bucket}/stems/%2e%2e/%2E%2E/x",
            }
        ),
    ),
    Kind(
        "unknown_stem",
        "invalid_message",
        _dict_body(lambda c, j: {"sourceUri": c.sources["wav"], "stems": ["vocals", "kazoo"]}),
    ),
    Kind(
        "model_not_served",
        "invalid_message",
        _dict_body(lambda c, j: {"sourceUri": c.sources["wav"], "model": "htdemucs_ft"}),
    ),
    # Buckets outside STEM_ALLOWED_BUCKETS: to read from, to write to.
    Kind("source_bucket_not_allowed", "bucket_not_allowed", _poison_audio("forbidden")),
    Kind(
        "output_bucket_not_allowed",
        "bucket_not_allowed",
        _dict_body(
            lambda c, j: {
                "sourceUri": c.sources["wav"],
                "outputUri": f"gs://{c.forbidden_bucket}/stems/{j}",
            }
        ),
    ),
    Kind(
        "missing_source",
        "source_missing",
        lambda c, j, i: _job_message(_job(c, j, f"gs://{c.staging_bucket}/in/nothing-{j}.wav")),
    ),
    # Bad audio.
    Kind("random_bytes", "corrupt_audio", _poison_audio("random_bytes")),
    Kind("empty_file", "corrupt_audio", _poison_audio("empty")),
    Kind("text_named_mp3", "corrupt_audio", _poison_audio("text_named_mp3")),
    Kind("truncated_flac", "corrupt_audio", _poison_audio("truncated_flac")),
    Kind("ogg_vorbis", "unsupported_audio", _poison_audio("ogg_vorbis")),
    Kind("declares_hours", "audio_too_long", _poison_audio("declares_hours")),
    Kind("hours_of_silence", "audio_too_long", _poison_audio("hours_of_silence")),
    Kind("over_the_byte_cap", "audio_too_large", _poison_audio("too_large")),
)


def make_submissions(
    ctx: Context,
    total: int,
    *,
    poison_fraction: float = 0.2,
    seed: int = 0,
    prefix: str = "job",
) -> list[Submission]:
    """``total`` submissions in a seeded random order: a ``poison_fraction`` share of poison
    (at least one of every poison kind), the rest good, kinds taken round-robin."""
    poison = max(round(total * poison_fraction), len(POISON_KINDS))
    good = total - poison
    if good < len(GOOD_KINDS):
        raise ValueError(
            f"{total} jobs cannot hold every poison kind ({len(POISON_KINDS)}) and every "
            f"good kind ({len(GOOD_KINDS)}); ask for at least {len(POISON_KINDS) + len(GOOD_KINDS)}"
        )
    kinds: list[Kind] = [POISON_KINDS[i % len(POISON_KINDS)] for i in range(poison)]
    kinds += [GOOD_KINDS[i % len(GOOD_KINDS)] for i in range(good)]
    random.Random(seed).shuffle(kinds)
    return [
        _submission(ctx, kind, f"{prefix}-{index:04d}", index) for index, kind in enumerate(kinds)
    ]


def _submission(ctx: Context, kind: Kind, key: str, index: int) -> Submission:
    data, attributes, job = kind.build(ctx, key, index)
    if not kind.good:
        # What a careless producer might forward from an HTTP request: never to be logged.
        attributes["authorization"] = f"Bearer {ctx.canary}"
    prefix = None
    if kind.good:
        assert job is not None, kind.name
        prefix = job.output_uri or ctx.default_prefix(job)
    return Submission(
        key=key,
        kind=kind.name,
        data=data,
        attributes={**attributes, "chaosId": key},
        expected_code=kind.expected_code,
        job=job,
        output_prefix=prefix,
    )


def counts(submissions: Sequence[Submission]) -> tuple[int, int]:
    """(good, poison) among ``submissions``."""
    good = sum(s.good for s in submissions)
    return good, len(submissions) - good
