"""The benchmark's command line, parsed into one frozen options object."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, cast

from bench.workload import DEFAULT_CACHE_DIR
from devkit.models import ModelSize

__all__ = ["MODES", "RSS_MODES", "Mode", "Options", "parse_args"]

Mode = Literal["reference", "inprocess", "e2e"]
MODES: Final[tuple[Mode, ...]] = ("reference", "inprocess", "e2e")
RSS_MODES: Final[tuple[Mode, ...]] = ("reference", "inprocess")
Dtype = Literal["fp32", "bf16", "fp16"]

_RESULTS: Final = Path(__file__).resolve().parent / "results"
DEFAULT_JSON: Final = _RESULTS / "latest.json"
DEFAULT_RSS_JSON: Final = _RESULTS / "latest-rss.json"
RSS_DEFAULT_SECONDS: Final = 600.0


@dataclass(frozen=True)
class Options:
    seconds: float
    model: ModelSize
    reps: int
    modes: tuple[Mode, ...]
    json_path: Path
    device: Literal["auto", "cpu", "cuda"]
    threads: int | None
    dtype: Dtype
    warmup: int
    overlap: float
    mp3_bitrate: int
    seed: int
    cache_dir: Path
    timeout_s: float
    rss_only: bool
    rss_child: Mode | None  # internal: this process is one --rss-only measurement
    fleet_settings: tuple[tuple[str, str], ...] = ()
    """``--set KEY=VALUE``: overrides of the fleet's ``Settings`` fields."""

    def child_args(self, mode: Mode) -> list[str]:
        """The arguments that make a fresh ``python -m bench`` measure ``mode``'s RSS."""
        args = [
            f"--seconds={self.seconds}",
            f"--model={self.model}",
            f"--device={self.device}",
            f"--dtype={self.dtype}",
            f"--overlap={self.overlap}",
            f"--mp3-bitrate={self.mp3_bitrate}",
            f"--seed={self.seed}",
            f"--cache-dir={self.cache_dir}",
            f"--rss-child={mode}",
        ]
        if self.threads is not None:
            args.append(f"--threads={self.threads}")
        args += [f"--set={key}={value}" for key, value in self.fleet_settings]
        return args


def _modes(text: str) -> tuple[Mode, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in MODES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown mode(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(MODES)}"
        )
    return tuple(dict.fromkeys(cast(tuple[Mode, ...], names)))


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="The fleet's pipeline against demucs.api.Separator + save_audio, side "
        "by side, on a deterministic test track. See bench/README.md.",
    )
    add = parser.add_argument
    add(
        "--seconds",
        type=_positive_float,
        default=None,
        help="length of the test track (default 30; 600 with --rss-only)",
    )
    add(
        "--model",
        choices=("full", "tiny"),
        default="full",
        help="full: the htdemucs_6s architecture with random weights (the cost of the real "
        "model); tiny: a small model of the same class, for quick runs (default full)",
    )
    add("--reps", type=_positive_int, default=3, help="timed repetitions per mode (default 3)")
    add(
        "--modes",
        type=_modes,
        default=None,
        help="comma list of reference,inprocess,e2e (default all three; "
        "with --rss-only: inprocess)",
    )
    add(
        "--json",
        type=Path,
        default=None,
        dest="json_path",
        help=f"where to write the JSON report (default {DEFAULT_JSON}; "
        f"with --rss-only {DEFAULT_RSS_JSON.name})",
    )
    add(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model runs (default auto: cuda when available)",
    )
    add(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch intra-op threads (default: torch's own choice)",
    )
    add(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="the fleet's inference precision; needs a separator that supports it "
        "(today only fp32). The reference always runs fp32.",
    )
    add(
        "--warmup",
        type=int,
        default=1,
        help="untimed runs of every pipeline on a 5 s clip before timing (default 1)",
    )
    add("--overlap", type=float, default=0.25, help="segment overlap, both sides (0.25)")
    add("--mp3-bitrate", type=int, default=320, help="MP3 bitrate in kbit/s (320)")
    add("--seed", type=int, default=0, help="test-track seed (0)")
    add(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help=f"model folders and test tracks (default {DEFAULT_CACHE_DIR})",
    )
    add(
        "--timeout",
        type=_positive_float,
        default=None,
        dest="timeout_s",
        help="seconds to wait for one e2e job (default 300 + 20 per audio second)",
    )
    add(
        "--set",
        type=_setting,
        action="append",
        default=[],
        dest="fleet_settings",
        metavar="KEY=VALUE",
        help="override a field of the fleet's Settings (its snake_case name, e.g. "
        "--set segment_batch=1 --set encode_workers=2); repeatable, validated as the "
        "STEM_ variable would be. The reference is unaffected",
    )
    add(
        "--rss-only",
        "--long",
        action="store_true",
        dest="rss_only",
        help="measure peak RSS of each pipeline on a long track (default 10 min), each "
        "in a fresh process, relative to its footprint after loading the model",
    )
    add("--rss-child", choices=RSS_MODES, default=None, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = _parser()
    ns = parser.parse_args(argv)
    rss = bool(ns.rss_only or ns.rss_child)
    seconds = ns.seconds or (RSS_DEFAULT_SECONDS if rss else 30.0)
    modes: tuple[Mode, ...] = ns.modes or (("inprocess",) if rss else MODES)
    if rss and (bad := [m for m in modes if m not in RSS_MODES]):
        parser.error(f"--rss-only measures {' and '.join(RSS_MODES)}, not {', '.join(bad)}")
    if not 0 <= ns.overlap < 1:
        parser.error("--overlap must be in [0, 1)")
    if ns.warmup < 0:
        parser.error("--warmup must be >= 0")
    return Options(
        seconds=seconds,
        model=ns.model,
        reps=ns.reps,
        modes=modes,
        json_path=ns.json_path or (DEFAULT_RSS_JSON if rss else DEFAULT_JSON),
        device=ns.device,
        threads=ns.threads,
        dtype=ns.dtype,
        warmup=ns.warmup,
        overlap=ns.overlap,
        mp3_bitrate=ns.mp3_bitrate,
        seed=ns.seed,
        cache_dir=ns.cache_dir,
        timeout_s=ns.timeout_s or 300.0 + 20.0 * seconds,
        rss_only=rss,
        rss_child=ns.rss_child,
        fleet_settings=tuple(ns.fleet_settings),
    )
