"""The generation queue: one engine shared fairly by every channel of every guild.

Rules, in order of importance:

* Every submitted request ends exactly once (done, failed, cancelled or replaced) and runs at most once.
* One waiting request per channel: a newer trigger in a channel whose request has not started takes its place in
  line, and the old request ends as *replaced* (one reply, to the latest message). A channel's requests also never
  run side by side: a new one waits until the channel's running one ends.
* Guilds take turns (round-robin), so one busy guild cannot starve the others; within a guild it is first come, first
  served. Direct messages (``guild_id=None``) count as one more guild.
* At most ``engine.capacity`` requests run at once.
* A request that runs longer than ``timeout`` seconds is stopped (``RequestTimedOut``); with ``max_wait`` set, one that
  waits longer than that without starting is dropped too.
* An engine error fails only the request it hit. When the engine then says it is broken, the queue waits for the
  running requests to end, restarts it (close + start, with back-off) and goes on serving.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from bot.generation.base import (
    Engine,
    EngineError,
    EngineUnavailable,
    GenerationRequest,
    GenerationResult,
    GenerationStream,
)

log = logging.getLogger(__name__)

# How many recent observations (time to first token, tokens/s, wait) the stats keep for dashboards.
RECENT_OBSERVATIONS = 512
# Seconds between attempts to restart a broken engine; the last value repeats.
RESTART_BACKOFF: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)
# How long close() waits for running generations to stop before giving up on them.
CLOSE_GRACE_SECONDS = 10.0


class QueueError(Exception):
    """The queue did not accept a request."""


class QueueFull(QueueError):
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        super().__init__(f"the generation queue is full ({max_size} requests waiting); try again in a minute")


class QueueClosed(QueueError):
    def __init__(self) -> None:
        super().__init__("the generation queue is shut down; no new requests are taken")


class RequestError(Exception):
    """A request ended without a reply for a reason of the queue's (engine failures raise EngineError instead).

    ``partial`` holds the text generated before it ended (empty if it never started).
    """

    def __init__(self, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial


class RequestCancelled(RequestError):
    """Someone cancelled the request, or the queue shut down."""


class RequestReplaced(RequestError):
    """A newer trigger in the same channel replaced the request before it started."""


class RequestTimedOut(RequestError):
    """The request ran (or waited) longer than the queue allows."""


class RequestStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REPLACED = "replaced"


_FINISHED = frozenset({RequestStatus.DONE, RequestStatus.FAILED, RequestStatus.CANCELLED, RequestStatus.REPLACED})


@dataclass(slots=True)
class GenerationJob:
    """What to generate and on whose behalf (the Discord ids drive fairness, replacement and cancellation)."""

    request: GenerationRequest
    guild_id: int | None
    channel_id: int
    user_id: int | None = None
    trigger_message_id: int | None = None
    label: str = ""  # free text for the admin queue view


Observer = Callable[[str, float], None]


@dataclass(slots=True)
class QueueStats:
    """Counters for dashboards and the metrics endpoint.

    Counters only grow; ``depth`` and ``in_flight`` are gauges. Each finished request adds one to exactly one of
    ``completed``, ``failed``, ``cancelled`` or ``replaced``; ``timed_out`` counts the failures that were timeouts.
    Observations (``time_to_first_token`` and ``tokens_per_second`` of completed requests, ``wait_seconds`` of
    every started one) go to the ``recent_*`` deques and to every subscribed observer as ``(name, value)``, so an
    exporter can feed histograms without polling.
    """

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    replaced: int = 0
    timed_out: int = 0
    rejected: int = 0
    engine_restarts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    depth: int = 0
    in_flight: int = 0
    recent_time_to_first_token: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_OBSERVATIONS))
    recent_tokens_per_second: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_OBSERVATIONS))
    recent_wait_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_OBSERVATIONS))
    _observers: list[Observer] = field(default_factory=list)

    def subscribe(self, observer: Observer) -> None:
        """Call ``observer(name, value)`` for each new observation."""
        self._observers.append(observer)

    def unsubscribe(self, observer: Observer) -> None:
        self._observers.remove(observer)

    def snapshot(self) -> dict[str, float]:
        """The counters and gauges by name (no observation lists), e.g. for an admin command."""
        return {
            name: float(getattr(self, name))
            for name in (
                "submitted",
                "completed",
                "failed",
                "cancelled",
                "replaced",
                "timed_out",
                "rejected",
                "engine_restarts",
                "prompt_tokens",
                "completion_tokens",
                "depth",
                "in_flight",
            )
        }

    def observe(self, name: str, value: float) -> None:
        recent: deque[float] = getattr(self, f"recent_{name}")
        recent.append(value)
        for observer in list(self._observers):
            try:
                observer(name, value)
            except Exception:
                log.exception("queue stats observer %r failed", observer)


class QueuedRequest:
    """A submitted job: follow it with ``chunks()`` and ``wait()``, stop it with ``cancel()``."""

    def __init__(self, queue: GenerationQueue, request_id: int, job: GenerationJob) -> None:
        self.id = request_id
        self.job = job
        self.status = RequestStatus.QUEUED
        self.submitted_at = time.time()  # wall clock, for display
        self.started_at: float | None = None  # wall clock
        self.finished_at: float | None = None  # wall clock
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None
        self._queue = queue
        self._submitted = time.monotonic()
        self._chunks: list[str] = []
        self._changed = asyncio.Event()
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._wait_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<QueuedRequest #{self.id} {self.status.value} guild={self.job.guild_id} channel={self.job.channel_id}>"

    @property
    def position(self) -> int:
        """1-based place in the waiting line (by the round-robin order); 0 once running or finished."""
        if self.status is not RequestStatus.QUEUED:
            return 0
        return self._queue._position_of(self)

    @property
    def finished(self) -> bool:
        return self.status in _FINISHED

    @property
    def text(self) -> str:
        """The text streamed so far (the whole reply once done)."""
        return "".join(self._chunks)

    @property
    def waited_seconds(self) -> float:
        """How long it waited (so far, if it still waits)."""
        if self.started_at is not None:
            return max(0.0, self.started_at - self.submitted_at)
        return time.monotonic() - self._submitted

    async def chunks(self) -> AsyncIterator[str]:
        """The text chunks as they stream, from the first one (late readers miss nothing); ends when the request
        ends, however it ends. Call ``wait()`` afterwards for the result or the error."""
        index = 0
        while True:
            changed = self._changed
            while index < len(self._chunks):
                yield self._chunks[index]
                index += 1
            if self.finished:
                return
            await changed.wait()

    async def wait(self) -> GenerationResult:
        """The result once done; raises RequestCancelled, RequestReplaced, RequestTimedOut or an EngineError."""
        await self._done.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def cancel(self) -> bool:
        """Cancel it whether it waits or runs; False if it had already finished."""
        return self._queue._cancel(self, "the request was cancelled")

    # ---- used by the queue ---------------------------------------------------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _push(self, chunk: str) -> None:
        self._chunks.append(chunk)
        self._notify()

    def _finish(
        self, status: RequestStatus, *, result: GenerationResult | None = None, error: BaseException | None = None
    ) -> bool:
        """Move to a final state; a request finishes once, later calls are ignored (and return False)."""
        if self.finished:
            return False
        self.status = status
        self.result = result
        self.error = error
        self.finished_at = time.time()
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        self._done.set()
        self._notify()
        return True


class GenerationQueue:
    """Shares one engine between all channels; see the module docstring for the rules."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_size: int,
        timeout: float,
        max_wait: float | None = None,
        restart_backoff: Sequence[float] = RESTART_BACKOFF,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_wait is not None and max_wait <= 0:
            raise ValueError("max_wait must be positive (or None for no bound)")
        self.engine = engine
        self.max_size = max_size
        self.timeout = timeout
        self.max_wait = max_wait
        self.restart_backoff = tuple(restart_backoff) or RESTART_BACKOFF
        self.stats = QueueStats()
        self._ids = itertools.count(1)
        # Waiting requests: one line per guild, and the guilds in the order they get their next turn. That order is
        # "least recently served first", which is round-robin among busy guilds and lets a guild that was just
        # served and then asks again wait behind the others rather than start a fresh turn.
        self._lines: dict[int | None, deque[QueuedRequest]] = {}
        self._turns: deque[int | None] = deque()
        self._served: dict[int | None, int] = {}  # guild -> service count stamp of its last start
        self._service_clock = itertools.count()
        self._waiting_by_channel: dict[int, QueuedRequest] = {}
        self._running: dict[int, QueuedRequest] = {}
        self._running_channels: set[int] = set()
        self._order: dict[int, int] | None = None  # request id -> position, rebuilt lazily after changes
        self._started = False
        self._closed = False
        self._restart_task: asyncio.Task[None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin serving. The engine must already be started (the queue only restarts it when it breaks)."""
        if self._closed:
            raise QueueClosed()
        self._started = True
        self._dispatch()

    async def close(self) -> None:
        """Stop taking requests, cancel every waiting and running one, and wait (briefly) for the engine streams
        to stop. The engine itself stays open: its owner closes it."""
        if self._closed:
            return
        self._closed = True
        if self._restart_task is not None:
            self._restart_task.cancel()
        for req in self._waiting():
            self._remove_waiting(req)
            self._end(req, RequestStatus.CANCELLED, error=RequestCancelled("the bot is shutting down"))
        tasks = []
        for req in list(self._running.values()):
            self._end(req, RequestStatus.CANCELLED, error=RequestCancelled("the bot is shutting down", req.text))
            if req._task is not None:
                req._task.cancel()
                tasks.append(req._task)
        if self._restart_task is not None:
            tasks.append(self._restart_task)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_GRACE_SECONDS)
            if pending:
                log.warning("%d generation(s) did not stop within %gs of shutdown", len(pending), CLOSE_GRACE_SECONDS)
        self._update_gauges()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def restarting(self) -> bool:
        """True while the queue is restarting a broken engine (waiting requests wait)."""
        return self._restart_task is not None and not self._restart_task.done()

    # ---- submitting and inspecting -------------------------------------------------------------------------------

    def submit(self, job: GenerationJob) -> QueuedRequest:
        """Queue a job. Replaces the channel's waiting request if it has one; raises QueueFull or QueueClosed."""
        if self._closed:
            raise QueueClosed()
        old = self._waiting_by_channel.get(job.channel_id)
        if old is None and len(self._waiting_by_channel) >= self.max_size:
            self.stats.rejected += 1
            raise QueueFull(self.max_size)
        req = QueuedRequest(self, next(self._ids), job)
        self.stats.submitted += 1
        if old is not None and old.job.guild_id == job.guild_id:
            # The newer trigger keeps the older one's place in line: the channel neither gains nor loses.
            line = self._lines[old.job.guild_id]
            line[line.index(old)] = req
            self._end(old, RequestStatus.REPLACED, error=RequestReplaced("a newer message in the channel replaced it"))
        else:
            if old is not None:
                self._remove_waiting(old)
                self._end(
                    old, RequestStatus.REPLACED, error=RequestReplaced("a newer message in the channel replaced it")
                )
            line = self._lines.get(job.guild_id)
            if line is None:
                line = self._lines[job.guild_id] = deque()
                self._take_turn_place(job.guild_id)
            line.append(req)
        self._waiting_by_channel[job.channel_id] = req
        if self.max_wait is not None:
            req._wait_timer = asyncio.get_running_loop().call_later(self.max_wait, self._expire, req)
        self._changed()
        self._dispatch()
        return req

    def requests(self, guild_id: int | None = None) -> list[QueuedRequest]:
        """Running requests (oldest first), then waiting ones in the order they will start; one guild's if given."""
        running = sorted(self._running.values(), key=lambda r: r.id)
        order = self._position_map()
        waiting = sorted(self._waiting(), key=lambda r: order[r.id])
        everything = [r for r in running if not r.finished] + waiting
        if guild_id is None:
            return everything
        return [r for r in everything if r.job.guild_id == guild_id]

    @property
    def depth(self) -> int:
        """Requests waiting to start."""
        return len(self._waiting_by_channel)

    @property
    def in_flight(self) -> int:
        """Requests the engine is working on (including cancelled ones still winding down)."""
        return len(self._running)

    # ---- cancelling ----------------------------------------------------------------------------------------------

    def cancel_channel(self, channel_id: int) -> int:
        """Cancel the channel's waiting and running requests; returns how many."""
        return self._cancel_where(lambda r: r.job.channel_id == channel_id, "the channel's requests were cancelled")

    def cancel_guild(self, guild_id: int) -> int:
        """Cancel every waiting and running request of a guild; returns how many."""
        return self._cancel_where(lambda r: r.job.guild_id == guild_id, "the server's requests were cancelled")

    def cancel_trigger(self, message_id: int) -> bool:
        """Cancel the request a message triggered (e.g. the message was deleted); False if none is pending."""
        return bool(
            self._cancel_where(lambda r: r.job.trigger_message_id == message_id, "the triggering message was removed")
        )

    def _cancel_where(self, match: Callable[[QueuedRequest], bool], reason: str) -> int:
        targets = [r for r in [*self._waiting(), *self._running.values()] if match(r)]
        return sum(self._cancel(r, reason) for r in targets)

    def _cancel(self, req: QueuedRequest, reason: str) -> bool:
        if req.status is RequestStatus.QUEUED:
            self._remove_waiting(req)
            self._end(req, RequestStatus.CANCELLED, error=RequestCancelled(reason))
            return True
        if req.status is RequestStatus.RUNNING:
            # Finish now so the caller hears at once; the task stops the engine stream and frees the slot.
            self._end(req, RequestStatus.CANCELLED, error=RequestCancelled(reason, req.text))
            if req._task is not None:
                req._task.cancel()
            return True
        return False

    # ---- scheduling ----------------------------------------------------------------------------------------------

    def _waiting(self) -> list[QueuedRequest]:
        return [req for line in self._lines.values() for req in line]

    def _changed(self) -> None:
        self._order = None
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.stats.depth = len(self._waiting_by_channel)
        self.stats.in_flight = len(self._running)

    def _position_map(self) -> dict[int, int]:
        """Positions by simulating the round-robin on the current lines (as if nothing new arrived)."""
        if self._order is None:
            lines = {key: deque(line) for key, line in self._lines.items()}
            turns = deque(self._turns)
            order: dict[int, int] = {}
            while turns:
                key = turns.popleft()
                order[lines[key].popleft().id] = len(order) + 1
                if lines[key]:
                    turns.append(key)
            self._order = order
        return self._order

    def _position_of(self, req: QueuedRequest) -> int:
        return self._position_map().get(req.id, 0)

    def _remove_waiting(self, req: QueuedRequest) -> None:
        key = req.job.guild_id
        line = self._lines[key]
        line.remove(req)
        if not line:
            del self._lines[key]
            self._turns.remove(key)
        if self._waiting_by_channel.get(req.job.channel_id) is req:
            del self._waiting_by_channel[req.job.channel_id]
        self._changed()

    def _take_turn_place(self, key: int | None) -> None:
        """Put a guild that starts waiting among the others, by when it was last served (never = first)."""
        stamp = self._served.get(key, -1)
        place = len(self._turns)
        for index, other in enumerate(self._turns):
            if self._served.get(other, -1) > stamp:
                place = index
                break
        self._turns.insert(place, key)

    def _next_ready(self) -> QueuedRequest | None:
        """The next request to start: the first guild in turn order with a request whose channel is not busy."""
        for turn, key in enumerate(self._turns):
            for req in self._lines[key]:
                if req.job.channel_id not in self._running_channels:
                    # This guild had its turn: it goes to the back (if it still waits for more).
                    del self._turns[turn]
                    self._served[key] = next(self._service_clock)
                    self._lines[key].remove(req)
                    if self._lines[key]:
                        self._turns.append(key)
                    else:
                        del self._lines[key]
                    del self._waiting_by_channel[req.job.channel_id]
                    return req
        return None

    def _dispatch(self) -> None:
        """Start waiting requests while the engine has free capacity."""
        if not self._started or self._closed or self.restarting:
            return
        if self.engine.broken:
            self._begin_restart()
            return
        started = False
        while len(self._running) < max(1, self.engine.capacity):
            req = self._next_ready()
            if req is None:
                break
            started = True
            req.status = RequestStatus.RUNNING
            req.started_at = time.time()
            if req._wait_timer is not None:
                req._wait_timer.cancel()
                req._wait_timer = None
            self._running[req.id] = req
            self._running_channels.add(req.job.channel_id)
            self.stats.observe("wait_seconds", time.monotonic() - req._submitted)
            req._task = asyncio.create_task(self._run(req), name=f"generation-{req.id}")
            # Clean-up lives in a done callback: a task cancelled before its first step never runs its body.
            req._task.add_done_callback(lambda _task, req=req: self._run_ended(req))
        if started:
            self._changed()

    def _expire(self, req: QueuedRequest) -> None:
        if req.status is RequestStatus.QUEUED:
            self._remove_waiting(req)
            self.stats.timed_out += 1
            self._end(
                req,
                RequestStatus.FAILED,
                error=RequestTimedOut(f"it waited {self.max_wait:g}s in the queue without starting; try again later"),
            )

    def _end(
        self,
        req: QueuedRequest,
        status: RequestStatus,
        *,
        result: GenerationResult | None = None,
        error: BaseException | None = None,
    ) -> None:
        if not req._finish(status, result=result, error=error):
            return
        if status is RequestStatus.DONE:
            self.stats.completed += 1
        elif status is RequestStatus.FAILED:
            self.stats.failed += 1
        elif status is RequestStatus.CANCELLED:
            self.stats.cancelled += 1
        else:
            self.stats.replaced += 1

    # ---- running -------------------------------------------------------------------------------------------------

    async def _run(self, req: QueuedRequest) -> None:
        stream: GenerationStream | None = None
        began = time.monotonic()
        first_chunk: float | None = None
        try:
            deadline = asyncio.timeout(self.timeout)
            try:
                async with deadline:
                    stream = self.engine.stream(req.job.request)
                    async for chunk in stream:
                        if not chunk:
                            continue
                        if first_chunk is None:
                            first_chunk = time.monotonic()
                        req._push(chunk)
            except TimeoutError:
                if not deadline.expired():
                    raise  # the engine's own timeout: an engine failure, handled below
                await self._stop_stream(stream)
                self.stats.timed_out += 1
                self._end(
                    req,
                    RequestStatus.FAILED,
                    error=RequestTimedOut(f"the reply took longer than {self.timeout:g}s and was stopped", req.text),
                )
                return
            result = stream.result
            if result is None:
                raise EngineError(f"the {self.engine.name} engine ended a stream without a result")
            if result.finish_reason == "error":
                raise EngineError(f"the {self.engine.name} engine reported an error")
            if result.finish_reason == "cancelled":
                self._end(
                    req, RequestStatus.CANCELLED, error=RequestCancelled("the engine cancelled the request", req.text)
                )
                return
            if result.time_to_first_token is None and first_chunk is not None:
                result.time_to_first_token = first_chunk - began
            self._end(req, RequestStatus.DONE, result=result)
            if req.status is RequestStatus.DONE:
                if result.time_to_first_token is not None:
                    self.stats.observe("time_to_first_token", result.time_to_first_token)
                if result.tokens_per_second > 0:
                    self.stats.observe("tokens_per_second", result.tokens_per_second)
        except asyncio.CancelledError:
            # cancel() or close() already finished the request; stop the engine's work before freeing the slot.
            await self._stop_stream(stream)
            self._end(req, RequestStatus.CANCELLED, error=RequestCancelled("the request was cancelled", req.text))
        except EngineError as exc:
            log.warning("generation #%d failed: %s", req.id, exc)
            await self._stop_stream(stream)
            self._end(req, RequestStatus.FAILED, error=exc)
        except Exception as exc:
            log.exception("generation #%d failed unexpectedly", req.id)
            await self._stop_stream(stream)
            error = EngineError(f"the {self.engine.name} engine failed unexpectedly ({type(exc).__name__})")
            self._end(req, RequestStatus.FAILED, error=error)
        finally:
            if stream is not None and stream.result is not None:
                self.stats.prompt_tokens += stream.result.prompt_tokens
                self.stats.completion_tokens += stream.result.completion_tokens

    def _run_ended(self, req: QueuedRequest) -> None:
        self._end(req, RequestStatus.CANCELLED, error=RequestCancelled("the request was cancelled", req.text))
        self._running.pop(req.id, None)
        self._running_channels.discard(req.job.channel_id)
        self._changed()
        self._dispatch()

    async def _stop_stream(self, stream: GenerationStream | None) -> None:
        if stream is None:
            return
        try:
            await stream.cancel()
        except Exception:
            log.exception("could not cancel a %s stream", self.engine.name)

    # ---- engine restarts -----------------------------------------------------------------------------------------

    def _begin_restart(self) -> None:
        if not self.restarting and not self._closed:
            self._restart_task = asyncio.create_task(self._restart_engine(), name="engine-restart")

    async def _restart_engine(self) -> None:
        name = self.engine.name
        running = [r._task for r in self._running.values() if r._task is not None]
        if running:
            log.warning("the %s engine is broken; waiting for %d running request(s) to end", name, len(running))
            await asyncio.wait(running)
        for attempt in itertools.count(1):
            log.warning("restarting the %s engine (attempt %d)", name, attempt)
            try:
                await self.engine.close()
            except Exception:
                log.exception("closing the broken %s engine failed; starting it anyway", name)
            try:
                await self.engine.start()
                if self.engine.broken:
                    raise EngineError("it still reports itself broken after starting")
            except Exception as exc:
                reason = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
                log.error("could not restart the %s engine: %s", name, reason)
                # Waiting requests would otherwise wait on an engine that may never come back.
                for req in self._waiting():
                    self._remove_waiting(req)
                    self._end(
                        req,
                        RequestStatus.FAILED,
                        error=EngineUnavailable(f"the {name} engine is down and could not be restarted: {reason}"),
                    )
                delay = self.restart_backoff[min(attempt, len(self.restart_backoff)) - 1]
                await asyncio.sleep(delay)
                continue
            self.stats.engine_restarts += 1
            log.info("the %s engine is serving again", name)
            break
        self._restart_task = None
        self._dispatch()
