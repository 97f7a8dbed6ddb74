"""``stemctl demo``: the whole pipeline on one machine, started and stopped by itself.

Pub/Sub emulator + fake-gcs-server → ``infra apply`` → a worker (in this process) →
a generated multi-instrument sample submitted with ``JobPublisher.submit_file`` → wait for
``stems.processed`` → a table of the stems → everything stopped again.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import soundfile as sf
from rich.console import Console
from rich.table import Table

from consumer import gcp
from consumer.app import build_worker, load_separator
from consumer.settings import Settings
from devkit.emulators import FakeGcsServer, PubSubEmulator
from devkit.models import write_local_model
from devkit.synth import multi_instrument_mix
from infra.provision import apply
from stem_contracts import JobPublisher, StemsProcessed
from stemctl.model import weights_cached
from stemctl.results import results_subscription, wait_for_result

__all__ = ["DEMO_FALLBACK_MODEL", "choose_model", "run_demo"]

DEMO_FALLBACK_MODEL = "htdemucs_6s_tiny"
"""A small HTDemucs with htdemucs_6s's six sources and random weights (modelVersion
``demucs-htdemucs-6s-tiny``): real Demucs code, stems without musical meaning."""


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


def _stem_table(event: StemsProcessed) -> Table:
    table = Table(title=f"stems.processed — {event.model_version}, job {event.job_id}")
    for column in ("stem", "size", "duration", "uri"):
        table.add_column(
            column,
            justify="right" if column in ("size", "duration") else "left",
            overflow="fold",
        )
    for stem in event.stems:
        table.add_row(
            stem.name,
            f"{stem.size_bytes / 1024:.1f} KiB",
            f"{stem.duration_seconds:.2f} s",
            stem.uri,
        )
    return table


def run_demo(*, seconds: float = 4.0, fmt: str = "mp3", fetch: bool = False) -> int:
    """Run the demo; returns the exit code (0 when the sample was separated)."""
    console = Console()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="stem-demo-") as tmp,
        console.status("starting the Pub/Sub emulator and fake-gcs-server…"),
        PubSubEmulator() as pubsub,
        FakeGcsServer() as gcs,
    ):
        # The client libraries read these; the settings object gets the same values.
        os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.host
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
        settings = Settings(
            project="stem-demo",
            pubsub_emulator_host=pubsub.host,
            storage_emulator_host=gcs.url,
            metrics_port=0,
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
        console.print(f"[green]✓[/] provisioned: {', '.join(c.name for c in changes)}")

        separator = load_separator(settings)
        console.print(
            f"[green]✓[/] model loaded in {separator.load_seconds:.2f} s on {separator.device}"
        )
        worker = build_worker(settings, separator)
        thread = threading.Thread(target=worker.run, name="demo-worker", daemon=True)
        thread.start()
        worker.ready.wait(30)
        console.print("[green]✓[/] worker pulling from stem-separate")

        sample = Path(tmp) / "demo-sample.wav"
        sf.write(sample, multi_instrument_mix(seconds).T, 44100, subtype="PCM_16")
        submitted_at = time.monotonic()
        try:
            with results_subscription(settings) as results:
                with JobPublisher(
                    "stem-demo",
                    staging_bucket=settings.staging_bucket,
                    storage_client=gcp.storage_client(settings),
                ) as jobs:
                    submitted = jobs.submit_file(
                        sample,
                        track_id="demo-track",
                        model=settings.model,
                        format=fmt,  # type: ignore[arg-type]
                    )
                console.print(
                    f"[green]✓[/] submitted {seconds:g} s sample as job {submitted.job.job_id}"
                )
                final = wait_for_result(settings, results, submitted.job.job_id, timeout=600)
        finally:
            worker.request_stop("demo finished")
            thread.join(60)
        elapsed = time.monotonic() - submitted_at
        if not isinstance(final, StemsProcessed):
            console.print(f"[red]✗ job failed:[/] {final.model_dump_json(by_alias=True)}")
            return 1
        console.print(_stem_table(final))
        console.print(
            f"end to end {elapsed:.2f} s for {seconds:g} s of audio "
            f"(worker {final.processing_time_ms} ms); demo total {time.monotonic() - started:.1f} s"
        )
    console.print("[green]✓[/] worker, emulators and temporary files stopped and removed")
    return 0
