"""Riding out restarts of the sandboxer: retries of calls that change
nothing, and output and event streams that resume where they broke off.

While the sandboxer's worker restarts (a crash, a live upgrade), its API
socket stays open (the supervisor holds it): new connections wait, calls
in flight fail with ``UNAVAILABLE`` or end in the middle of a stream. The
helpers here retry with a backoff from 50 ms doubling up to 1 s, for at
most the client's ``retry_timeout`` per outage, and resume
``AttachOutput`` from the offset after the last byte received,
``WatchEvents`` after the last sequence number received and
``WatchSandboxUsage`` with the next sample.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TypeVar

from connectrpc.client import ResponseMetadata
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from magnetar._common import Output, output_stream_name
from magnetar.container.v1 import container_pb2
from magnetar.sandbox.v1 import sandbox_pb2

DEFAULT_RETRY_TIMEOUT = 30.0
"""Seconds a client keeps retrying, or resuming a stream, per outage."""

EVENT_SEQUENCE_HEADER = "magnetar-event-sequence"
"""WatchEvents' response header: the sequence number the stream starts after."""

_FIRST = 0.05
_MAX = 1.0

# A sandboxer that goes away answers UNAVAILABLE, or the connection ends
# in the middle of a response, which the transport reports as one of the
# others.
_TRANSIENT = frozenset({Code.UNAVAILABLE, Code.INTERNAL, Code.UNKNOWN})

T = TypeVar("T")


def transient(err: ConnectError, *, stream: bool = False) -> bool:
    """Whether ``err`` means the sandboxer was unavailable: ``UNAVAILABLE``,
    and, for a stream (whose calls change nothing), a broken connection."""
    return err.code == Code.UNAVAILABLE or (stream and err.code in _TRANSIENT)


class Backoff:
    """Paces the attempts of one outage within ``budget`` seconds."""

    def __init__(self, budget: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._clock = clock
        self._start: float | None = None
        self._delay = _FIRST

    def next_delay(self) -> float | None:
        """The pause before the next attempt, or None once the budget is spent."""
        if self.budget <= 0:
            return None
        now = self._clock()
        if self._start is None:
            self._start, self._delay = now, _FIRST
        if now + self._delay - self._start > self.budget:
            return None
        d = self._delay
        self._delay = min(2 * self._delay, _MAX)
        return d

    def reset(self) -> None:
        """Progress was made: the next failure starts a new outage."""
        self._start = None


def retry(budget: float, call: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
    """Makes ``call`` (one that changes nothing) until it does not fail with
    ``UNAVAILABLE`` or the budget is spent."""
    b = Backoff(budget)
    while True:
        try:
            return call()
        except ConnectError as e:
            if not transient(e):
                raise
            d = b.next_delay()
            if d is None:
                raise
            sleep(d)


async def retry_async(budget: float, call: Callable[[], Awaitable[T]]) -> T:
    """:func:`retry` for coroutines."""
    b = Backoff(budget)
    while True:
        try:
            return await call()
        except ConnectError as e:
            if not transient(e):
                raise
            d = b.next_delay()
            if d is None:
                raise
            await asyncio.sleep(d)


class _OutputState:
    """Where an output stream is: the next offset, and the exit once seen."""

    def __init__(self, container_id: str, exec_id: str, start_offset: int | None, follow: bool = True) -> None:
        self.container_id = container_id
        self.exec_id = exec_id
        self.offset = start_offset
        self.follow = follow
        self.exit: int | None = None

    def request(self) -> container_pb2.AttachOutputRequest:
        req = container_pb2.AttachOutputRequest(container_id=self.container_id, exec_id=self.exec_id)
        if not self.follow:
            req.follow = False
        if self.offset is not None:
            req.start_offset = self.offset
        return req

    def take(self, res: container_pb2.AttachOutputResponse) -> Output | None:
        if res.HasField("output"):
            o = res.output
            self.offset = o.offset + len(o.data)
            return Output(output_stream_name(o.stream), o.data, o.offset)
        if res.HasField("exit"):
            self.exit = res.exit.exit_status
        return None

    def ended(self) -> ConnectError:
        return ConnectError(Code.UNAVAILABLE, "output stream ended without an exit status")


def follow_output(
    attach: Callable[[container_pb2.AttachOutputRequest], Iterable[container_pb2.AttachOutputResponse]],
    container_id: str,
    exec_id: str,
    start_offset: int | None,
    budget: float,
    on_exit: Callable[[int], None],
    sleep: Callable[[float], None] = time.sleep,
    *,
    follow: bool = True,
) -> Iterator[Output]:
    """Yields a process's output from ``start_offset`` (the oldest byte kept
    if None) until its exit, which goes to ``on_exit``, resuming the stream
    from the next offset when it breaks. Without ``follow``: the output there
    was when the call arrived (and the exit if the process had exited), then
    the end."""
    st = _OutputState(container_id, exec_id, start_offset, follow)
    b = Backoff(budget)
    while True:
        try:
            for res in attach(st.request()):
                b.reset()
                out = st.take(res)
                if out is not None:
                    yield out
                elif st.exit is not None:
                    on_exit(st.exit)
                    return
            if not st.follow:
                return
            raise st.ended()
        except ConnectError as e:
            d = b.next_delay() if transient(e, stream=True) else None
            if d is None:
                raise
            sleep(d)


async def follow_output_async(
    attach: Callable[[container_pb2.AttachOutputRequest], AsyncIterator[container_pb2.AttachOutputResponse]],
    container_id: str,
    exec_id: str,
    start_offset: int | None,
    budget: float,
    on_exit: Callable[[int], None],
    *,
    follow: bool = True,
) -> AsyncIterator[Output]:
    """:func:`follow_output` for asyncio."""
    st = _OutputState(container_id, exec_id, start_offset, follow)
    b = Backoff(budget)
    while True:
        try:
            async for res in attach(st.request()):
                b.reset()
                out = st.take(res)
                if out is not None:
                    yield out
                elif st.exit is not None:
                    on_exit(st.exit)
                    return
            if not st.follow:
                return
            raise st.ended()
        except ConnectError as e:
            d = b.next_delay() if transient(e, stream=True) else None
            if d is None:
                raise
            await asyncio.sleep(d)


class _EventState:
    """Where an event stream is: the last sequence number seen."""

    def __init__(self, sandbox_ids: list[str], after: int | None) -> None:
        self.sandbox_ids = sandbox_ids
        self.after = after

    def request(self) -> sandbox_pb2.WatchEventsRequest:
        req = sandbox_pb2.WatchEventsRequest(sandbox_ids=self.sandbox_ids)
        if self.after is not None:
            req.after_sequence = self.after
        return req

    def started(self, md: ResponseMetadata) -> None:
        # A live stream starts after the newest event: resume from there
        # should it break before its first event.
        if self.after is None:
            v = md.headers.get(EVENT_SEQUENCE_HEADER)
            if v is not None and v.isdigit():
                self.after = int(v)

    def take(self, res: sandbox_pb2.WatchEventsResponse) -> sandbox_pb2.Event | None:
        seq = res.event.sequence
        if self.after is not None and seq <= self.after:
            return None
        self.after = seq
        return res.event


def watch_events(
    watch: Callable[[sandbox_pb2.WatchEventsRequest], Iterable[sandbox_pb2.WatchEventsResponse]],
    sandbox_ids: list[str],
    after: int | None,
    budget: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[sandbox_pb2.Event]:
    """Yields events (after sequence ``after`` if set, live ones otherwise),
    resuming after the last one seen when the stream breaks."""
    st = _EventState(sandbox_ids, after)
    b = Backoff(budget)
    while True:
        try:
            with ResponseMetadata() as md:
                for res in watch(st.request()):
                    st.started(md)
                    b.reset()
                    ev = st.take(res)
                    if ev is not None:
                        yield ev
                st.started(md)
            raise ConnectError(Code.UNAVAILABLE, "event stream ended")
        except ConnectError as e:
            d = b.next_delay() if transient(e, stream=True) else None
            if d is None:
                raise
            sleep(d)


async def watch_events_async(
    watch: Callable[[sandbox_pb2.WatchEventsRequest], AsyncIterator[sandbox_pb2.WatchEventsResponse]],
    sandbox_ids: list[str],
    after: int | None,
    budget: float,
) -> AsyncIterator[sandbox_pb2.Event]:
    """:func:`watch_events` for asyncio."""
    st = _EventState(sandbox_ids, after)
    b = Backoff(budget)
    while True:
        try:
            with ResponseMetadata() as md:
                async for res in watch(st.request()):
                    st.started(md)
                    b.reset()
                    ev = st.take(res)
                    if ev is not None:
                        yield ev
                st.started(md)
            raise ConnectError(Code.UNAVAILABLE, "event stream ended")
        except ConnectError as e:
            d = b.next_delay() if transient(e, stream=True) else None
            if d is None:
                raise
            await asyncio.sleep(d)


def watch_usage(
    watch: Callable[[], Iterable[sandbox_pb2.WatchSandboxUsageResponse]],
    budget: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[sandbox_pb2.SandboxUsage]:
    """Yields a sandbox's usage samples, opening the stream again (from the
    next sample) when it breaks. The server ends the stream only with an
    error (``NOT_FOUND`` once the sandbox is gone)."""
    b = Backoff(budget)
    while True:
        try:
            for res in watch():
                b.reset()
                yield res.usage
            raise ConnectError(Code.UNAVAILABLE, "usage stream ended")
        except ConnectError as e:
            d = b.next_delay() if transient(e, stream=True) else None
            if d is None:
                raise
            sleep(d)


async def watch_usage_async(
    watch: Callable[[], AsyncIterator[sandbox_pb2.WatchSandboxUsageResponse]],
    budget: float,
) -> AsyncIterator[sandbox_pb2.SandboxUsage]:
    """:func:`watch_usage` for asyncio."""
    b = Backoff(budget)
    while True:
        try:
            async for res in watch():
                b.reset()
                yield res.usage
            raise ConnectError(Code.UNAVAILABLE, "usage stream ended")
        except ConnectError as e:
            d = b.next_delay() if transient(e, stream=True) else None
            if d is None:
                raise
            await asyncio.sleep(d)
