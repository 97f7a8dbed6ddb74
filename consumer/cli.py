"""``stemctl``: the operator CLI. Exit codes: 0 ok, 1 failure, 2 usage."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

import typer
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from pydantic import ValidationError

from consumer import gcp
from consumer.settings import Settings

__all__ = ["app", "main"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

app = typer.Typer(
    name="stemctl",
    help="Operate the stem-fleet separation service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
infra_app = typer.Typer(help="Provision topics, subscriptions and buckets.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")

_log = logging.getLogger("stemctl")


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
        except RuntimeError as exc:
            raise _fail(str(exc)) from None

    return wrapper


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise CommandFailed(f"invalid settings: {exc}") from exc


def configure_logging(level: int = logging.INFO) -> None:
    """Logging is configured here, in the entry point, and nowhere else."""
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


@infra_app.command("apply")
@operator_errors
def infra_apply(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would change; change nothing.")
    ] = False,
) -> None:
    """Create or update topics, subscriptions (DLQ, retry policy) and, on the emulator, buckets."""
    from infra.provision import apply

    settings = load_settings()
    project = settings.require_project()
    changes = apply(
        settings,
        dry_run=dry_run,
        publisher=gcp.publisher_client(settings),
        subscriber=gcp.subscriber_client(settings),
        storage_client=gcp.storage_client(settings) if settings.storage_emulator_host else None,
    )
    where = f"emulator {settings.pubsub_emulator_host}" if settings.using_emulators else "GCP"
    typer.echo(f"project {project} ({where}){' — dry run, nothing changed' if dry_run else ''}")
    for change in changes:
        typer.echo(f"  {change}")
    pending = sum(c.action != "ok" for c in changes)
    verb = "would change" if dry_run else "changed"
    typer.echo(f"{pending} {verb}, {len(changes) - pending} already as wanted")


def main() -> None:
    configure_logging()
    app()
