"""What every ``stemctl`` command shares: settings loading and operator-grade errors."""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click
import typer
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from pydantic import ValidationError

from consumer.errors import FatalWorkerError
from consumer.settings import Settings

__all__ = ["CommandFailed", "StemFormat", "load_settings", "operator_errors"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class StemFormat(enum.StrEnum):
    mp3 = "mp3"
    wav = "wav"
    flac = "flac"


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
