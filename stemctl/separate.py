"""``stemctl separate FILE… --out DIR``: the worker's pipeline on local files.

No Pub/Sub and no GCS, but nothing re-implemented either: the model is loaded as a worker
loads it (:func:`consumer.app.load_separator` from the one ``Settings``), and each file runs
through the runtime's own :class:`~consumer.pipeline.Pipeline` — the same copy-in with its
size cap, decoder, separation, encoders and manifest — against a
:class:`~consumer.storage.LocalBlobStore`. The contract only knows ``gs://`` URIs, so a
local file takes part as ``gs://local/{its absolute path}`` (that is also how
``manifest.json`` names the files). Each file ``song.flac`` ends as ``DIR/song/{stem}.{ext}``
plus ``DIR/song/manifest.json`` (the ``stems.processed`` body a worker would publish),
written last.

Files run one at a time; one that fails (missing, corrupt, unsupported, too long, too
large) gets one line on stderr with the runtime's own message, and the rest go on. Exit
code 0 when every file was separated, 1 when any failed.

Without ``--repo``, the model comes from the hub or its cache, as with ``demucs``. When its
weights can be had from neither (no network), the command fails and says to pass ``--repo``:
unlike ``stemctl demo`` it never substitutes a stand-in model, since its stems are the
product.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import typer
from pydantic import ValidationError

from consumer.app import load_separator
from consumer.delivery import Attempt, Delivery
from consumer.errors import ModelLoadError, StemError, StemNotInModel
from consumer.events import JobIds
from consumer.manifest import MANIFEST_NAME, check_stems
from consumer.pipeline import Pipeline, source_file_name
from consumer.separation import DemucsSeparator, resolve_device
from consumer.settings import Settings
from consumer.storage import LocalBlobStore
from stem_contracts import Job, StemsProcessed, encode
from stemctl.display import Bar, human_duration, human_size, print_table, progress_bars
from stemctl.model import weights_cached
from stemctl.support import CommandFailed, track_ids

__all__ = ["LOCAL_BUCKET", "Failed", "Separated", "run_separate"]

_log = logging.getLogger(__name__)

LOCAL_BUCKET: Final = "local"
"""The bucket name local files take in URIs: ``gs://local/home/me/song.flac``."""

# The pipeline's stages (``Attempt.timed``) as a person reads them; encodes and uploads
# overlap, so both are "writing".
_PHASES: Final = {
    "download": "reading",
    "decode": "decoding",
    "separate": "separating",
    "encode": "writing",
    "upload": "writing",
}


@dataclass(frozen=True)
class Separated:
    file: Path
    folder: Path
    event: StemsProcessed
    wall_seconds: float

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio per second of work (as the worker's metric counts it)."""
        return self.event.source.duration_seconds / max(self.wall_seconds, 1e-6)


@dataclass(frozen=True)
class Failed:
    file: Path
    code: str
    message: str

    def line(self) -> str:
        return f"stemctl: {self.file}: {self.message} [{self.code}]"


@dataclass
class _ShownAttempt(Attempt):
    """An attempt that also tells the progress bar which stage the pipeline is in."""

    on_stage: Callable[[str], None] = lambda stage: None

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        self.on_stage(stage)
        with super().timed(stage):
            yield


def _absolute(path: Path) -> Path:
    """Absolute and normalised (no ``..``), without resolving symbolic links."""
    return Path(os.path.abspath(path))


def _load_model(settings: Settings) -> DemucsSeparator:
    """The worker's model loading; without a local folder and without the weights (no
    network), one clear failure that says what to do."""
    resolve_device(settings.device)  # a missing GPU fails here, without the --repo hint
    if settings.model_repo is None and weights_cached(settings.model) is False:
        typer.echo(
            f"{settings.model}: weights not in the local cache; fetching them from the hub…",
            err=True,
        )
    try:
        separator = load_separator(settings)
    except ModelLoadError as exc:
        if settings.model_repo is not None:
            raise
        raise CommandFailed(
            f"{exc.message}. Without network, pass --repo DIR: a local model folder "
            "(`stemctl model fetch --into DIR` writes one on a machine with network)"
        ) from exc
    where = settings.model_repo or "the hub cache"
    typer.echo(
        f"model {settings.model} ({separator.model_version}) from {where} on "
        f"{separator.device}, loaded in {separator.load_seconds:.1f} s",
        err=True,
    )
    return separator


def run_separate(
    files: Sequence[Path],
    *,
    out: Path,
    settings: Settings,
    fmt: str,
    mp3_bitrate: int,
    stems: tuple[str, ...] | None,
) -> int:
    """Separate ``files`` into ``out``; returns the exit code (0 all done, 1 any failed)."""
    separator = _load_model(settings)
    try:
        check_stems(stems, settings.model, separator.sources)
    except StemNotInModel as exc:
        raise typer.BadParameter(exc.message, param_hint="--stems") from exc
    out = _absolute(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandFailed(f"cannot create {out}: {exc.strerror or exc}") from exc
    store = LocalBlobStore(Path("/"), bucket=LOCAL_BUCKET)
    pipeline = Pipeline(settings, store=store, separator=separator)
    job_fields = {
        "model": settings.model,
        "stems": stems,
        "format": fmt,
        "mp3_bitrate": mp3_bitrate,
    }
    done: list[Separated] = []
    failed: list[Failed] = []
    with progress_bars() as bars:
        for file, track in zip(files, track_ids(files), strict=True):
            bar = bars.add(file.name, phase="waiting")
            outcome = _separate_one(pipeline, store, file, out / track, track, job_fields, bar)
            if isinstance(outcome, Failed):
                bar.finish("failed")
                typer.echo(outcome.line(), err=True)
                failed.append(outcome)
            else:
                bar.finish(f"done in {human_duration(outcome.wall_seconds)}")
                done.append(outcome)
    if done:
        _summary(done)
    verdict = f"{len(done)} of {len(files)} files separated into {out}"
    typer.echo(f"{verdict}; {len(failed)} failed" if failed else verdict, err=True)
    return 1 if failed else 0


def _separate_one(
    pipeline: Pipeline,
    store: LocalBlobStore,
    file: Path,
    folder: Path,
    track: str,
    job_fields: dict[str, Any],
    bar: Bar,
) -> Separated | Failed:
    started = time.monotonic()
    try:
        job = Job(
            job_id=f"local-{uuid.uuid4().hex[:12]}",
            track_id=track,
            source_uri=store.uri(_absolute(file)),
            output_uri=store.uri(folder),
            **job_fields,
        )
    except ValidationError as exc:  # a path the contract cannot carry (control characters…)
        message = "; ".join(str(error["msg"]) for error in exc.errors())
        return Failed(file, "invalid_path", f"path not usable: {message}")
    data, attributes = encode(job)
    attempt = _ShownAttempt(
        Delivery(data, attributes, message_id=job.job_id),
        deadline=math.inf,  # no job timeout here: nothing would retry it
        stop_requested=lambda: False,
        on_stage=lambda stage: bar.update(phase=_PHASES.get(stage, stage)),
    )
    assert job.output_uri is not None
    try:
        event = pipeline.run(
            job,
            job.output_uri,
            JobIds.of(job).header(1),
            attempt,
            progress=lambda fraction: bar.update(fraction),
        )
    except StemError as exc:
        # The decoder names the pipeline's copy of the file ("source.mp3: …"): the file's
        # own name is already at the start of the line.
        message = exc.message.removeprefix(f"{source_file_name(job.source_uri)}: ")
        return Failed(file, exc.code, message)
    except Exception as exc:  # a bug, not the file's fault: still one line, and go on
        _log.debug("separation failed", exc_info=True)
        return Failed(file, "internal_error", f"{type(exc).__name__}: {exc}")
    return Separated(file, folder, event, time.monotonic() - started)


def _summary(done: Sequence[Separated]) -> None:
    rows = [
        [
            item.file.name,
            human_duration(item.event.source.duration_seconds),
            str(len(item.event.stems)),
            human_duration(item.wall_seconds),
            f"{item.realtime_factor:.2f}×",
            human_size(sum(stem.size_bytes for stem in item.event.stems)),
            str(item.folder),
        ]
        for item in done
    ]
    first = done[0].event
    formats = {stem.format for item in done for stem in item.event.stems}
    print_table(
        ["file", "duration", "stems", "time", "real-time factor", "size", "output"],
        rows,
        title=f"{first.model_version}, {'/'.join(sorted(formats))}; "
        f"each folder holds the stems and {MANIFEST_NAME}",
        right={"duration", "stems", "time", "real-time factor", "size"},
    )
