"""``stemctl``: the operator CLI. Exit codes: 0 ok, 1 failure, 2 usage."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from consumer import gcp
from consumer.logs import configure_logging
from consumer.settings import Settings
from stem_contracts import (
    Job,
    JobPublisher,
    ResultEvent,
    ResultSubscriber,
    StemsFailed,
)
from stemctl.display import progress_bars
from stemctl.dlq.commands import dlq_app
from stemctl.jobs import jobs_app
from stemctl.model import ModelName, ModelRepo, model_app
from stemctl.results import (
    event_line,
    results_subscription,
    show_progress,
    usage_line,
    wait_for_result,
)
from stemctl.support import (
    MP3_BITRATES,
    ClipMode,
    Device,
    SampleFormat,
    StemFormat,
    check_mp3_bitrate,
    load_settings,
    operator_errors,
    output_options,
    sample_rate_option,
    stem_list,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="stemctl",
    help="Operate the stem-fleet separation service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
infra_app = typer.Typer(help="Provision topics, subscriptions and buckets.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
results_app = typer.Typer(help="Watch result events on stem-results.", no_args_is_help=True)
app.add_typer(results_app, name="results")
app.add_typer(dlq_app, name="dlq")
app.add_typer(model_app, name="model")
app.add_typer(jobs_app, name="jobs")

_log = logging.getLogger("stemctl")


@infra_app.command("apply")
@operator_errors
def infra_apply(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would change; change nothing.")
    ] = False,
) -> None:
    """Create or update topics, subscriptions (DLQ, retry policy), on the emulator buckets,
    and on real GCP the staging bucket's upload notifications."""
    from infra.provision import apply

    settings = load_settings()
    project = settings.require_project()
    changes = apply(
        settings,
        dry_run=dry_run,
        publisher=gcp.publisher_client(settings),
        subscriber=gcp.subscriber_client(settings),
        storage_client=gcp.storage_client(settings) if settings.storage_emulator_host else None,
        # Real GCP only: fake-gcs-server notifies through its -event.* flags instead.
        notification_client=None
        if settings.storage_emulator_host
        else gcp.storage_client(settings),
    )
    where = f"emulator {settings.pubsub_emulator_host}" if settings.using_emulators else "GCP"
    typer.echo(f"project {project} ({where}){' — dry run, nothing changed' if dry_run else ''}")
    for change in changes:
        typer.echo(f"  {change}")
    pending = sum(c.action != "ok" for c in changes)
    verb = "would change" if dry_run else "changed"
    typer.echo(f"{pending} {verb}, {len(changes) - pending} already as wanted")


@app.command()
@operator_errors
def worker() -> None:
    """Run a worker: load the model, then pull and separate jobs until SIGTERM/SIGINT."""
    from consumer.app import run_worker

    raise typer.Exit(code=run_worker(load_settings()))


@app.command()
@operator_errors
def intake() -> None:
    """Turn uploads into jobs: pull GCS notifications from STEM_UPLOADS_SUBSCRIPTION and
    publish one job per .wav/.mp3/.flac object to stem-separate, until SIGTERM/SIGINT."""
    from consumer.intake import run_intake

    raise typer.Exit(code=run_intake(load_settings()))


@app.command()
@operator_errors
def submit(
    source: Annotated[
        str, typer.Argument(help="A local wav/mp3/flac file, or gs://bucket/object.")
    ],
    track_id: Annotated[str, typer.Option("--track-id", help="The catalog's track id.")],
    job_id: Annotated[str | None, typer.Option("--job-id", help="Default: a random id.")] = None,
    fmt: Annotated[
        StemFormat, typer.Option("--format", help="Stem format (mp3 is 320k CBR).")
    ] = StemFormat.mp3,
    stems: Annotated[
        str | None, typer.Option("--stems", help="Comma list, e.g. vocals,drums. Default: all.")
    ] = None,
    output_uri: Annotated[str | None, typer.Option("--output-uri")] = None,
    sample_format: Annotated[
        SampleFormat, typer.Option("--sample-format", help="pcm24: wav/flac; float32: wav.")
    ] = SampleFormat.pcm16,
    clip_mode: Annotated[
        ClipMode, typer.Option("--clip-mode", help="none: float32 only.")
    ] = ClipMode.rescale,
    sample_rate: Annotated[
        str | None,
        typer.Option(
            "--sample-rate",
            help="'source' or Hz. Default: the model's 44.1 kHz.",
            callback=sample_rate_option,
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait for the job's final result event and print it; meanwhile a progress "
            "bar fed by its stems.progress events (plain lines on stderr off a terminal).",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds --wait waits.")] = 600.0,
) -> None:
    """Submit a job (staging a local file first); with --wait, print its outcome."""
    settings = load_settings()
    with contextlib.ExitStack() as stack:
        # Subscribe before publishing, so the result cannot slip past.
        results = stack.enter_context(results_subscription(settings)) if wait else None
        job = _publish_job(
            settings,
            source,
            track_id=track_id,
            job_id=job_id or uuid.uuid4().hex,
            fmt=fmt.value,
            stems=stem_list(stems),
            output_uri=output_uri,
            options=output_options(sample_format, clip_mode, sample_rate),
        )
        if results is None:
            return
        with progress_bars() as bars:
            bar = bars.add(f"job {job.job_id}", phase="queued")
            final = wait_for_result(
                settings, results, job.job_id, timeout, on_event=show_progress(bar)
            )
    typer.echo(event_line(final))
    if (line := usage_line(final)) is not None:
        typer.echo(line, err=True)
    if isinstance(final, StemsFailed):
        raise typer.Exit(code=1)


def _publish_job(
    settings: Settings,
    source: str,
    *,
    track_id: str,
    job_id: str,
    fmt: str,
    stems: tuple[str, ...] | None,
    output_uri: str | None,
    options: dict[str, object],
) -> Job:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "track_id": track_id,
        "output_uri": output_uri,
        "model": settings.model,
        "stems": stems,
        "format": fmt,
        **options,
    }
    with JobPublisher(
        settings.require_project(),
        topic=settings.jobs_topic,
        staging_bucket=settings.staging_bucket,
        storage_client=gcp.storage_client(settings),
    ) as publisher:
        if source.startswith("gs://"):
            job = Job(source_uri=source, **fields)
            message_id = publisher.publish(job)
        else:
            submitted = publisher.submit_file(Path(source), **fields)
            job, message_id = submitted.job, submitted.message_id
    typer.echo(f"submitted job {job.job_id} (message {message_id}) source {job.source_uri}")
    return job


@results_app.command("tail")
@operator_errors
def results_tail(
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop after this many seconds.")
    ] = None,
) -> None:
    """Print result events (one JSON object per line) as they arrive, and on stderr what
    each processed or failed attempt used and cost; Ctrl-C stops."""
    settings = load_settings()

    def show(event: ResultEvent) -> None:
        typer.echo(event_line(event))
        if (line := usage_line(event)) is not None:
            typer.echo(line, err=True)

    # Ctrl-C / SIGTERM end the wait, then the subscription is closed and deleted in order
    # (a KeyboardInterrupt raised at a random point could skip that clean-up).
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with (
        results_subscription(settings) as (client, name),
        ResultSubscriber(settings.require_project(), name, on_event=show, subscriber=client) as sub,
    ):
        sub.start().add_done_callback(lambda _: done.set())  # the stream died: stop too
        done.wait(timeout)


@app.command()
@operator_errors
def separate(
    files: Annotated[
        list[Path],
        typer.Argument(help="wav, mp3 or flac files.", metavar="FILE", show_default=False),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Each FILE's stems go to OUT/{track}/."),
    ] = Path("separated"),
    model: ModelName = None,
    repo: ModelRepo = None,
    device: Annotated[
        Device | None,
        typer.Option("--device", "-d", help="Default: STEM_DEVICE (auto: cuda when available)."),
    ] = None,
    fmt: Annotated[
        StemFormat, typer.Option("--format", help="Stem format (mp3 is CBR; wav/flac 16-bit).")
    ] = StemFormat.mp3,
    mp3_bitrate: Annotated[
        int,
        typer.Option(
            "--mp3-bitrate",
            help=f"kbit/s: {', '.join(map(str, MP3_BITRATES))}.",
            callback=check_mp3_bitrate,
        ),
    ] = 320,
    stems: Annotated[
        str | None, typer.Option("--stems", help="Comma list, e.g. vocals,drums. Default: all.")
    ] = None,
) -> None:
    """Separate local files with the worker's own pipeline: no Pub/Sub, no GCS.

    Each FILE becomes OUT/{track}/{stem}.{ext} plus OUT/{track}/manifest.json (what a
    worker publishes as stems.processed; its URIs are gs://local/{absolute path}), track
    being the file's name made a valid id (song.flac → OUT/song/). Files run one at a time
    with a progress bar each, then a summary table. A file that fails (missing, corrupt,
    unsupported, too long, too large) gets one line on stderr and the others go on; the
    exit code is 1 when any failed. The worker's STEM_* settings apply (e.g.
    STEM_MAX_AUDIO_SECONDS).

    The model is the worker's: --model (STEM_MODEL, htdemucs_6s) from --repo
    (STEM_MODEL_REPO), else from the hub, downloaded once into its cache like demucs does.
    Offline without cached weights it fails and asks for --repo; unlike `stemctl demo` it
    never runs a stand-in model, because its stems are the result.
    """
    from stemctl.separate import run_separate

    settings = load_settings()
    overrides: dict[str, Any] = {
        "model": model,
        "model_repo": repo,
        "device": device.value if device is not None else None,
    }
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    raise typer.Exit(
        code=run_separate(
            files,
            out=out,
            settings=settings,
            fmt=fmt.value,
            mp3_bitrate=mp3_bitrate,
            stems=stem_list(stems),
        )
    )


@app.command()
@operator_errors
def demo(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="A wav, mp3 or flac file of yours. Default: a generated multi-instrument "
            "sample of --seconds.",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Download the stems and manifest.json from the fake GCS into OUT/{track}/ "
            "to listen to. Default: keep nothing.",
            show_default=False,
        ),
    ] = None,
    seconds: Annotated[
        float, typer.Option("--seconds", help="Length of the generated sample.")
    ] = 4.0,
    fmt: Annotated[StemFormat, typer.Option("--format")] = StemFormat.mp3,
    stems: Annotated[
        str | None,
        typer.Option("--stems", help="Comma list, e.g. vocals,no_vocals. Default: all."),
    ] = None,
    sample_format: Annotated[
        SampleFormat, typer.Option("--sample-format", help="pcm24: wav/flac; float32: wav.")
    ] = SampleFormat.pcm16,
    clip_mode: Annotated[
        ClipMode, typer.Option("--clip-mode", help="none: float32 only.")
    ] = ClipMode.rescale,
    fetch: Annotated[
        bool, typer.Option("--fetch", help="Download htdemucs_6s weights when not cached.")
    ] = False,
    upload: Annotated[
        bool,
        typer.Option(
            "--upload",
            help="Start from an upload: put the file under the staging bucket's incoming/, "
            "let `stemctl intake` turn the GCS notification into the job; then upload the "
            "same bytes again and watch that job reuse the stems.",
        ),
    ] = False,
) -> None:
    """Run the whole fleet on this machine on FILE (or a generated sample), then stop it.

    Starts the Pub/Sub emulator and fake-gcs-server, provisions, runs a worker, submits the
    file with JobPublisher, follows its progress, shows the stems (with --out, downloads
    them), and stops the worker and emulators and removes its temporary files.

    Uses STEM_MODEL_REPO when set, else htdemucs_6s' cached weights (--fetch downloads
    them). Without either it says so and runs htdemucs_6s_tiny, a small model of the same
    architecture with random weights: the pipeline is real, its stems are not music.
    """
    from stemctl.demo import run_demo

    code = run_demo(
        file,
        out=out,
        seconds=seconds,
        fmt=fmt.value,
        fetch=fetch,
        upload=upload,
        stems=stem_list(stems),
        options=output_options(sample_format, clip_mode, None),
    )
    raise typer.Exit(code=code)


def main() -> None:
    # Logging is configured here, in the entry point, and nowhere else. The demo and
    # separate talk to a person: they show progress themselves and only warnings from the
    # logs.
    quiet = len(sys.argv) > 1 and sys.argv[1] in ("demo", "separate")
    configure_logging(logging.WARNING if quiet else logging.INFO)
    app()
