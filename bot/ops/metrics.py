"""Prometheus metrics and a health check, served over HTTP on ``RPBOT_METRICS_PORT``.

The queue's counters are read at scrape time by a custom collector (no double bookkeeping); observations (time to
first token, tokens/s, waits) arrive through the queue's observer hook and feed histograms. Each bot gets its own
registry, so several bots in one process (tests, shards) never clash.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from bot.generation.queue import GenerationQueue

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HealthCheck = Callable[[], Awaitable[list[str]]]  # returns the problems; empty when healthy

_QUEUE_COUNTERS = {
    "submitted": "Generation requests submitted",
    "completed": "Generation requests completed",
    "failed": "Generation requests failed (timeouts included)",
    "cancelled": "Generation requests cancelled",
    "replaced": "Queued requests replaced by a newer trigger in the same channel",
    "timed_out": "Generation requests that timed out",
    "rejected": "Requests refused because the queue was full",
    "engine_restarts": "Engine restarts after a failure",
    "prompt_tokens": "Prompt tokens processed",
    "completion_tokens": "Tokens generated",
}


class _QueueCollector(Collector):
    def __init__(self, get_queue: Callable[[], GenerationQueue | None]) -> None:
        self._get_queue = get_queue

    def collect(self) -> Iterator[Metric]:
        queue = self._get_queue()
        if queue is None:
            return
        stats = queue.stats
        for name, doc in _QUEUE_COUNTERS.items():
            family = CounterMetricFamily(f"rpbot_queue_{name}", doc)
            family.add_metric([], float(getattr(stats, name)))
            yield family
        depth = GaugeMetricFamily("rpbot_queue_depth", "Requests waiting in the generation queue")
        depth.add_metric([], float(queue.depth))
        yield depth
        in_flight = GaugeMetricFamily("rpbot_queue_in_flight", "Requests being generated now")
        in_flight.add_metric([], float(queue.in_flight))
        yield in_flight


class BotMetrics:
    """Every metric rpbot exports, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._queue: GenerationQueue | None = None
        self.registry.register(_QueueCollector(lambda: self._queue))
        self.replies = Counter("rpbot_replies", "Persona replies by outcome", ["outcome"], registry=self.registry)
        self.time_to_first_token = Histogram(
            "rpbot_time_to_first_token_seconds",
            "Seconds from generation start to the first token",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.generation_seconds = Histogram(
            "rpbot_generation_seconds",
            "Seconds a reply took from trigger to final text",
            buckets=(0.5, 1, 2, 5, 10, 20, 40, 80, 160),
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "rpbot_queue_wait_seconds",
            "Seconds requests waited in the queue",
            buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.tokens_per_second = Gauge(
            "rpbot_tokens_per_second", "Generation speed of the latest completed request", registry=self.registry
        )
        self.engine_up = Gauge("rpbot_engine_up", "1 when the engine is ready", registry=self.registry)
        # Per shard: a process may run several, and each has its own gateway connection.
        self.discord_latency = Gauge(
            "rpbot_discord_latency_seconds",
            "Discord gateway heartbeat latency",
            ["shard"],
            registry=self.registry,
        )
        self.discord_connected = Gauge(
            "rpbot_discord_connected",
            "1 while the shard is connected to the Discord gateway",
            ["shard"],
            registry=self.registry,
        )

    def attach_queue(self, queue: GenerationQueue) -> None:
        self._queue = queue
        queue.stats.subscribe(self._observe)

    def _observe(self, name: str, value: float) -> None:
        if name == "time_to_first_token":
            self.time_to_first_token.observe(value)
        elif name == "tokens_per_second":
            self.tokens_per_second.set(value)
        elif name == "wait_seconds":
            self.wait_seconds.observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``/metrics`` (Prometheus text format) and ``/healthz`` (200, or 503 with the reasons)."""

    def __init__(self, metrics: BotMetrics, health: HealthCheck, *, before_scrape: Callable[[], None] | None = None):
        self.metrics = metrics
        self.health = health
        self.before_scrape = before_scrape
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        # With port 0 the system picks a free one; the runner knows which.
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        log.info("metrics and health on http://%s:%s/metrics and /healthz", host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        if self.before_scrape is not None:
            self.before_scrape()
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, _request: web.Request) -> web.Response:
        try:
            problems = await self.health()
        except Exception as exc:
            log.exception("health check failed")
            problems = [f"health check failed: {type(exc).__name__}"]
        if problems:
            return web.json_response({"status": "unhealthy", "problems": problems}, status=503)
        return web.json_response({"status": "ok"})
