"""What every ``stemctl`` command shares: settings loading and operator-grade errors."""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, ParamSpec, TypeVar, get_args

import click
import typer
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from pydantic import ValidationError

from consumer.errors import FatalWorkerError
from consumer.settings import Settings
from stem_contracts import Job

__all__ = [
    "MP3_BITRATES",
    "ClipMode",
    "CommandFailed",
    "Device",
    "SampleFormat",
    "StemFormat",
    "check_mp3_bitrate",
    "load_settings",
    "operator_errors",
    "output_options",
    "sample_rate_option",
    "stem_list",
    "track_ids",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class StemFormat(enum.StrEnum):
    mp3 = "mp3"
    wav = "wav"
    flac = "flac"


class SampleFormat(enum.StrEnum):
    pcm16 = "pcm16"
    pcm24 = "pcm24"
    float32 = "float32"


class ClipMode(enum.StrEnum):
    rescale = "rescale"
    clamp = "clamp"
    none = "none"


def sample_rate_option(value: str | None) -> int | str | None:
    """A typer callback: ``--sample-rate source`` or a rate in Hz."""
    if value is None or value == "source":
        return value
    if not value.isdigit():
        raise typer.BadParameter(f"{value!r} is neither 'source' nor a rate in Hz")
    return int(value)


def output_options(
    sample_format: SampleFormat, clip_mode: ClipMode, sample_rate: int | str | None
) -> dict[str, object]:
    """The job fields of the ``--sample-format``/``--clip-mode``/``--sample-rate`` options."""
    return {
        "sample_format": sample_format.value,
        "clip_mode": clip_mode.value,
        "sample_rate": sample_rate,
    }


class Device(enum.StrEnum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


MP3_BITRATES: Final[tuple[int, ...]] = get_args(Job.model_fields["mp3_bitrate"].annotation)
"""The MPEG-1 layer III bitrates a job may ask for (kbit/s), as the contract lists them."""


def check_mp3_bitrate(value: int) -> int:
    """A typer callback: a bitrate outside :data:`MP3_BITRATES` is a usage error."""
    if value not in MP3_BITRATES:
        raise typer.BadParameter(f"{value} is not one of {', '.join(map(str, MP3_BITRATES))}")
    return value


def stem_list(stems: str | None) -> tuple[str, ...] | None:
    """``"vocals, drums"`` → ``("vocals", "drums")``; ``None`` (all stems) when empty."""
    names = tuple(s.strip() for s in (stems or "").split(",") if s.strip())
    return names or None


class CommandFailed(Exception):
    """A command failed in a way the operator can act on; the message says how."""


def _fail(message: str) -> typer.Exit:
    typer.secho(f"stemctl: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


def operator_errors(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn the errors an operator can meet into one clear line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, click.exceptions.Exit):  # both are RuntimeErrors: let them out
            raise
        except CommandFailed as exc:
            raise _fail(str(exc)) from None
        except ValidationError as exc:
            raise _fail(f"invalid settings: {exc}") from None
        except auth_exc.DefaultCredentialsError:
            raise _fail(
                "no Google credentials: run `gcloud auth application-default login`, or set "
                "PUBSUB_EMULATOR_HOST / STORAGE_EMULATOR_HOST to use the emulators"
            ) from None
        except gexc.NotFound as exc:
            raise _fail(f"{exc.message} — run `stemctl infra apply` first") from None
        except (gexc.ServiceUnavailable, gexc.DeadlineExceeded) as exc:
            raise _fail(f"Pub/Sub or GCS unreachable: {exc.message}") from None
        except FatalWorkerError as exc:  # the worker cannot start: its model, its device
            raise _fail(str(exc)) from None
        except RuntimeError as exc:
            raise _fail(str(exc)) from None

    return wrapper


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise CommandFailed(f"invalid settings: {exc}") from exc


def track_ids(files: Sequence[Path]) -> list[str]:
    """A valid, distinct track id (the contract's ``trackId`` pattern) per file, from its
    name: ``Café Song (live).flac`` → ``Cafe-Song-live``; a second ``song`` → ``song-2``."""
    ids: list[str] = []
    for file in files:
        ascii_name = unicodedata.normalize("NFKD", file.stem).encode("ascii", "ignore").decode()
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_name).strip("._-")[:120] or "track"
        candidate, n = base, 1
        while candidate in ids:
            n += 1
            candidate = f"{base}-{n}"
        ids.append(candidate)
    return ids
