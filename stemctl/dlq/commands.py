"""``stemctl dlq``: inspect, replay and purge the dead-letter queue.

Every command reads ``stem-dlq`` the same way (``stemctl.dlq.core``): it holds what it pulls
and releases whatever it did not act on when it ends, so nothing an operator only looked
at stays leased, and nothing is acked before its replay is confirmed. Tables and the
progress bar are drawn with rich only when stdout is a terminal; otherwise the output is
plain lines for scripts and logs (``ls --json``: one object per line).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Annotated, Any

import typer
from google.api_core import exceptions as gexc

from consumer import gcp
from consumer.settings import Settings
from stemctl.display import human_size, terminal
from stemctl.dlq.letters import DeadLetter, Filters, Selection, format_age, parse_duration
from stemctl.dlq.subscription import DlqSubscription, Replayed, check_topic, republish
from stemctl.support import CommandFailed, load_settings, operator_errors

__all__ = ["dlq_app"]

dlq_app = typer.Typer(
    help="Inspect, replay and purge dead-lettered jobs (stem-dlq).", no_args_is_help=True
)

# --- options shared by the commands -------------------------------------------------------

JobIds = Annotated[
    list[str] | None,
    typer.Option("--job-id", help="Only messages of this jobId (repeatable).", show_default=False),
]
MessageIds = Annotated[
    list[str] | None,
    typer.Option("--message-id", help="Only this DLQ message id (repeatable).", show_default=False),
]
ErrorCodes = Annotated[
    list[str] | None,
    typer.Option(
        "--error-code",
        help="Only this error code, e.g. source_missing or delivery_limit (repeatable).",
        show_default=False,
    ),
]
OlderThan = Annotated[
    str | None,
    typer.Option(
        "--older-than",
        help="Only messages dead-lettered longer ago than this: 30m, 2h, 1d, 1h30m.",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]


def _filters(
    job_ids: list[str] | None,
    message_ids: list[str] | None,
    error_codes: list[str] | None,
    older_than: str | None,
) -> Filters:
    try:
        age = parse_duration(older_than) if older_than is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--older-than") from None
    return Filters(
        job_ids=frozenset(job_ids or ()),
        message_ids=frozenset(message_ids or ()),
        error_codes=frozenset(error_codes or ()),
        older_than=age,
    )


# --- plumbing -----------------------------------------------------------------------------


def _interactive() -> bool:
    """Whether a person can answer a question (purge without --yes)."""
    return sys.stdin.isatty()


def _endpoint(settings: Settings) -> str:
    return settings.pubsub_emulator_host or "pubsub.googleapis.com"


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM acts as Ctrl-C, so a stopped command still releases what it holds (only
    SIGKILL leaves its messages to come back at the ack deadline)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _dlq(settings: Settings) -> Iterator[DlqSubscription]:
    """The DLQ subscription, checked to exist; everything still held is released on exit."""
    project = settings.require_project()
    client = gcp.subscriber_client(settings)
    try:
        dlq = DlqSubscription.open(
            client,
            project,
            settings.dlq_subscription,
            endpoint=_endpoint(settings),
            # The emulator answers an immediate pull with everything it has; real Pub/Sub
            # may answer empty while messages wait, so a scan there waits longer to end.
            **({} if settings.using_emulators else {"idle_rounds": 5, "idle_pause_s": 0.5}),
        )
        with _sigterm_interrupts(), dlq:
            yield dlq
    finally:
        client.close()


def _scan(dlq: DlqSubscription, selection: Selection) -> Selection:
    for letter in dlq.scan():
        selection.offer(letter)
        if selection.full:
            break
    return selection


def _oldest_first(letters: Sequence[DeadLetter]) -> list[DeadLetter]:
    return sorted(letters, key=lambda letter: (letter.publish_time, letter.message_id))


def _line(verb: str, letter: DeadLetter, detail: str = "") -> str:
    reason = letter.reason
    text = (
        f"{verb:<12} {letter.message_id:<10} job={letter.job_id or '-'} "
        f"track={letter.track_id or '-'} {reason.code}"
    )
    return f"{text}  {detail}" if detail else text


def _note(text: str) -> None:
    """Counts and hints: on stderr, so stdout stays the data."""
    typer.echo(text, err=True)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _left(selection: Selection, where: str) -> str:
    others = _plural(len(selection.untouched), "other message")
    # A scan stopped at --limit has not seen everything.
    return f"{'at least ' if selection.full else ''}{others} left in {where}"


# --- ls -----------------------------------------------------------------------------------

_COLUMNS = ("MESSAGE ID", "JOB ID", "TRACK ID", "ERROR", "TRIES", "SOURCE", "AGE", "REPLAYS")
_MESSAGE_WIDTH = 80


def _row(letter: DeadLetter, now: datetime) -> list[str]:
    reason = letter.reason
    return [
        letter.message_id,
        letter.job_id or "-",
        letter.track_id or "-",
        reason.code,
        str(reason.delivery_attempts) if reason.delivery_attempts is not None else "-",
        reason.source,
        format_age(letter.age(now)),
        str(letter.replay_count),
    ]


def _short(text: str, width: int = _MESSAGE_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_table(letters: Sequence[DeadLetter], now: datetime) -> None:
    rows = [list(_COLUMNS), *(_row(letter, now) for letter in letters)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    messages = [_short(letter.reason.message) for letter in letters]
    if terminal():
        from rich import box
        from rich.console import Console
        from rich.table import Table

        console = Console()
        table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False)
        for column, width in zip(_COLUMNS, widths, strict=True):
            table.add_column(column, no_wrap=True, min_width=width)
        # The free text gives way on a narrow terminal (`dlq show` has all of it); when
        # even the other columns do not fit, the table runs wider than the terminal
        # rather than lose a column.
        table.add_column("MESSAGE", no_wrap=True, overflow="ellipsis", min_width=20)
        console.width = max(console.width, sum(widths) + 3 * len(widths) + 20)
        for row, message in zip(rows[1:], messages, strict=True):
            table.add_row(*row, message)
        console.print(table)
        return
    # Plain, aligned columns (grep/awk friendly); the free-text message comes last.
    for row, message in zip(rows, ["MESSAGE", *messages], strict=True):
        typer.echo("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=True)), message]))


@dlq_app.command("ls")
@operator_errors
def ls(
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most N messages.")] = 100,
    as_json: AsJson = False,
    job_id: JobIds = None,
    message_id: MessageIds = None,
    error_code: ErrorCodes = None,
    older_than: OlderThan = None,
) -> None:
    """List dead letters without consuming them: every message stays deliverable."""
    settings = load_settings()
    filters = _filters(job_id, message_id, error_code, older_than)
    now = datetime.now(UTC)
    with _dlq(settings) as dlq:
        # One more than shown, to know whether more match.
        selection = _scan(dlq, Selection(filters, now, limit=limit + 1))
    letters = _oldest_first(selection.selected)
    shown, more = letters[:limit], len(letters) > limit
    if as_json:
        for letter in shown:
            typer.echo(json.dumps(letter.summary(now), ensure_ascii=False))
    elif shown:
        _print_table(shown, now)
    where = settings.dlq_subscription
    scope = "" if filters == Filters() else f" matching {filters.describe()}"
    if not shown:
        _note(f"no messages in {where}{scope}")
        return
    codes = Counter(letter.reason.code for letter in shown)
    by_code = ", ".join(f"{code} {count}" for code, count in codes.most_common())
    if more:
        _note(f"the first {limit} messages in {where}{scope} ({by_code}); more — raise --limit")
    else:
        _note(f"{_plural(len(shown), 'message')} in {where}{scope} ({by_code})")


# --- show ---------------------------------------------------------------------------------


def _print_detail(detail: dict[str, Any]) -> None:
    typer.echo(f"message      {detail['messageId']}  (in the DLQ since {detail['publishTime']})")
    typer.echo(f"job          {detail['jobId'] or '-'}  track {detail['trackId'] or '-'}")
    attempts = detail["deliveryAttempts"]
    typer.echo(
        f"reason       {detail['errorCode']}: {detail['errorMessage']}"
        f"  (source {detail['source']}, delivery attempts {attempts if attempts else '-'})"
    )
    replayed_from = detail["replayedFrom"]
    typer.echo(
        f"replays      {detail['replayCount']}"
        + (f" (last replayed from DLQ message {replayed_from})" if replayed_from else "")
    )
    typer.echo("attributes")
    width = max((len(k) for k in detail["attributes"]), default=0)
    for key, value in detail["attributes"].items():
        typer.echo(f"  {key.ljust(width)}  {value}")
    typer.echo(f"data ({detail['dataEncoding']}, {human_size(detail['dataBytes'])})")
    data = detail["data"]
    text = (
        json.dumps(data, indent=2, ensure_ascii=False) if detail["dataEncoding"] == "json" else data
    )
    if terminal() and detail["dataEncoding"] == "json":
        from rich.console import Console

        Console().print_json(text)
    else:
        typer.echo(text)


@dlq_app.command("show")
@operator_errors
def show(
    ident: Annotated[str, typer.Argument(metavar="ID", help="A DLQ message id or a jobId.")],
    as_json: AsJson = False,
) -> None:
    """Show whole dead letters — attributes and data — by message id or jobId."""
    settings = load_settings()
    now = datetime.now(UTC)
    with _dlq(settings) as dlq:
        found = [letter for letter in dlq.scan() if ident in (letter.message_id, letter.job_id)]
    if not found:
        raise CommandFailed(f"no message with id or jobId {ident} in {settings.dlq_subscription}")
    for index, letter in enumerate(_oldest_first(found)):
        detail = letter.detail(now)
        if as_json:
            typer.echo(json.dumps(detail, ensure_ascii=False))
            continue
        if index:
            typer.echo("")
        _print_detail(detail)


# --- replay -------------------------------------------------------------------------------


def _refusal(letter: DeadLetter, max_replays: int) -> str:
    return (
        f"replayed {letter.replay_count} times already (--max-replays {max_replays}; "
        "--force replays it anyway)"
    )


def _replay_with_progress(
    letters: Sequence[DeadLetter], outcomes: list[Replayed], **kwargs: Any
) -> None:
    """Republish, adding to ``outcomes`` as confirmations come (an interrupted replay
    still knows what it did); on a terminal behind a progress bar, else a line each."""
    if not terminal():

        def report(outcome: Replayed) -> None:
            outcomes.append(outcome)
            letter = outcome.letter
            if outcome.ok:
                kept = " (DLQ copy not acked: it will reappear)" if outcome.dlq_copy_kept else ""
                typer.echo(_line("replayed", letter, f"→ {outcome.new_message_id}{kept}"))
            else:
                typer.echo(_line("failed", letter, outcome.error or ""))

        republish(letters, on_result=report, **kwargs)
        return

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    ) as progress:
        task = progress.add_task("replaying", total=len(letters))

        def advance(outcome: Replayed) -> None:
            outcomes.append(outcome)
            progress.advance(task)
            if not outcome.ok:
                progress.console.print(_line("failed", outcome.letter, outcome.error or ""))

        republish(letters, on_result=advance, **kwargs)


@dlq_app.command("replay")
@operator_errors
def replay(
    job_id: JobIds = None,
    message_id: MessageIds = None,
    error_code: ErrorCodes = None,
    older_than: OlderThan = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="Replay at most N messages.", show_default=False),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option("--rate", help="At most R messages per second.", show_default=False),
    ] = None,
    max_replays: Annotated[
        int,
        typer.Option("--max-replays", min=1, help="Skip messages replayed this often already."),
    ] = 3,
    force: Annotated[bool, typer.Option("--force", help="Replay even past --max-replays.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be replayed; change nothing.")
    ] = False,
) -> None:
    """Republish dead letters to stem-separate, acking each DLQ copy once confirmed.

    Each DLQ copy is acked only after its publish is confirmed, so an interrupted replay
    can duplicate a job but never lose one."""
    if rate is not None and rate <= 0:
        raise typer.BadParameter("must be positive", param_hint="--rate")
    settings = load_settings()
    filters = _filters(job_id, message_id, error_code, older_than)
    project = settings.require_project()
    publisher = gcp.publisher_client(settings)
    try:
        topic = check_topic(publisher, project, settings.jobs_topic, endpoint=_endpoint(settings))
        selection = Selection(
            filters, datetime.now(UTC), limit=limit, max_replays=max_replays, force=force
        )
        outcomes: list[Replayed] = []
        try:
            with _dlq(settings) as dlq:
                _scan(dlq, selection)
                letters = _oldest_first(selection.selected)
                for letter in _oldest_first(selection.refused):
                    typer.echo(_line("skipped", letter, _refusal(letter, max_replays)))
                if dry_run:
                    for letter in letters:
                        count = letter.replay_count
                        typer.echo(
                            _line("would replay", letter, f"replayCount {count} → {count + 1}")
                        )
                elif letters:
                    pace = f" at most {rate:g} per second" if rate else ""
                    typer.echo(
                        f"replaying {_plural(len(letters), 'message')} from "
                        f"{settings.dlq_subscription} to {settings.jobs_topic}{pace}"
                    )
                    _replay_with_progress(
                        letters,
                        outcomes,
                        dlq=dlq,
                        publisher=publisher,
                        topic_path=topic,
                        rate=rate,
                    )
        except KeyboardInterrupt:
            done = sum(o.ok for o in outcomes)
            _note(f"interrupted: replayed {done}; the rest is still in {settings.dlq_subscription}")
            raise typer.Exit(code=130) from None
    finally:
        publisher.stop()
        publisher.transport.close()
    _replay_summary(settings, selection, outcomes, dry_run=dry_run)


def _replay_summary(
    settings: Settings, selection: Selection, outcomes: Sequence[Replayed], *, dry_run: bool
) -> None:
    left = _left(selection, settings.dlq_subscription)
    if dry_run:
        typer.echo(
            f"dry run: would replay {len(selection.selected)} to {settings.jobs_topic}, "
            f"skip {len(selection.refused)}; {left}; nothing changed"
        )
        return
    replayed = sum(o.ok for o in outcomes)
    failed = len(outcomes) - replayed
    not_tried = len(selection.selected) - len(outcomes)
    text = f"replayed {replayed}, skipped {len(selection.refused)}, failed {failed}"
    if not_tried:
        text += f", not attempted {not_tried} (stopped after an error that would repeat)"
    typer.echo(f"{text} — {left}")
    if failed or not_tried:
        raise typer.Exit(code=1)


# --- purge --------------------------------------------------------------------------------


@dlq_app.command("purge")
@operator_errors
def purge(
    yes: Annotated[
        bool, typer.Option("--yes", help="Do not ask; required off a terminal.")
    ] = False,
    job_id: JobIds = None,
    message_id: MessageIds = None,
    error_code: ErrorCodes = None,
    older_than: OlderThan = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="Drop at most N messages.", show_default=False),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be dropped; change nothing.")
    ] = False,
) -> None:
    """Drop (acknowledge) matching dead letters for good. Asks first, unless --yes."""
    if not (yes or dry_run or _interactive()):
        typer.secho(
            "stemctl: refusing to purge without --yes: stdin is not a terminal to ask on",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(code=2)
    settings = load_settings()
    filters = _filters(job_id, message_id, error_code, older_than)
    where = settings.dlq_subscription
    with _dlq(settings) as dlq:
        selection = _scan(dlq, Selection(filters, datetime.now(UTC), limit=limit))
        letters = _oldest_first(selection.selected)
        if not letters:
            _note(f"nothing to purge in {where} matching {filters.describe()}")
            return
        if dry_run or not yes:
            for letter in letters:
                typer.echo(_line("would drop", letter))
        if dry_run:
            typer.echo(f"dry run: would drop {_plural(len(letters), 'message')}; nothing changed")
            return
        question = f"Drop {_plural(len(letters), 'message')} from {where} for good?"
        if not yes and not typer.confirm(question, default=False):
            typer.echo("nothing dropped")
            raise typer.Exit(code=1)
        try:
            dlq.ack(letters)
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise CommandFailed(
                f"could not drop the messages ({exc}); some may remain in {where}"
            ) from None
    for letter in letters:
        typer.echo(_line("dropped", letter))
    typer.echo(f"dropped {_plural(len(letters), 'message')}; {_left(selection, where)}")
