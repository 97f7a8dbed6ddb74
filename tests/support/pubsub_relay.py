"""A gRPC relay in front of the Pub/Sub emulator that deals out streaming pulls as Pub/Sub does.

Used by the chaos run (``tests/chaos/``) and by the worker-process tests that kill or stop a
worker mid-job (``tests/consumer/test_worker_process.py``).

Why it exists. Two things the emulator gets wrong make it unable to carry a fleet whose
workers are SIGKILLed every few seconds (both measured here with plain subscribers):

- it ignores the subscriber's flow control, so the first stream that asks is handed the
  whole backlog — a worker allowed two messages holds forty, and a kill sends all forty
  to the back of the queue for an ack deadline;
- it never forgets a stream that went away (killed, hung or cancelled) and goes on
  handing messages to it: after 8 subscribers went away, 3 live ones received 0 of 30
  messages in 120 s, in two trials of three; with one killed and one live subscriber, the
  killed one's message reached the live one after one to three extra ack deadlines, or
  was dead-lettered after five deliveries (2 trials in 24: ``python -m tests.support.dead_streams``
  measures it, straight and through the relay).

Real Pub/Sub delivers at most ``max_outstanding_messages`` to a stream and drops a stream
whose client is gone. The relay does both, and nothing else:

- it takes messages from the emulator with unary ``Pull`` calls, never more than the
  workers have room for, so the emulator has no stream that could go away (an earlier
  version held one ``StreamingPull`` upstream instead; the stalls it then showed in long
  runs turned out to happen with ``Pull`` too, see :meth:`PubSubRelay._expire`);
- what arrives waits in a small pool, its leases extended, until a worker's stream has
  room; it is dealt out never beyond the ``max_outstanding_messages`` of that stream's
  first request;
- a worker's stream that ends takes nothing with it: the messages it held are no longer
  extended by anyone, so the emulator redelivers them once the last lease the worker was
  granted is over — exactly what happens to the messages of a killed worker (a worker
  that extended its lease by ten minutes hides its message for ten minutes);
- every other call (acks, nacks, lease extensions, publishes, admin) is forwarded byte
  for byte. Delivery attempts, the dead-letter policy and the retry policy remain the
  emulator's own.

The one thing the relay may do that Pub/Sub would not, and only when a test asks for it
(``rescue_stranded=True``, the chaos run): deal out again a message the emulator stranded —
never redelivered after its lease ended (see :meth:`PubSubRelay._expire`). It is counted
(``redealt``), and a test that did not ask for it sees ``stranded`` instead: the worker-process
tests assert both are 0, so the emulator, not the relay, brought their messages back.

``stats()`` says what the relay holds at a moment (for the chaos run's progress lines).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from google.pubsub_v1.types import (
    AcknowledgeRequest,
    ModifyAckDeadlineRequest,
    PullRequest,
    PullResponse,
    ReceivedMessage,
    StreamingPullRequest,
    StreamingPullResponse,
)

__all__ = ["PubSubRelay"]

_SERVICE: Final = "/google.pubsub.v1.Subscriber/"
STREAMING_PULL: Final = _SERVICE + "StreamingPull"
_ACKNOWLEDGE: Final = _SERVICE + "Acknowledge"
_MODIFY_ACK_DEADLINE: Final = _SERVICE + "ModifyAckDeadline"
_PULL: Final = _SERVICE + "Pull"
PUBLISH: Final = "/google.pubsub.v1.Publisher/Publish"
ACKNOWLEDGE: Final = _ACKNOWLEDGE
_OPTIONS: Final = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_DEFAULT_LIMIT: Final = 10
"""Messages per stream when a client sets no ``max_outstanding_messages``."""


def _forwarded_metadata(context: grpc.ServicerContext) -> list[tuple[str, str]]:
    # Routing headers only: the rest (user-agent, pseudo-headers) is the channel's own.
    return [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-goog")]


def _drain(requests: Iterator[bytes]) -> None:
    with contextlib.suppress(grpc.RpcError):  # the worker went away: its stream ends here
        for _ in requests:
            pass


@dataclass(eq=False)
class _Worker:
    """One worker's stream: how much it may hold, what it holds, where to send more."""

    limit: int
    number: int = 0
    inbox: queue.Queue[bytes] = field(default_factory=queue.Queue)
    holding: set[str] = field(default_factory=set)


class PubSubRelay(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no stubs here
    """``with PubSubRelay(emulator_host) as relay:`` — point the workers at ``relay.host``."""

    def __init__(
        self, upstream_host: str, *, lease_s: int = 10, rescue_stranded: bool = False
    ) -> None:
        self._channel = grpc.insecure_channel(upstream_host, options=_OPTIONS)
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=64, thread_name_prefix="relay"),
            handlers=[self],
            options=_OPTIONS,
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.host = f"127.0.0.1:{port}"
        self._lease_s = lease_s
        self._rescue = rescue_stranded
        self._lock = threading.Lock()
        self._pool: OrderedDict[str, ReceivedMessage] = OrderedDict()  # message id → message
        self._workers: list[_Worker] = []
        self._subscription: str | None = None
        self._metadata: list[tuple[str, str]] = []
        self._closing = threading.Event()
        self.attachments = 0
        self.pulled = 0
        self.dealt = 0
        self.abandoned = 0
        """Messages workers held when their stream ended (redelivered after the deadline)."""
        self.redealt = 0
        """Of those, messages the emulator never redelivered: the relay did (see _expire)."""
        self.stranded = 0
        """Messages the emulator never redelivered, left stranded (``rescue_stranded`` off)."""
        self._lease_until: dict[str, float] = {}  # ack id → end of the last lease granted
        self._acked: set[str] = set()  # message ids acked through the relay
        self._last_received: dict[str, ReceivedMessage] = {}  # message id → last pulled copy
        self._started = time.monotonic()
        self._message_of: dict[str, str] = {}  # ack id → message id
        self._pulled_at: dict[str, float] = {}  # message id → when last pulled
        self._found_nothing_at = 0.0  # when a pull last came back empty
        self.held: set[str] = set()
        """Methods whose calls wait here, not forwarded, until the method is released: a
        network that stalls. A call whose client went away meanwhile is dropped, never
        forwarded late (a killed client's request never reaches Pub/Sub)."""
        self.held_calls = 0
        self.trace: list[tuple[float, str, str]] = []
        """(seconds, message id, what happened to it here): for a lost message's trail."""

    # --- grpc.GenericRpcHandler --------------------------------------------------------

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        if method == STREAMING_PULL:
            return grpc.stream_stream_rpc_method_handler(self._streaming_pull)
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._unary(method, request, context)
        )

    def _unary(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        if method in self.held:
            with self._lock:
                self.held_calls += 1
            while method in self.held:
                if self._closing.is_set() or not context.is_active():
                    context.abort(grpc.StatusCode.CANCELLED, "client went away")
                time.sleep(0.02)
        try:
            response: bytes = self._channel.unary_unary(method)(
                request, metadata=_forwarded_metadata(context), timeout=context.time_remaining()
            )
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details() or "")
        if method == _ACKNOWLEDGE:
            ack_ids = AcknowledgeRequest.deserialize(request).ack_ids
            self._note(ack_ids, "ack")
            with self._lock:
                self._acked.update(self._message_of.get(a, "") for a in ack_ids)
            self._settled(ack_ids)
        elif method == _MODIFY_ACK_DEADLINE:
            modack = ModifyAckDeadlineRequest.deserialize(request)
            self._note(modack.ack_ids, f"modack {modack.ack_deadline_seconds}s")
            with self._lock:
                until = time.monotonic() + modack.ack_deadline_seconds
                self._lease_until.update(dict.fromkeys(modack.ack_ids, until))
            if modack.ack_deadline_seconds == 0:  # a nack
                self._settled(modack.ack_ids)
        return response

    def _trace(self, message_id: str, what: str) -> None:
        """Add to the trace (caller holds the lock)."""
        self.trace.append((round(time.monotonic() - self._started, 2), message_id, what))

    def _note(self, ack_ids: Any, what: str, stream: int | None = None) -> None:
        suffix = "" if stream is None else f" (stream {stream})"
        with self._lock:
            for ack_id in ack_ids:
                self._trace(self._message_of.get(ack_id, "?"), what + suffix)

    def trail(self, message_id: str) -> list[str]:
        """What the relay saw of one message: pulled, dealt, acked, extended, abandoned."""
        with self._lock:
            return [f"{at:8.2f}s {what}" for at, mid, what in self.trace if mid == message_id]

    def _settled(self, ack_ids: Any) -> None:
        with self._lock:
            for worker in self._workers:
                worker.holding.difference_update(ack_ids)
            self._deal()

    # --- the workers' streams ------------------------------------------------------------

    def _streaming_pull(
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        first = StreamingPullRequest.deserialize(next(requests))
        with self._lock:
            self.attachments += 1
            number = self.attachments
        worker = _Worker(int(first.max_outstanding_messages) or _DEFAULT_LIMIT, number)
        self._start_upstream(first.subscription, _forwarded_metadata(context))

        def detach() -> None:
            with self._lock:
                if worker in self._workers:
                    self._workers.remove(worker)
                    self.abandoned += len(worker.holding)
            held = list(worker.holding)
            self._note(held, "abandoned: stream ended", worker.number)
            with self._lock:
                self._deal()
            if held:
                ended = time.monotonic()
                timer = threading.Timer(self._lease_s + 2, self._expire, args=(held, ended))
                timer.daemon = True
                timer.start()

        context.add_callback(detach)
        with self._lock:
            self._workers.append(worker)
            self._deal()
        # Later requests (heartbeats, deadline changes) concern the relay's own stream;
        # reading them keeps the client from blocking.
        threading.Thread(target=_drain, args=(requests,), daemon=True).start()
        while context.is_active() and not self._closing.is_set():
            try:
                yield worker.inbox.get(timeout=0.2)
            except queue.Empty:
                continue

    def _deal(self) -> None:
        """Hand pooled messages to workers with room (caller holds the lock)."""
        while self._pool:
            room = [w for w in self._workers if len(w.holding) < w.limit]
            if not room:
                return
            worker = min(room, key=lambda w: len(w.holding))
            _, message = self._pool.popitem(last=False)
            worker.holding.add(message.ack_id)
            self._trace(message.message.message_id, f"dealt (stream {worker.number})")
            worker.inbox.put(
                StreamingPullResponse.serialize(StreamingPullResponse(received_messages=[message]))
            )
            self.dealt += 1

    # --- the relay's own stream and leases -----------------------------------------------

    def _start_upstream(self, subscription: str, metadata: list[tuple[str, str]]) -> None:
        with self._lock:
            if self._subscription is not None:
                return
            self._subscription = subscription
            self._metadata = metadata
        threading.Thread(target=self._pump, name="relay-upstream", daemon=True).start()
        threading.Thread(target=self._extend_leases, name="relay-leases", daemon=True).start()

    def _room(self) -> int:
        """Messages the workers could take now, less those already pooled (lock held)."""
        free = sum(max(0, w.limit - len(w.holding)) for w in self._workers)
        return free - len(self._pool)

    def _pump(self) -> None:
        """Pull what the workers have room for, for as long as the relay runs; what
        arrives goes into the pool and is dealt out at once."""
        assert self._subscription is not None
        pull = self._channel.unary_unary(_PULL)
        while not self._closing.is_set():
            with self._lock:
                room = self._room()
            if room <= 0:
                self._closing.wait(0.05)
                continue
            request = PullRequest(
                subscription=self._subscription, max_messages=room, return_immediately=True
            )
            try:
                raw = pull(PullRequest.serialize(request), metadata=self._metadata, timeout=10)
            except grpc.RpcError:
                self._closing.wait(0.5)
                continue
            received = PullResponse.deserialize(raw).received_messages
            if not received:
                with self._lock:
                    self._found_nothing_at = time.monotonic()
                self._closing.wait(0.1)  # nothing available: the backlog is dealt out
                continue
            with self._lock:
                self.pulled += len(received)
                for message in received:
                    # A redelivery of a message still pooled replaces the stale one.
                    self._pool[message.message.message_id] = message
                    self._message_of[message.ack_id] = message.message.message_id
                    self._pulled_at[message.message.message_id] = time.monotonic()
                    self._last_received[message.message.message_id] = message
                    self._lease_until[message.ack_id] = time.monotonic() + self._lease_s
                    self._trace(
                        message.message.message_id, f"pulled, attempt {message.delivery_attempt}"
                    )
                self._deal()

    def _expire(self, ack_ids: list[str], ended: float) -> None:
        """Watch what an ended stream held until the emulator redelivers it (or it is acked).

        Pub/Sub redelivers such a message once its lease is over — the last deadline its
        worker set, which the relay sees in the forwarded ``ModifyAckDeadline`` calls — and
        so does the emulator, at the back of its queue (so while a backlog remains it may
        wait for all of it). But near the end of long runs it sometimes never does: with the
        backlog empty, jobs held by a killed worker stayed unacked (the relay sees every ack)
        and out of reach for minutes, a nack did not bring them back, and no pull, unary or
        streaming, got them. Once a pull has found nothing to deliver after a message's lease
        was over, and it has neither come back nor been acked, it is *stranded*: counted in
        ``stranded`` — or, with ``rescue_stranded``, dealt out again by the relay itself,
        with the ack id it had (the emulator takes that id's ack and lease extensions as the
        message's) and its delivery attempt + 1, and counted in ``redealt``.
        """
        now = time.monotonic()
        with self._lock:
            late = [
                ack_id
                for ack_id in ack_ids
                if (mid := self._message_of.get(ack_id, "")) not in self._acked
                and self._pulled_at.get(mid, 0) < ended
            ]
            lease_over = max((self._lease_until.get(a, 0) for a in late), default=0) + 1
            stranded = lease_over < now and self._found_nothing_at > lease_over
            if late and stranded and self._rescue and not self._closing.is_set():
                for ack_id in late:
                    message = ReceivedMessage(self._last_received[self._message_of[ack_id]])
                    message.delivery_attempt += 1
                    self._pool[message.message.message_id] = message
                    self._pulled_at[message.message.message_id] = time.monotonic()
                    self._last_received[message.message.message_id] = message
                self.redealt += len(late)
                self._deal()
            elif late and stranded:
                self.stranded += len(late)
        if not late or self._closing.is_set():
            return
        if stranded:
            self._note(
                late,
                "lease over, stranded by the emulator: "
                + ("dealt again by the relay" if self._rescue else "left stranded"),
            )
            return
        timer = threading.Timer(max(2.0, lease_over - now), self._expire, args=(late, ended))
        timer.daemon = True
        timer.start()

    def _extend_leases(self) -> None:
        """Keep pooled messages leased to the relay until a worker takes them."""
        modack = self._channel.unary_unary(_MODIFY_ACK_DEADLINE)
        while not self._closing.wait(self._lease_s / 4):
            with self._lock:
                ack_ids = [m.ack_id for m in self._pool.values()]
            if not ack_ids:
                continue
            request = ModifyAckDeadlineRequest(
                subscription=self._subscription,
                ack_ids=ack_ids,
                ack_deadline_seconds=self._lease_s,
            )
            try:
                modack(
                    ModifyAckDeadlineRequest.serialize(request), metadata=self._metadata, timeout=5
                )
            except grpc.RpcError:
                continue  # a lapsed lease means a redelivery: allowed, and counted

    def stats(self) -> str:
        """Streams attached, messages they hold, messages pooled, pulled and dealt so far."""
        with self._lock:
            held = sum(len(w.holding) for w in self._workers)
            return (
                f"streams {len(self._workers)}, held {held}, pooled {len(self._pool)}, "
                f"pulled {self.pulled}, dealt {self.dealt}, "
                f"server threads {sum(t.name.startswith('relay_') for t in threading.enumerate())}"
            )

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> PubSubRelay:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.stop(grace=1).wait()
        self._channel.close()
