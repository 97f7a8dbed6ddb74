"""Measure why the worker tests need :class:`~tests.support.pubsub_relay.PubSubRelay`: side by side.

One subscriber process holds a message (streaming pull, the worker's flow control, never
acks) and is SIGKILLed; a second one, started at once, acks whatever it gets. On Pub/Sub
the message reaches the second one when the dead one's lease lapses (one ack deadline,
10 s), as attempt 2. Each trial runs on a fresh subscription (dead-letter limit 5), once
straight on the emulator and once through the relay, and reports how long the message
took to come back, with which delivery attempt, or that it did not within the wait::

    python -m tests.support.dead_streams --trials 12

Measured on the 2-core CI box (two runs of 12 trials): straight on the emulator the
message came back after 9 to 29 s (attempts 2 to 4: the emulator deals each redelivery to
the dead stream or the live one at random), and in 2 trials of 24 never reached the live
subscriber — dead-lettered after 5 deliveries; through the relay, 24 of 24 came back as
attempt 2 after 9.0 to 9.5 s. The subscriber is a plain
``SubscriberClient.subscribe``, so the worker's own code plays no part in it.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from devkit.emulators import PubSubEmulator
from tests.support.helpers import kill_group
from tests.support.pubsub_relay import PubSubRelay

PROJECT = "dead-streams"
ACK_DEADLINE_S = 10
MAX_DELIVERY_ATTEMPTS = 5


@dataclass(frozen=True)
class Trial:
    mode: str
    seconds: float
    attempt: int | None
    """The delivery attempt the live subscriber got; None: nothing within the wait."""
    dead_lettered: bool = False
    """Nothing came, and the message is on the dead-letter topic (delivery limit reached)."""


def hold(subscription: str, ack: bool) -> None:
    """The subscriber process: print ``got <attempt>`` per message; ack only if told to."""
    from google.cloud import pubsub_v1
    from google.cloud.pubsub_v1.subscriber.message import Message
    from google.cloud.pubsub_v1.types import FlowControl

    def received(message: Message) -> None:
        print(f"got {message.delivery_attempt}", flush=True)
        if ack:
            message.ack()

    flow = FlowControl(
        max_messages=2,
        max_lease_duration=600,
        min_duration_per_lease_extension=ACK_DEADLINE_S,
        max_duration_per_lease_extension=ACK_DEADLINE_S,
    )
    with pubsub_v1.SubscriberClient() as client:
        client.subscribe(subscription, received, flow_control=flow).result()


def _subscriber(host: str, subscription: str, *, ack: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.dead_streams", "--hold", subscription]
        + (["--ack"] if ack else []),
        env={**os.environ, "PUBSUB_EMULATOR_HOST": host},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _line(stream: IO[str] | None, timeout_s: float) -> str | None:
    assert stream is not None
    ready, _, _ = select.select([stream], [], [], timeout_s)
    return stream.readline().strip() if ready else None


@contextmanager
def _through(mode: str, emulator_host: str) -> Iterator[str]:
    if mode == "relay":
        with PubSubRelay(emulator_host, lease_s=ACK_DEADLINE_S) as relay:
            yield relay.host
    else:
        yield emulator_host


def trial(number: int, mode: str, emulator_host: str, clients: Any, wait_s: float) -> Trial:
    publisher, subscriber = clients
    topic = publisher.topic_path(PROJECT, f"jobs-{mode}-{number}")
    dead_letters = publisher.topic_path(PROJECT, f"dlq-{mode}-{number}")
    subscription = subscriber.subscription_path(PROJECT, f"jobs-{mode}-{number}")
    dead_letter_subscription = subscriber.subscription_path(PROJECT, f"dlq-{mode}-{number}")
    publisher.create_topic(name=topic)
    publisher.create_topic(name=dead_letters)
    subscriber.create_subscription(
        request={"name": dead_letter_subscription, "topic": dead_letters}
    )
    subscriber.create_subscription(
        request={
            "name": subscription,
            "topic": topic,
            "ack_deadline_seconds": ACK_DEADLINE_S,
            "dead_letter_policy": {
                "dead_letter_topic": dead_letters,
                "max_delivery_attempts": MAX_DELIVERY_ATTEMPTS,
            },
        }
    )
    with _through(mode, emulator_host) as host:
        holder = _subscriber(host, subscription, ack=False)
        try:
            time.sleep(2.0)  # its stream is open before the message exists
            publisher.publish(topic, b"job").result()
            if _line(holder.stdout, 30) is None:
                raise RuntimeError(f"{mode} trial {number}: the first subscriber got nothing")
            time.sleep(1.0)  # it has extended the lease once
        finally:
            kill_group(holder)
        killed = time.monotonic()
        live = _subscriber(host, subscription, ack=True)
        try:
            got = _line(live.stdout, wait_s)
        finally:
            kill_group(live)
    seconds = time.monotonic() - killed
    if got:
        return Trial(mode, seconds, int(got.split()[1]))
    dead = subscriber.pull(
        request={
            "subscription": dead_letter_subscription,
            "max_messages": 1,
            "return_immediately": True,
        },
        timeout=10,
    )
    return Trial(mode, seconds, None, dead_lettered=bool(dead.received_messages))


def summary(trials: list[Trial], mode: str, wait_s: float) -> str:
    back = [t for t in trials if t.mode == mode and t.attempt is not None]
    lost = sum(1 for t in trials if t.mode == mode and t.attempt is None)
    dead = sum(1 for t in trials if t.mode == mode and t.dead_lettered)
    if not back:
        return f"{mode:>8}: nothing came back within {wait_s:.0f} s in {lost} trials"
    seconds = [t.seconds for t in back]
    attempts = sorted({t.attempt for t in back if t.attempt is not None})
    return (
        f"{mode:>8}: back after median {statistics.median(seconds):.1f} s, "
        f"max {max(seconds):.1f} s, attempts {attempts}; "
        f"not back within {wait_s:.0f} s: {lost} of {lost + len(back)} "
        f"({dead} dead-lettered after {MAX_DELIVERY_ATTEMPTS} deliveries)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait per trial")
    parser.add_argument("--hold", metavar="SUBSCRIPTION", help=argparse.SUPPRESS)
    parser.add_argument("--ack", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hold:
        hold(args.hold, args.ack)
        return

    with PubSubEmulator() as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        from google.cloud import pubsub_v1

        clients = (pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient())
        trials: list[Trial] = []
        for number in range(args.trials):
            for mode in ("emulator", "relay"):
                trials.append(trial(number, mode, emulator.host, clients, args.wait))
                last = trials[-1]
                came = f"attempt {last.attempt}" if last.attempt else "nothing"
                came += " (dead-lettered)" if last.dead_lettered else ""
                print(f"trial {number} {mode:>8}: {came} after {last.seconds:.1f} s", flush=True)
        print(f"{args.trials} trials each, ack deadline {ACK_DEADLINE_S} s:")
        for mode in ("emulator", "relay"):
            print(summary(trials, mode, args.wait))


if __name__ == "__main__":
    main()
