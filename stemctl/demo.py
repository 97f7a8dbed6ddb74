"""``stemctl demo``: the whole fleet on one machine, started and stopped by itself.

Pub/Sub emulator + fake-gcs-server → ``infra apply`` → a worker (in this process) → the
user's file, or a generated multi-instrument sample, submitted with
``JobPublisher.submit_file`` → a progress bar fed by ``stems.progress`` until
``stems.processed`` → a table of the stems → with ``--out``, the stems and
``manifest.json`` downloaded from fake-gcs-server (crc32c and sha256 checked) → everything
stopped again: worker, emulators, temporary files, and the environment variables it set.

With ``--upload`` the job comes from an upload instead (DESIGN.md "Uploads as a job
source"): fake-gcs-server notifies the emulator as GCS would, an intake (in this process)
turns the notification into the job; then the same bytes are uploaded again under another
name, and that job is answered by copying the first one's stems (DESIGN.md "Reuse").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import soundfile as sf
from rich.console import Console

from consumer import gcp
from consumer.app import build_worker, load_separator
from consumer.intake import build_intake, upload_job_id
from consumer.manifest import MANIFEST_NAME, output_prefix
from consumer.settings import Settings
from consumer.storage import GcsBlobStore, join_uri
from devkit.emulators import FakeGcsServer, GcsNotifications, PubSubEmulator
from devkit.models import write_local_model
from devkit.synth import multi_instrument_mix
from infra.provision import apply
from stem_contracts import Job, JobPublisher, ResultEvent, StemsProcessed
from stemctl.display import human_duration, human_size, print_table, progress_bars
from stemctl.model import weights_cached
from stemctl.results import (
    event_line,
    results_subscription,
    show_progress,
    usage_line,
    wait_for_result,
)
from stemctl.support import CommandFailed, track_ids

__all__ = ["DEMO_FALLBACK_MODEL", "choose_model", "run_demo"]

DEMO_FALLBACK_MODEL: Final = "htdemucs_6s_tiny"
"""A small HTDemucs with htdemucs_6s's six sources and random weights (modelVersion
``demucs-htdemucs-6s-tiny``): real Demucs code, stems without musical meaning."""

_PROGRESS_INTERVAL_S: Final = 0.5
"""The demo worker's STEM_PROGRESS_INTERVAL_S: often enough for a bar to move."""


def choose_model(settings: Settings, *, fetch: bool, cache_dir: Path) -> tuple[Settings, str]:
    """The model the demo runs, and a sentence saying why.

    ``STEM_MODEL_REPO`` wins; then cached hub weights (or a download when ``fetch``);
    otherwise the small local stand-in, said plainly.
    """
    if settings.model_repo is not None:
        return settings, f"{settings.model} from the local folder {settings.model_repo}"
    if weights_cached(settings.model):
        return settings, f"{settings.model} with pretrained weights from the local cache"
    if fetch:
        return settings, f"{settings.model} with pretrained weights from the hub (downloading)"
    folder = write_local_model(cache_dir, DEMO_FALLBACK_MODEL, size="tiny")
    note = (
        f"{settings.model} weights are not cached here and --fetch was not given (no network?): "
        f"running {DEMO_FALLBACK_MODEL}, a small model of the same HTDemucs architecture and "
        "six sources with random weights. The pipeline is real; the stems are not music."
    )
    return settings.model_copy(update={"model": DEMO_FALLBACK_MODEL, "model_repo": folder}), note


def _db(value: float | None, unit: str) -> str:
    return "—" if value is None else f"{value:.1f} {unit}"


def _show_stems(event: StemsProcessed) -> None:
    print_table(
        ["stem", "size", "duration", "loudness", "peak", "silent", "uri"],
        [
            [
                stem.name,
                human_size(stem.size_bytes),
                human_duration(stem.duration_seconds),
                _db(stem.loudness_lufs, "LUFS"),
                _db(stem.peak_dbfs, "dBFS"),
                "yes" if stem.silent else "no",
                stem.uri,
            ]
            for stem in event.stems
        ],
        title=f"stems.processed — {event.model_version}, job {event.job_id}",
        right={"size", "duration", "loudness", "peak"},
    )


def _follow(settings: Settings, results: tuple[object, str], job_id: str) -> ResultEvent:
    """The job's final event, with a progress bar fed by its ``stems.progress``."""
    with progress_bars() as bars:
        bar = bars.add(f"job {job_id}", phase="queued")
        return wait_for_result(settings, results, job_id, timeout=600, on_event=show_progress(bar))


def _through_uploads(
    settings: Settings,
    results: tuple[object, str],
    source: Path,
    what: str,
    track: str,
    fmt: str,
    console: Console,
    stack: contextlib.ExitStack,
) -> tuple[Job, ResultEvent]:
    """Upload ``source`` under the uploads prefix and follow the job the intake makes of
    it; then upload the same bytes under a second name and show that job reusing the
    first one's stems. Returns the first job and its final event."""
    intake = build_intake(settings)
    thread = threading.Thread(target=intake.run, name="demo-intake", daemon=True)
    thread.start()
    stack.callback(thread.join, 30)
    stack.callback(intake.request_stop, "demo finished")
    intake.ready.wait(30)
    console.print(f"[green]✓[/] intake pulling from {settings.uploads_subscription}")
    bucket = gcp.storage_client(settings).bucket(settings.staging_bucket)
    finals: list[tuple[Job, ResultEvent, float]] = []
    for name in (f"{track}{source.suffix}", f"{track}-copy{source.suffix}"):
        blob = bucket.blob(settings.uploads_prefix + name)
        blob.metadata = {"trackId": track, "format": fmt}
        started = time.monotonic()
        blob.upload_from_filename(str(source))
        job_id = upload_job_id(bucket.name, blob.name, str(blob.generation))
        console.print(
            f"[green]✓[/] uploaded {what} to gs://{bucket.name}/{blob.name} "
            f"(generation {blob.generation}, metadata {blob.metadata}) → job {job_id}"
        )
        final = _follow(settings, results, job_id)
        job = Job(job_id=job_id, track_id=track, source_uri=f"gs://{bucket.name}/{blob.name}")
        finals.append((job, final, time.monotonic() - started))
        if not isinstance(final, StemsProcessed):
            break
    for job, final, wall in finals:
        if isinstance(final, StemsProcessed):
            how = f"stems copied from {final.reused_from}" if final.reused_from else "separated"
            device = "" if final.usage is None else f", device {final.usage.device_seconds} s"
            console.print(
                f"  {job.job_id}: {how}; worker {final.processing_time_ms} ms{device}, "
                f"upload to stems.processed {wall:.2f} s"
            )
    return finals[0][0], finals[0][1]


def download_stems(settings: Settings, job: Job, event: StemsProcessed, folder: Path) -> None:
    """Copy the job's stems, their ``peaks.json`` and ``manifest.json`` from the store into
    ``folder``; each stem is crc32c-checked while downloading and must have the sha256 the
    event reports."""
    store = GcsBlobStore(gcp.storage_client(settings))
    folder.mkdir(parents=True, exist_ok=True)
    for stem in event.stems:
        dest = folder / f"{stem.name}.{stem.format}"
        store.download(stem.uri, dest, max_bytes=stem.size_bytes)
        with dest.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        if digest != stem.sha256:
            raise CommandFailed(f"{stem.uri}: sha256 {digest}, the manifest says {stem.sha256}")
        if stem.peaks_uri is not None:
            peaks = store.read_bytes(stem.peaks_uri)
            if peaks is None:
                raise CommandFailed(f"{stem.peaks_uri}: listed in the manifest but missing")
            (folder / f"{stem.name}.peaks.json").write_bytes(peaks)
    manifest = store.read_bytes(join_uri(output_prefix(job, settings.output_bucket), MANIFEST_NAME))
    if manifest is None:
        raise CommandFailed(f"{job.job_id}: stems.processed arrived but its manifest is missing")
    (folder / MANIFEST_NAME).write_bytes(manifest)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables (the client libraries read them) and restore them after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_demo(
    file: Path | None = None,
    *,
    out: Path | None = None,
    seconds: float = 4.0,
    fmt: str = "mp3",
    fetch: bool = False,
    upload: bool = False,
    stems: tuple[str, ...] | None = None,
    options: dict[str, object] | None = None,
) -> int:
    """Run the demo on ``file`` (default: a generated sample of ``seconds``); with ``out``,
    leave the stems in ``out/{track}/``; with ``upload``, through an upload and the intake.
    Returns the exit code (0 when it was separated)."""
    console = Console(soft_wrap=True)  # piped output: long lines stay whole
    started = time.monotonic()
    track = track_ids([file])[0] if file is not None else "demo-track"
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stem-demo-")))
        with console.status("starting the Pub/Sub emulator and fake-gcs-server…"):
            pubsub = stack.enter_context(PubSubEmulator())
            defaults = Settings(project="stem-demo")
            notify = GcsNotifications(
                pubsub.host,
                "stem-demo",
                defaults.staging_bucket,
                defaults.uploads_topic,
                defaults.uploads_prefix,
            )
            gcs = stack.enter_context(FakeGcsServer(notifications=notify if upload else None))
        stack.enter_context(
            _environment(PUBSUB_EMULATOR_HOST=pubsub.host, STORAGE_EMULATOR_HOST=gcs.url)
        )
        settings = Settings(
            project="stem-demo",
            pubsub_emulator_host=pubsub.host,
            storage_emulator_host=gcs.url,
            metrics_port=0,
            progress_interval_s=_PROGRESS_INTERVAL_S,
        )
        console.print(f"[green]✓[/] Pub/Sub emulator {pubsub.host}, fake-gcs-server {gcs.url}")
        settings, note = choose_model(
            settings, fetch=fetch, cache_dir=Path.home() / ".cache" / "stem-fleet" / "models"
        )
        console.print(f"[yellow]model:[/] {note}")

        changes = apply(
            settings,
            publisher=gcp.publisher_client(settings),
            subscriber=gcp.subscriber_client(settings),
            storage_client=gcp.storage_client(settings),
        )
        console.print(
            f"[green]✓[/] provisioned: {', '.join(f'{c.kind} {c.name}' for c in changes)}"
        )

        separator = load_separator(settings)
        console.print(
            f"[green]✓[/] model loaded in {separator.load_seconds:.2f} s on {separator.device}"
        )
        worker = build_worker(settings, separator)
        thread = threading.Thread(target=worker.run, name="demo-worker", daemon=True)
        thread.start()
        worker.ready.wait(30)
        console.print("[green]✓[/] worker pulling from stem-separate")

        if file is None:
            source = tmp / "demo-sample.wav"
            sf.write(source, multi_instrument_mix(seconds).T, 44100, subtype="PCM_16")
            what = f"a generated {seconds:g} s sample"
        else:
            source, what = file, str(file)
        submitted_at = time.monotonic()
        try:
            with results_subscription(settings) as results:
                if upload:
                    job, final = _through_uploads(
                        settings, results, source, what, track, fmt, console, stack
                    )
                else:
                    with JobPublisher(
                        "stem-demo",
                        staging_bucket=settings.staging_bucket,
                        storage_client=gcp.storage_client(settings),
                    ) as jobs:
                        submitted = jobs.submit_file(
                            source,
                            track_id=track,
                            model=settings.model,
                            format=fmt,  # type: ignore[arg-type]
                            stems=stems,
                            **(options or {}),  # type: ignore[arg-type]
                        )
                    job = submitted.job
                    console.print(f"[green]✓[/] submitted {what} as job {job.job_id}")
                    final = _follow(settings, results, job.job_id)
        finally:
            worker.request_stop("demo finished")
            thread.join(60)
        elapsed = time.monotonic() - submitted_at
        if not isinstance(final, StemsProcessed):
            console.print(f"[red]✗ job failed:[/] {event_line(final)}")
            return 1
        _show_stems(final)
        if (line := usage_line(final)) is not None:
            console.print(line, highlight=False)
        console.print(
            f"end to end {elapsed:.2f} s for {human_duration(final.source.duration_seconds)} "
            f"of audio (worker {final.processing_time_ms} ms); "
            f"demo total {time.monotonic() - started:.1f} s"
        )
        if out is not None:
            folder = Path(os.path.abspath(out)) / track
            download_stems(settings, job, final, folder)
            console.print(
                f"[green]✓[/] {len(final.stems)} stems and {MANIFEST_NAME} downloaded to {folder}"
            )
    console.print("[green]✓[/] worker, emulators and temporary files stopped and removed")
    return 0
