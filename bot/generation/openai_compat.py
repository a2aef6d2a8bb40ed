"""The OpenAI-compatible engine: text completions from one or more inference servers.

TabbyAPI, vLLM, Aphrodite, KoboldCpp and llama.cpp's servers all speak ``/v1/completions`` with streaming. We send
our own Metharme prompt as plain text (not the chat endpoint: the server's chat template would wrap it again).

Several base URLs make a pool: each request goes to the server with the fewest streams in flight; a server that
cannot be reached is skipped for a short cool-down and the request fails over to the next one. Failover happens only
before the first token arrives: a stream that breaks halfway fails (retrying would repeat text the user has seen).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bot.config import mask_url_password
from bot.generation.base import (
    Engine,
    EngineError,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    GenerationStream,
)
from bot.generation.stops import StopMatcher
from bot.tokens import EstimatingTokenCounter, HFTokenCounter, TokenCounter

if TYPE_CHECKING:
    from pathlib import Path

    from bot.config import Settings

log = logging.getLogger(__name__)

# Servers on a LAN answer in milliseconds; a dead one should not hold a request for long before failover.
CONNECT_TIMEOUT = 5.0
# A server that failed is left alone this long before requests try it again.
COOLDOWN_SECONDS = 15.0
# Most OpenAI-compatible servers ignore an API key; the client library insists on having one.
NO_KEY = "no-key-needed"
_STATUS_PREFIX = re.compile(r"^Error code: \d+ - ")


def normalise_base_url(url: str) -> str:
    """``http://host:5000`` -> ``http://host:5000/v1`` (the usual prefix); URLs with a path are kept as given."""
    url = url.strip().rstrip("/")
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


@dataclass(slots=True, eq=False)
class ServerState:
    """One server of the pool, as the router sees it."""

    url: str
    client: Any  # openai.AsyncOpenAI
    in_flight: int = 0
    down_until: float = 0.0
    last_error: str = ""
    served: int = 0
    models: list[str] = field(default_factory=list)

    @property
    def shown(self) -> str:
        """The URL as it may appear in logs and errors (a password in it is masked)."""
        return mask_url_password(self.url)

    def is_down(self, now: float) -> bool:
        return now < self.down_until


class OpenAIEngine(Engine):
    name = "openai"

    def __init__(
        self,
        base_urls: Sequence[str],
        *,
        api_key: str | None = None,
        model: str | None = None,
        context_tokens: int = 4096,
        token_counter: TokenCounter | None = None,
        parallel_per_server: int = 4,
        request_timeout: float = 300.0,
        cooldown: float = COOLDOWN_SECONDS,
    ) -> None:
        if not base_urls:
            raise EngineError("RPBOT_OPENAI_BASE_URL is not set: give the server URL(s), e.g. http://127.0.0.1:5000/v1")
        self.base_urls = [normalise_base_url(url) for url in base_urls]
        self._api_key = api_key or NO_KEY
        self.model = model
        self._configured_model = model
        self._n_ctx = context_tokens
        self.token_counter: TokenCounter = token_counter or EstimatingTokenCounter()
        self.parallel_per_server = parallel_per_server
        self.request_timeout = request_timeout
        self.cooldown = cooldown
        self.servers: list[ServerState] = []
        self._turn = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIEngine:
        return cls(
            settings.openai_base_url,
            api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
            model=settings.openai_model,
            context_tokens=settings.context_tokens,
            token_counter=token_counter_for(settings.tokenizer_path),
            parallel_per_server=settings.openai_parallel,
            request_timeout=settings.request_timeout_seconds,
        )

    @property
    def capacity(self) -> int:
        return self.parallel_per_server * len(self.base_urls)

    @property
    def context_tokens(self) -> int:
        return self._n_ctx

    def count_tokens(self, text: str) -> int:
        return self.token_counter.count_tokens(text)

    # ---- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.servers:
            return
        try:
            import openai
        except ImportError:
            raise EngineError("the OpenAI-compatible engine needs the openai package: run pip install rpbot") from None
        timeout = openai.Timeout(self.request_timeout, connect=CONNECT_TIMEOUT)
        self.servers = [
            ServerState(url, openai.AsyncOpenAI(base_url=url, api_key=self._api_key, max_retries=0, timeout=timeout))
            for url in self.base_urls
        ]
        await asyncio.gather(*(self._probe(server) for server in self.servers))
        up = [server for server in self.servers if not server.last_error]
        if not up:
            problems = "; ".join(f"{server.shown}: {server.last_error}" for server in self.servers)
            await self.close()
            raise EngineUnavailable(f"no OpenAI-compatible server answered ({problems}); check RPBOT_OPENAI_BASE_URL")
        for server in self.servers:
            if server.last_error:
                log.warning("%s is not answering (%s); will retry it later", server.shown, server.last_error)
        if self._configured_model is None:
            self.model = next((s.models[0] for s in up if s.models), None)
            if self.model is None:
                await self.close()
                raise EngineError(
                    f"{up[0].shown} lists no models; load a model on the server or set RPBOT_OPENAI_MODEL"
                )
        log.info("OpenAI-compatible engine: %d of %d server(s) up, model %s", len(up), len(self.servers), self.model)

    async def _probe(self, server: ServerState) -> None:
        try:
            page = await server.client.models.list(timeout=CONNECT_TIMEOUT * 2)
            server.models = [model.id for model in page.data]
            server.last_error = ""
        except Exception as exc:
            server.last_error = describe_error(exc)
            server.down_until = time.monotonic() + self.cooldown

    async def close(self) -> None:
        servers, self.servers = self.servers, []
        for server in servers:
            try:
                await server.client.close()
            except Exception:
                log.debug("closing the client for %s failed", server.shown, exc_info=True)
        self.model = self._configured_model

    # ---- generation ----------------------------------------------------------------------------------------------

    def stream(self, request: GenerationRequest) -> GenerationStream:
        if not self.servers:
            raise EngineUnavailable("the OpenAI-compatible engine is not started")
        prompt_tokens = self.check_fits(request)
        return _OpenAIStream(self, request, prompt_tokens)

    def _candidates(self) -> list[ServerState]:
        """Servers in the order to try: up ones by fewest in flight (ties take turns), then down ones by who
        comes back first (when everything is down, trying beats failing without a try)."""
        now = time.monotonic()
        self._turn += 1
        count = len(self.servers)

        def key(pair: tuple[int, ServerState]) -> tuple[int, float, int]:
            index, server = pair
            if server.is_down(now):
                return (1, server.down_until, 0)
            return (0, float(server.in_flight), (index - self._turn) % count)

        return [server for _, server in sorted(enumerate(self.servers), key=key)]

    def completion_args(self, request: GenerationRequest) -> dict[str, Any]:
        """The /v1/completions arguments for a request (sampler fields mapped to what the servers accept)."""
        params = request.params
        extra: dict[str, Any] = {
            "top_k": params.top_k,  # 0 = off for TabbyAPI, llama.cpp, KoboldCpp and current vLLM
            "min_p": params.min_p,
            "repetition_penalty": params.repetition_penalty,  # vLLM, Aphrodite, TabbyAPI
            "repeat_penalty": params.repetition_penalty,  # llama.cpp's and llama-cpp-python's servers
        }
        args: dict[str, Any] = {
            "model": self.model or "",
            "prompt": request.prompt,
            "max_tokens": request.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "extra_body": extra,
        }
        if request.stop:
            args["stop"] = list(request.stop)
        if params.seed is not None:
            args["seed"] = params.seed
        return args

    async def _open(self, request: GenerationRequest) -> tuple[ServerState, Any]:
        """Start the completion on the least busy server that answers; raise EngineUnavailable if none does."""
        import openai

        args = self.completion_args(request)
        failures: list[str] = []
        for server in self._candidates():
            server.in_flight += 1
            try:
                response = await server.client.completions.create(**args)
            except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError) as exc:
                # Unreachable, overloaded or broken right now: let another server take it.
                server.in_flight -= 1
                self._mark_down(server, exc)
                failures.append(f"{server.shown}: {server.last_error}")
                continue
            except openai.APIStatusError as exc:
                server.in_flight -= 1
                raise EngineError(f"{server.shown} rejected the request: {describe_error(exc)}") from None
            except BaseException:
                server.in_flight -= 1
                raise
            server.down_until = 0.0
            server.last_error = ""
            server.served += 1
            return server, response
        raise EngineUnavailable(f"no OpenAI-compatible server could take the request ({'; '.join(failures)})")

    def _mark_down(self, server: ServerState, exc: BaseException) -> None:
        server.last_error = describe_error(exc)
        server.down_until = time.monotonic() + self.cooldown
        log.warning("%s failed (%s); trying it again in %gs", server.shown, server.last_error, self.cooldown)


def token_counter_for(path: Path | None) -> TokenCounter:
    """The model's tokenizer.json when given, else a conservative estimate."""
    if path is None:
        return EstimatingTokenCounter()
    try:
        return HFTokenCounter(path)
    except ValueError as exc:
        raise EngineError(f"RPBOT_TOKENIZER_PATH: {exc}") from None


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of a client error for logs and users."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f"{type(cause).__name__}" if cause is not None else "connection failed"
        return f"cannot connect ({detail})"
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return f"HTTP {exc.status_code}: the server refused the API key (check RPBOT_OPENAI_API_KEY)"
    if isinstance(exc, openai.APIStatusError):
        body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else None
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, str):
            message = _STATUS_PREFIX.sub("", str(exc.message))
        return f"HTTP {exc.status_code}: {message[:300]}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


class _OpenAIStream(GenerationStream):
    def __init__(self, engine: OpenAIEngine, request: GenerationRequest, prompt_tokens: int) -> None:
        self._engine = engine
        self._request = request
        self._prompt_tokens = prompt_tokens
        self._response: Any = None
        self._cancelled = False
        self._iterating = False
        self.result = None
        self.server: ServerState | None = None  # the server that took the request

    def __aiter__(self) -> AsyncIterator[str]:
        if self._iterating:
            raise RuntimeError("a generation stream can be iterated only once")
        self._iterating = True
        return self._iterate()

    async def cancel(self) -> None:
        self._cancelled = True
        if self.result is None and not self._iterating:
            self.result = GenerationResult("", "cancelled", prompt_tokens=self._prompt_tokens)
        await self._close_response()

    async def _close_response(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            try:
                await response.close()  # closes the HTTP stream: the server stops generating
            except Exception:
                log.debug("closing a completion stream failed", exc_info=True)

    async def _iterate(self) -> AsyncIterator[str]:
        import openai

        engine, request = self._engine, self._request
        began = time.monotonic()
        first: float | None = None
        stops = StopMatcher(request.stop)
        parts: list[str] = []
        pieces = 0
        usage: Any = None
        reason: FinishReason | None = None
        server, self._response = await engine._open(request)
        self.server = server
        try:
            if self._cancelled:
                reason = "cancelled"
            else:
                async for event in self._response:
                    if event.usage is not None:
                        usage = event.usage
                    for choice in event.choices[:1]:
                        if choice.text:
                            pieces += 1
                            shown = stops.feed(choice.text)
                            if shown:
                                if first is None:
                                    first = time.monotonic() - began
                                parts.append(shown)
                                yield shown
                        if choice.finish_reason is not None:
                            reason = "length" if choice.finish_reason == "length" else "stop"
                    if self._cancelled:
                        reason = "cancelled"
                        break
                    if stops.stopped:
                        reason = "stop"
                        break
        except (openai.APIError, openai.OpenAIError) as exc:
            if not self._cancelled:
                engine._mark_down(server, exc)
                raise EngineUnavailable(f"{server.shown} broke off the reply: {describe_error(exc)}") from None
            reason = "cancelled"
        except (asyncio.CancelledError, GeneratorExit):
            reason = "cancelled"
            raise
        finally:
            server.in_flight -= 1
            await self._close_response()
            if reason is None and self._cancelled:
                reason = "cancelled"
            if reason is not None:
                self._set_result(parts, reason, pieces, usage, began, first)
        if reason is None:
            log.warning("%s ended a stream without a finish reason; treating it as finished", server.shown)
            reason = "stop"
        if reason != "cancelled" and not stops.stopped:
            rest = stops.flush()
            if rest:
                if first is None:
                    first = time.monotonic() - began
                parts.append(rest)
                yield rest
            if stops.stopped:
                reason = "stop"
        self._set_result(parts, reason, pieces, usage, began, first)

    def _set_result(
        self, parts: list[str], reason: FinishReason, pieces: int, usage: Any, began: float, first: float | None
    ) -> None:
        self.result = GenerationResult(
            text="".join(parts),
            finish_reason=reason,
            # Servers stream about one token per event; their own usage numbers win when they send them.
            prompt_tokens=usage.prompt_tokens if usage is not None else self._prompt_tokens,
            completion_tokens=usage.completion_tokens if usage is not None else pieces,
            time_to_first_token=first,
            total_seconds=time.monotonic() - began,
        )
