"""``python -m bench costs``: what each CPU stage of the worker costs, per core.

Every figure is **core-seconds per audio minute**: this process's CPU time (user +
system, all threads; ``getrusage``) over the operation, divided by the minutes of audio
it handled — of the mix for decoding and resampling, of one stem for encoding and
hashing (a job encodes six stems, so a job's encode cost per audio minute is six times
the per-stem-minute figure). CPU time rather than wall time, because this box is shared:
another process taking a core stretches the wall clock, not the CPU time this work needs.
torch runs one intra-op thread here, so no OpenMP thread spins on a core it does not use.

Operations alternate within each repetition, in an order that rotates from one
repetition to the next; the report gives the median and the spread over repetitions.

The MP3 encoders' quality is measured too: each stem's MP3 is decoded back (with the
fleet's own decoder), aligned, and compared with the 16-bit PCM it was made from — SNR and
log-spectral distance, and their difference to the same encoder at ``-q 0``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import julius
import lameenc
import numpy as np
import numpy.typing as npt
import soundfile as sf
import torch
from rich.console import Console
from rich.table import Table

from bench.corpus import Corpus, build_corpus
from bench.fidelity import align, log_spectral_distance_db, snr_db
from bench.measure import ForwardTimer, StageLog
from bench.runtime import environment
from bench.workload import MODEL_NAME, model_folder, synth_track
from consumer import audio
from consumer.analysis import StemMeter
from consumer.errors import CorruptAudio
from consumer.separation import DemucsSeparator
from consumer.settings import Settings
from stem_contracts import crc32c_b64

__all__ = ["analysis_main", "main", "run_costs"]

_RESULTS: Final = Path(__file__).resolve().parent / "results"
DEFAULT_JSON: Final = _RESULTS / "costs.json"
PARTS: Final = ("drums", "bass", "vocals", "guitar", "piano")
_LOSSLESS_AND_MP3: Final[tuple[audio.AudioFormat, ...]] = ("wav", "flac", "mp3")
QUALITIES: Final = (0, 2, 3, 5, 7)
BITRATE: Final = 320
RATE: Final = 44_100
STEMS_PER_JOB: Final = 6
_DAY_S: Final = 86_400.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Op:
    """One measured operation: ``run()`` does the work and returns the minutes handled."""

    name: str
    group: str  # decode | resample | mp3 | encode | hash | pipeline
    unit: str  # "audio-min" or "stem-min"
    run: Callable[[], float]
    meta: dict[str, Any] = field(default_factory=dict)
    cpu_per_min: list[float] = field(default_factory=list)
    wall_per_min: list[float] = field(default_factory=list)

    def measure(self) -> None:
        wall0, cpu0 = time.perf_counter(), _cpu_s()
        minutes = self.run()
        cpu, wall = _cpu_s() - cpu0, time.perf_counter() - wall0
        cpu -= self.meta.pop("_excluded_cpu_s", 0.0)  # e.g. the model's forward passes
        self.cpu_per_min.append(cpu / minutes)
        self.wall_per_min.append(wall / minutes)

    def to_json(self) -> dict[str, Any]:
        cpu = self.cpu_per_min
        median = statistics.median(cpu)
        return {
            "name": self.name,
            "group": self.group,
            "unit": self.unit,
            "core_s_per_min": round(median, 4),
            "core_s_per_min_range": [round(min(cpu), 4), round(max(cpu), 4)],
            "spread": round((max(cpu) - min(cpu)) / median, 3) if median else None,
            "wall_s_per_min": round(statistics.median(self.wall_per_min), 4),
            "reps": len(cpu),
            **{k: v for k, v in self.meta.items() if not k.startswith("_")},
        }


# --- the encoders ------------------------------------------------------------------------


def _pcm16(stem: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    """Interleaved int16, quantised as the fleet does (``consumer.audio``)."""
    return np.ascontiguousarray((np.clip(stem, -1, 1) * (2**15 - 1)).astype(np.int16).T)


def _lameenc_raw(pcm: npt.NDArray[np.int16], quality: int) -> bytes:
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(BITRATE)
    encoder.set_in_sample_rate(RATE)
    encoder.set_out_sample_rate(RATE)
    encoder.set_channels(2)
    encoder.set_quality(quality)
    encoder.silence()
    return bytes(encoder.encode(pcm.tobytes())) + bytes(encoder.flush())


def _pyav_mp3(pcm: npt.NDArray[np.int16], quality: int) -> bytes:
    """ffmpeg's libmp3lame wrapper: ``compression_level`` is LAME's ``-q``."""
    import av  # dev extra; only the bench uses it

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=RATE, layout="stereo")
        codec = stream.codec_context
        codec.bit_rate = BITRATE * 1000
        codec.options = {"compression_level": str(quality)}
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def _pedalboard_mp3(stem: npt.NDArray[np.float32], path: Path) -> None:
    """pedalboard's bundled LAME: CBR 320 at its own (fixed) ``-q``."""
    from pedalboard.io import AudioFile  # dev extra; only the bench uses it

    with AudioFile(str(path), "w", RATE, 2, quality=BITRATE) as out:
        out.write(np.clip(stem, -1, 1))


@dataclass(frozen=True)
class _Mp3Variant:
    """An MP3 encoder setting whose files are kept for the quality measurement."""

    encoder: str
    quality: int | None  # LAME -q; None where the library does not expose it

    @property
    def name(self) -> str:
        q = "" if self.quality is None else f" -q {self.quality}"
        return f"mp3 {BITRATE}k {self.encoder}{q}"


def _available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --- building the operations --------------------------------------------------------------


class _Workspace:
    """Input files (written once) and a place for each operation's outputs."""

    def __init__(self, corpus: Corpus, root: Path) -> None:
        self.corpus = corpus
        self.root = root
        self.sources: dict[str, list[Path]] = {"wav": [], "flac": [], "mp3": [], "wav48": []}
        for seed, mix in corpus.mixes.items():
            for fmt in _LOSSLESS_AND_MP3:
                path = root / f"mix{seed}.{fmt}"
                audio.encode(mix, RATE, fmt, path)
                self.sources[fmt].append(path)
            resampled = julius.resample_frac(torch.from_numpy(mix), RATE, 48_000).numpy()
            path48 = root / f"mix{seed}-48k.wav"
            sf.write(path48, resampled.T, 48_000, subtype="PCM_16")
            self.sources["wav48"].append(path48)

    def out(self, name: str) -> Path:
        path = self.root / name.replace(" ", "_")
        path.mkdir(exist_ok=True)
        return path


def _decode_op(ws: _Workspace, fmt: str) -> Op:
    label = {"wav48": "decode wav 48 kHz (+ resample to 44.1)"}.get(fmt, f"decode {fmt}")

    def run() -> float:
        for path in ws.sources[fmt]:
            audio.decode(path, max_seconds=_DAY_S, target_rate=RATE)
        return ws.corpus.mix_minutes

    return Op(label, "decode", "audio-min", run)


def _resample_op(ws: _Workspace) -> Op:
    mixes48 = [sf.read(p, dtype="float32", always_2d=True)[0].T.copy() for p in ws.sources["wav48"]]

    def run() -> float:
        for mix in mixes48:
            julius.resample_frac(torch.from_numpy(mix), 48_000, RATE)
        return ws.corpus.mix_minutes

    return Op("resample 48 → 44.1 kHz (julius)", "resample", "audio-min", run)


def _fleet_encode_op(ws: _Workspace, fmt: str, quality: int = 2) -> Op:
    """``consumer.audio.encode``: quantise, encode, write, sha256 (what the worker runs)."""
    out = ws.out(f"fleet-{fmt}-q{quality}")
    name = f"mp3 {BITRATE}k fleet (lameenc) -q {quality}" if fmt == "mp3" else f"{fmt} 16-bit"

    def run() -> float:
        for (seed, part), stem in ws.corpus.stems.items():
            audio.encode(
                stem,
                RATE,
                fmt,  # type: ignore[arg-type]
                out / f"{seed}-{part}.{fmt}",
                mp3_bitrate=BITRATE,
                mp3_quality=quality,
            )
        return ws.corpus.stem_minutes

    meta: dict[str, Any] = {"format": fmt, "encoder": "consumer.audio.encode"}
    if fmt == "mp3":
        meta |= {"quality": quality, "files": str(out)}
    return Op(name, "mp3" if fmt == "mp3" else "encode", "stem-min", run, meta)


def _analysis_op(ws: _Workspace) -> Op:
    """``consumer.analysis.StemMeter`` as the worker runs it beside each encoder: loudness,
    peak and the waveform, fed in the encoder's blocks, plus the peaks.json text."""
    points = Settings().waveform_points

    def run() -> float:
        for stem in ws.corpus.stems.values():
            meter = StemMeter(RATE, stem.shape[0], stem.shape[1], points=points)
            for start in range(0, stem.shape[1], audio.ENCODE_BLOCK_FRAMES):
                meter.add(stem[:, start : start + audio.ENCODE_BLOCK_FRAMES])
            json.dumps(meter.result(silence_lufs=-50.0).waveform, separators=(",", ":"))
        return ws.corpus.stem_minutes

    return Op("analysis: loudness, peak, peaks.json", "analysis", "stem-min", run)


def _raw_mp3_op(ws: _Workspace, variant: _Mp3Variant) -> Op:
    out = ws.out(variant.name)
    pcm = {key: _pcm16(stem) for key, stem in ws.corpus.stems.items()}

    def run() -> float:
        for (seed, part), stem in ws.corpus.stems.items():
            path = out / f"{seed}-{part}.mp3"
            if variant.encoder == "pedalboard":
                _pedalboard_mp3(stem, path)
            elif variant.encoder == "pyav":
                path.write_bytes(_pyav_mp3(pcm[(seed, part)], variant.quality or 0))
            else:
                path.write_bytes(_lameenc_raw(pcm[(seed, part)], variant.quality or 0))
        return ws.corpus.stem_minutes

    meta = {"format": "mp3", "encoder": variant.encoder, "quality": variant.quality}
    return Op(variant.name, "mp3", "stem-min", run, meta | {"files": str(out)})


def _hash_ops(ws: _Workspace) -> list[Op]:
    """sha256 (the stem's digest in the result event) and crc32c (GCS upload check) over
    an encoded stem's bytes, per stem-minute of MP3 320k and of 16-bit WAV."""
    stems = list(ws.corpus.stems.values())
    frames = sum(s.shape[1] for s in stems)
    blobs = {
        "mp3": [_lameenc_raw(_pcm16(s), 7) for s in stems],
        "wav": [_pcm16(s).tobytes() for s in stems],
    }
    ops = []
    for fmt, data in blobs.items():
        mb_per_min = sum(len(b) for b in data) / 2**20 / ws.corpus.stem_minutes
        for algo in ("sha256", "crc32c"):

            def run(data: list[bytes] = data, algo: str = algo) -> float:
                for _ in range(20):  # the work is tiny: repeat it to rise above the noise
                    for blob in data:
                        if algo == "sha256":
                            hashlib.sha256(blob).digest()
                        else:
                            crc32c_b64(blob)
                return 20 * ws.corpus.stem_minutes

            meta = {"format": fmt, "mib_per_stem_min": round(mb_per_min, 3), "frames": frames}
            ops.append(Op(f"{algo} of {fmt} bytes", "hash", "stem-min", run, meta))
    return ops


def _separator_host_op(separator: DemucsSeparator, track: npt.NDArray[np.float32]) -> Op:
    """The separator's own host work (normalising, chunking, overlap-add, hand-over),
    which runs on the CPU on a GPU node too: CPU time of ``separate_blocks`` minus the CPU
    time spent inside the model's forward passes (tiny model; the forward is excluded)."""
    timer = _CpuForwardTimer(separator.model)
    op = Op("separator host work (overlap-add etc.)", "pipeline", "audio-min", lambda: 0.0)

    def run() -> float:
        timer.reset()
        for _ in separator.separate_blocks(track):
            pass
        op.meta["_excluded_cpu_s"] = timer.cpu_s
        return float(track.shape[1]) / RATE / 60.0

    op.run = run
    return op


class _CpuForwardTimer(ForwardTimer):
    """``ForwardTimer`` that also sums this process's CPU time inside the forwards."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__(module)
        self.cpu_s = 0.0
        self._cpu0 = 0.0

    def _before(self, module: torch.nn.Module, args: Any) -> None:
        self._cpu0 = _cpu_s()
        super()._before(module, args)

    def _after(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        super()._after(module, args, output)
        self.cpu_s += _cpu_s() - self._cpu0

    def reset(self) -> None:
        super().reset()
        self.cpu_s = 0.0


def _handler_ops(
    separator: DemucsSeparator,
    model_repo: Path,
    track: Path,
    workdir: Path,
    qualities: Sequence[int],
) -> list[Op]:
    """The production ``JobHandler`` in-process (six MP3 stems), CPU minus the forwards:
    the whole CPU pipeline per audio minute, measured in one piece, to check the sum of
    the parts against."""
    from bench.fleet import InProcessPipeline

    timer = _CpuForwardTimer(separator.model)
    stage_log = StageLog()
    ops = []
    for quality in qualities:
        settings = Settings.model_validate(
            {
                "model": MODEL_NAME,
                "model_repo": model_repo,
                "device": "cpu",
                "shifts": 0,
                "job_timeout_s": _DAY_S,
                "metrics_port": 0,
                "progress_interval_s": 0,
                "mp3_quality": quality,
            }
        )
        pipeline = InProcessPipeline(
            settings, separator, forward=timer, stage_log=stage_log, workdir=workdir / f"q{quality}"
        )
        op = Op(f"whole handler, six mp3 stems -q {quality}", "pipeline", "audio-min", lambda: 0.0)

        def run(pipeline: InProcessPipeline = pipeline, op: Op = op) -> float:
            timer.reset()
            with stage_log.capture():
                result = pipeline.run(track, 0)
            op.meta["_excluded_cpu_s"] = timer.cpu_s
            return result.audio_seconds / 60.0

        op.run = run
        op.meta["quality"] = quality
        ops.append(op)
    return ops


# --- quality ------------------------------------------------------------------------------


def _decoded(path: Path, failures: list[str]) -> npt.NDArray[np.float32]:
    try:
        samples: npt.NDArray[np.float32] = audio.decode(
            path, max_seconds=_DAY_S, target_rate=RATE
        ).samples
        return samples
    except CorruptAudio as exc:
        # The fleet's decoder refuses this encoder's file (the report's "fleet_decoder");
        # libsndfile reading the file itself does not.
        failures.append(f"{path.name}: {exc}")
        data: npt.NDArray[np.float32] = sf.read(path, dtype="float32", always_2d=True)[0]
        return np.ascontiguousarray(data.T)


def _quality(corpus: Corpus, ops: Sequence[Op]) -> list[dict[str, Any]]:
    """Decode every MP3 variant's files with the fleet's decoder; per instrument (mean over
    seeds) SNR and LSD against the 16-bit PCM each was made from, and the differences to
    the same encoder at ``-q 0``. One lag per seed and variant, found on the drums (noise:
    unambiguous, where a bass sine repeats every period) and applied to all its stems."""
    rows: list[dict[str, Any]] = []
    parts = sorted({part for _, part in corpus.stems}, key=list(PARTS).index)
    for op in ops:
        if op.group != "mp3" or "files" not in op.meta:
            continue
        folder = Path(op.meta["files"])
        failures: list[str] = []
        snr: dict[str, list[float]] = {p: [] for p in parts}
        lsd: dict[str, list[float]] = {p: [] for p in parts}
        lags = {}
        for seed in sorted({seed for seed, _ in corpus.stems}):
            drums = _pcm16(corpus.stems[(seed, "drums")]).T.astype(np.float32) / (2**15 - 1)
            lags[seed] = align(drums, _decoded(folder / f"{seed}-drums.mp3", failures))
            for part in parts:
                reference = _pcm16(corpus.stems[(seed, part)]).T.astype(np.float32) / (2**15 - 1)
                body = _decoded(folder / f"{seed}-{part}.mp3", failures)[:, lags[seed] :]
                snr[part].append(snr_db(reference, body))
                lsd[part].append(log_spectral_distance_db(reference, body, RATE))
        rows.append(
            {
                "name": op.name,
                "encoder": op.meta.get("encoder"),
                "quality": op.meta.get("quality"),
                "snr_db": {p: round(statistics.mean(v), 2) for p, v in snr.items()},
                "lsd_db": {p: round(statistics.mean(v), 3) for p, v in lsd.items()},
                "lsd_db_mean": round(statistics.mean(x for v in lsd.values() for x in v), 3),
                "lags": sorted(set(lags.values())),
                "fleet_decoder": "ok"
                if not failures
                else f"failed on {len(set(failures))} files, e.g. {failures[0]}; "
                "measured with soundfile reading the file instead",
            }
        )
    for row in rows:
        base = next((r for r in rows if r["encoder"] == row["encoder"] and r["quality"] == 0), None)
        if base is not None:
            row["worst_snr_db_vs_q0"] = round(
                min(row["snr_db"][p] - base["snr_db"][p] for p in parts), 2
            )
            row["worst_lsd_db_vs_q0"] = round(
                max(row["lsd_db"][p] - base["lsd_db"][p] for p in parts), 3
            )
    return rows


# --- the run ------------------------------------------------------------------------------


def run_costs(
    *,
    seconds: float,
    reps: int,
    qualities: Sequence[int],
    cache_dir: Path,
    console: Console,
    handler: bool = True,
    partial_json: Path | None = None,
    timings_from: Path | None = None,
) -> dict[str, Any]:
    torch.set_num_threads(1)
    corpus = build_corpus(seconds, seeds=(0, 1))
    console.print(
        f"corpus: {len(corpus.stems)} stems ({corpus.stem_minutes:.2f} stem-min), "
        f"{len(corpus.mixes)} mixes ({corpus.mix_minutes:.2f} min)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-costs-") as tmp:
        ws = _Workspace(corpus, Path(tmp))
        ops: list[Op] = [_decode_op(ws, fmt) for fmt in ("wav", "flac", "mp3", "wav48")]
        ops.append(_resample_op(ws))
        ops += [_fleet_encode_op(ws, "mp3", q) for q in qualities]
        ops += [_fleet_encode_op(ws, fmt) for fmt in ("flac", "wav")]
        ops.append(_analysis_op(ws))
        ops.append(_raw_mp3_op(ws, _Mp3Variant("lameenc", 2)))
        missing = [m for m in ("av", "pedalboard") if not _available(m)]
        if "av" not in missing:
            ops += [_raw_mp3_op(ws, _Mp3Variant("pyav", q)) for q in qualities]
        if "pedalboard" not in missing:
            ops.append(_raw_mp3_op(ws, _Mp3Variant("pedalboard", None)))
        ops += _hash_ops(ws)
        repo = model_folder("tiny", cache_dir)
        separator = DemucsSeparator.load(MODEL_NAME, repo=repo, device="cpu", shifts=0)
        ops.append(_separator_host_op(separator, corpus.mixes[0]))
        if handler:
            track = synth_track(seconds, cache_dir)
            ops += _handler_ops(separator, repo, track, Path(tmp) / "handler", qualities)
        if timings_from is not None:
            # --quality-only: encode once for the quality step, keep an earlier run's timings.
            earlier = {o["name"]: o for o in json.loads(timings_from.read_text())["ops"]}
            for op in ops:
                if op.group == "mp3" and "files" in op.meta:
                    op.run()
                if op.name in earlier:
                    low, high = earlier[op.name]["core_s_per_min_range"]
                    op.cpu_per_min[:] = [low, earlier[op.name]["core_s_per_min"], high]
                    op.wall_per_min[:] = [earlier[op.name]["wall_s_per_min"]] * 3
            ops = [op for op in ops if op.cpu_per_min]
            reps = 0
        else:
            for op in ops:  # untimed warm-up: imports, first allocations, file caches
                op.run()
                op.meta.pop("_excluded_cpu_s", None)
        for rep in range(reps):
            order = ops[rep % len(ops) :] + ops[: rep % len(ops)]
            for op in order:
                op.measure()
            console.print(f"rep {rep + 1}/{reps} done")
        if partial_json is not None and reps:  # the timings are kept if what follows fails
            partial_json.write_text(json.dumps([op.to_json() for op in ops], indent=2) + "\n")
        quality = _quality(corpus, ops)
    logging.getLogger(__name__).debug("costs measured")
    return {
        "kind": "costs",
        "environment": environment(torch.device("cpu")),
        "options": {
            "seconds": seconds,
            "reps": reps,
            "qualities": list(qualities),
            "timings_from": None if timings_from is None else str(timings_from),
        },
        "corpus": {
            "stem_minutes": round(corpus.stem_minutes, 3),
            "mix_minutes": round(corpus.mix_minutes, 3),
        },
        "missing_encoders": missing,
        "ops": [op.to_json() for op in ops],
        "quality": quality,
        "derived": derive(ops_json := [op.to_json() for op in ops], quality),
        "_ops": ops_json,
    }


def derive(ops: Sequence[dict[str, Any]], quality: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The per-job figures the capacity model uses, from the measured parts: core-seconds
    per audio minute of the CPU pipeline for six stems, by format and MP3 ``-q``."""
    by_name = {op["name"]: op["core_s_per_min"] for op in ops}
    host = by_name.get("separator host work (overlap-add etc.)", 0.0)
    decode = statistics.mean(by_name[f"decode {f}"] for f in ("wav", "flac", "mp3"))

    def upload(fmt: str) -> float:
        # GcsBlobStore.upload: crc32c of the file, and the client library's own while it
        # uploads. (sha256 is inside the encode figures.)
        return 2 * float(by_name.get(f"crc32c of {'mp3' if fmt == 'mp3' else 'wav'} bytes", 0.0))

    pipelines: dict[str, float] = {}
    for op in ops:
        if op["group"] == "mp3" and op.get("encoder") == "consumer.audio.encode":
            pipelines[f"mp3 -q {op['quality']}"] = op["core_s_per_min"]
        elif op["group"] == "encode":
            pipelines[op["format"]] = op["core_s_per_min"]
    per_job = {
        key: round(decode + host + STEMS_PER_JOB * (enc + upload(key.split()[0])), 3)
        for key, enc in pipelines.items()
    }
    whole = {
        f"mp3 -q {op['quality']}": op["core_s_per_min"]
        for op in ops
        if op["name"].startswith("whole handler")
    }
    return {
        "decode_core_s_per_audio_min": round(decode, 4),
        "separator_host_core_s_per_audio_min": round(host, 4),
        "pipeline_core_s_per_audio_min": per_job,
        "pipeline_core_s_per_audio_min_measured_whole": whole,
        "note": "pipeline = mean decode (wav/flac/mp3) + separator host work + 6 x (encode incl. "
        "sha256 + 2 x crc32c), resampling not included (44.1 kHz input). 'measured_whole': the "
        "in-process JobHandler's CPU minus its forward passes, on the tiny random model's "
        "stems, which are not music: LAME's effort depends on the material, so it is no check "
        "of the encode figures (the corpus is).",
        "quality": {row["name"]: row for row in quality},
    }


# --- printing ------------------------------------------------------------------------------


def print_costs(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="core-seconds per audio minute (CPU time; median of reps)")
    for column in ("operation", "per", "core-s/min", "range", "spread", "wall-s/min"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for op in report["ops"]:
        low, high = op["core_s_per_min_range"]
        table.add_row(
            op["name"],
            op["unit"],
            f"{op['core_s_per_min']:.3f}",
            f"{low:.3f}–{high:.3f}",
            f"{100 * (op['spread'] or 0):.0f}%",
            f"{op['wall_s_per_min']:.3f}",
        )
    console.print(table)
    quality = Table(
        title="MP3 quality: decoded vs the 16-bit source, per instrument (mean of seeds)"
    )
    quality.add_column("encoder setting")
    for part in PARTS:
        quality.add_column(f"SNR {part}", justify="right")
    for column in ("worst ΔSNR vs -q 0", "LSD dB", "worst ΔLSD vs -q 0"):
        quality.add_column(column, justify="right")
    for row in report["quality"]:
        quality.add_row(
            row["name"],
            *(f"{row['snr_db'].get(p, math.nan):.1f}" for p in PARTS),
            _signed(row.get("worst_snr_db_vs_q0")),
            f"{row['lsd_db_mean']:.3f}",
            _signed(row.get("worst_lsd_db_vs_q0"), 3),
        )
    console.print(quality)
    derived = report["derived"]
    console.print("CPU pipeline per audio minute, six stems (core-s): sum of parts / whole handler")
    for key, value in derived["pipeline_core_s_per_audio_min"].items():
        whole = derived["pipeline_core_s_per_audio_min_measured_whole"].get(key)
        console.print(f"  {key:10} {value:7.2f}" + ("" if whole is None else f"   {whole:7.2f}"))


def _signed(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:+.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench costs", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="length of each stem and mix (30)"
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (3)")
    parser.add_argument(
        "--qualities", default=",".join(map(str, QUALITIES)), help="LAME -q values (0,2,3,5,7)"
    )
    parser.add_argument("--no-handler", action="store_true", help="skip the whole-handler runs")
    parser.add_argument(
        "--quality-only",
        type=Path,
        default=None,
        metavar="EARLIER_JSON",
        help="measure only the MP3 quality; take the timings from an earlier report",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"report ({DEFAULT_JSON})")
    parser.add_argument("--cache-dir", type=Path, default=None, help="model folders and tracks")
    ns = parser.parse_args(argv)
    from bench.workload import DEFAULT_CACHE_DIR

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    report = run_costs(
        seconds=ns.seconds,
        reps=ns.reps,
        qualities=[int(q) for q in ns.qualities.split(",")],
        cache_dir=ns.cache_dir or DEFAULT_CACHE_DIR,
        console=console,
        handler=not ns.no_handler,
        partial_json=ns.json.with_suffix(".timings.json"),
        timings_from=ns.quality_only,
    )
    report.pop("_ops", None)
    print_costs(console, report)
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"JSON report: {ns.json}")
    return 0


def analysis_main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench analysis``: the stem analysis against the MP3 encode it runs
    beside, side by side on the same stems (the issue's target: under 5 % of a job's CPU)."""
    parser = argparse.ArgumentParser(prog="python -m bench analysis", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each stem (60)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (5)")
    ns = parser.parse_args(argv)
    torch.set_num_threads(1)
    corpus = build_corpus(ns.seconds, seeds=(0,))
    quality = Settings().mp3_quality
    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp:
        ws = _Workspace(corpus, Path(tmp))
        ops = [_analysis_op(ws), _fleet_encode_op(ws, "mp3", quality)]
        for op in ops:  # warm-up
            op.run()
        for rep in range(ns.reps):
            for op in ops[rep % 2 :] + ops[: rep % 2]:
                op.measure()
    analysis, mp3 = (statistics.median(op.cpu_per_min) for op in ops)
    print(
        f"{corpus.stem_minutes:.1f} stem-min, {ns.reps} reps, CPU time (median), per stem-minute:"
    )
    print(f"  analysis (loudness, peak, peaks.json)  {analysis:.3f} core-s")
    print(f"  MP3 320k encode, -q {quality} (the default)   {mp3:.3f} core-s")
    print(f"  analysis / MP3 encode = {100 * analysis / mp3:.1f} %")
    return 0
