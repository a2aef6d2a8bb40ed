#!/usr/bin/env python3
"""GPU smoke test of the ExLlamaV2 engine: load a model, stream through the GenerationQueue, cancel one, measure.

What it does
  1. Takes ``--model DIR`` (a real EXL2/GPTQ/FP16 model folder with a tokenizer.json), or else builds a tiny
     random-weight FP16 Llama (numpy + tokenizers, ~4 MB) in a temporary folder.
  2. Starts ``ExLlamaV2Engine`` (progress bar on the console, VRAM summary in the log) and a ``GenerationQueue``.
  3. Warm-up, then 1 stream, then N concurrent streams (one channel each, default 4): tokens/s and time to first token.
  4. Cancel check: N concurrent streams again, cancels one after its 3rd chunk, checks that the others finish normally,
     that a request afterwards still completes, and that the engine holds no stream and never rebuilt its generator.
  5. Prints a table; ``--json PATH`` writes the numbers. Exit 0: every check passed; 1: a check failed; 2: the engine
     could not start (the message says why).

Running it on a GPU machine (a session lent the device tool; everything in one call, the extension build included)
  The GPU image has torch, nvcc, numpy, tokenizers, safetensors and rich; exllamav2 0.3.2 is a pure-Python wheel
  (``py3-none-any``, 1.5 MB) that travels with the working tree. Here, in the repository root::

      echo /.whl/ >> .git/info/exclude
      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
          --platform manylinux_2_28_x86_64 -d .whl exllamav2==0.3.2

  Then one device call with ``carry: [".whl"]`` and a timeout of about 540 s::

      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
      export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 &&
      python3 scripts/gpu_smoke.py --json $OUT/smoke.json 2>&1 | tee $OUT/smoke.log &&
      python3 bench/gpu_bench.py --json $OUT/bench.json 2>&1 | tee $OUT/bench.log

  The first ``import exllamav2`` compiles its CUDA extension with torch.utils.cpp_extension: several minutes, cached in
  ~/.cache/torch_extensions (lost when the machine goes back, so build, smoke and bench belong in one call). The
  script points nvcc at the cuBLAS/cuSPARSE headers of pip's ``nvidia`` packages when the CUDA toolkit lacks them.
  flash-attn is not on that image (it has no wheel), so expect unpaged mode there: one generation at a time, and a
  warning saying so. Only rpbot's ``bot.generation`` package is imported (no discord.py, SQLAlchemy or pydantic).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot.generation.base import EngineError, GenerationRequest, SamplerParams  # noqa: E402
from bot.generation.exllamav2 import ExLlamaV2Engine  # noqa: E402
from bot.generation.queue import GenerationJob, GenerationQueue, RequestCancelled, RequestError  # noqa: E402

log = logging.getLogger("gpu_smoke")

EXIT_OK, EXIT_FAILED, EXIT_NO_ENGINE = 0, 1, 2
METHARME_STOPS = ["<|user|>", "<|model|>", "<|system|>"]
NORMAL_ENDINGS = {"eos", "stop", "length"}
_STORY = (
    "The rain had not stopped for three days, and the tavern at the edge of the forest was full of travellers who "
    "had nowhere else to go. A bard tuned a lute by the fire while an old knight polished a sword he no longer used. "
)


# ---- preparing ---------------------------------------------------------------------------------------------------


def add_pip_cuda_headers() -> list[str]:
    """Let nvcc find cuBLAS/cuSPARSE headers from pip's ``nvidia`` packages when the CUDA toolkit has none.

    exllamav2 compiles its extension on first import; CUDA toolkits installed without the math libraries lack
    these headers, which the GPU image's pip packages carry (``nvidia/cu13/include`` or ``nvidia/*/include``).
    """
    cuda_home = Path(os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda")
    if (cuda_home / "include" / "cublas_v2.h").is_file():
        return []
    try:
        import nvidia  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return []
    found: list[str] = []
    for base in map(Path, getattr(nvidia, "__path__", [])):
        for header in ("cublas_v2.h", "cusparse.h"):
            for hit in sorted(base.glob(f"*/include/{header}")):
                if str(hit.parent) not in found:
                    found.append(str(hit.parent))
    if found:
        os.environ["CPATH"] = os.pathsep.join([*found, *filter(None, [os.environ.get("CPATH")])])
        flags = " ".join(f"-I{path}" for path in found)
        os.environ["NVCC_APPEND_FLAGS"] = f"{os.environ.get('NVCC_APPEND_FLAGS', '')} {flags}".strip()
    return found


def prepare_model(model: str | None, workdir: Path) -> tuple[Path, bool]:
    """The model folder to load and whether it is the tiny random one."""
    if model:
        return Path(model).expanduser(), False
    from bot.generation._exl_tiny_model import build_tiny_llama

    started = time.monotonic()
    path = build_tiny_llama(workdir / "tiny-llama")
    log.info("built a tiny random FP16 Llama in %s (%.1f s)", path, time.monotonic() - started)
    return path, True


def default_context(model_dir: Path, wanted: int | None) -> int:
    """The context to ask for: the given one, else 4096 capped at the model's trained length."""
    if wanted:
        return wanted
    try:
        trained = int(json.loads((model_dir / "config.json").read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        trained = 4096
    return min(4096, trained)


def make_prompt(engine: ExLlamaV2Engine, channel: int, target_tokens: int) -> str:
    """A Metharme roleplay prompt of about ``target_tokens`` tokens, different per channel from the first token on."""
    head = (
        f"<|system|>Channel {channel}. Enter RP mode. Pretend to be Seraphina whose persona follows:\n"
        "A kind forest guardian who tells long, vivid stories.\n\nYou shall reply to the user while staying in "
        "character, and generate long responses."
    )
    tail = (
        f"<|user|>Traveller{channel}: Tell me a long story about the dragon of the northern forest.<|model|>Seraphina:"
    )
    body = ""
    turn = 0
    while engine.count_tokens(head + body + tail) < target_tokens:
        who = f"<|user|>Traveller{channel}: " if turn % 2 == 0 else "<|model|>Seraphina: "
        body += who + _STORY
        turn += 1
    return head + body + tail


# ---- running -----------------------------------------------------------------------------------------------------


@dataclass
class StreamStat:
    channel: int
    outcome: str  # a finish reason, "cancelled", or "error: ..."
    tokens: int
    chunks: int
    ttft: float | None  # seconds from submit to the first chunk
    seconds: float  # from submit to the end
    decode_tps: float  # tokens / (seconds after the first token), from the engine's result


@dataclass
class RunStat:
    label: str
    streams: int
    concurrent: bool
    wall: float
    tokens: int
    total_tps: float  # all tokens / wall time
    mean_stream_tps: float  # mean of the per-stream decode rates
    ttft_mean: float | None
    ttft_max: float | None
    outcomes: list[str] = field(default_factory=list)
    per_stream: list[StreamStat] = field(default_factory=list)


async def consume(req: Any, channel: int, submitted: float, cancel_after: int | None = None) -> StreamStat:
    """Read a queued request to its end; cancel it after ``cancel_after`` chunks if asked."""
    chunks = 0
    first: float | None = None
    async for _chunk in req.chunks():
        if first is None:
            first = time.monotonic()
        chunks += 1
        if cancel_after is not None and chunks == cancel_after:
            req.cancel()
    ended = time.monotonic()
    try:
        result = await req.wait()
    except RequestCancelled:
        return StreamStat(channel, "cancelled", chunks, chunks, _since(submitted, first), ended - submitted, 0.0)
    except (RequestError, EngineError) as exc:
        return StreamStat(channel, f"error: {exc}", 0, chunks, _since(submitted, first), ended - submitted, 0.0)
    return StreamStat(
        channel,
        result.finish_reason,
        result.completion_tokens,
        chunks,
        _since(submitted, first),
        ended - submitted,
        result.tokens_per_second,
    )


def _since(start: float, moment: float | None) -> float | None:
    return None if moment is None else moment - start


def _job(prompt: str, channel: int, max_new: int, seed: int) -> GenerationJob:
    request = GenerationRequest(
        prompt=prompt, params=SamplerParams(seed=seed), stop=list(METHARME_STOPS), max_new_tokens=max_new
    )
    # One guild per channel: the queue's fairness then starts every stream at once, as separate servers would.
    return GenerationJob(request=request, guild_id=channel, channel_id=channel, label=f"smoke {channel}")


async def run_streams(
    queue: GenerationQueue,
    prompts: Sequence[str],
    max_new: int,
    *,
    label: str,
    concurrent: bool = True,
    cancel_index: int | None = None,
    cancel_after: int = 3,
    seed: int = 0,
    first_channel: int = 1000,
) -> RunStat:
    """Send one request per prompt (each its own channel), together or one after another, and measure."""
    started = time.monotonic()
    stats: list[StreamStat] = []
    if concurrent:
        pending = []
        for index, prompt in enumerate(prompts):
            channel = first_channel + index
            req = queue.submit(_job(prompt, channel, max_new, seed + index))
            after = cancel_after if index == cancel_index else None
            pending.append(consume(req, channel, time.monotonic(), after))
        stats = list(await asyncio.gather(*pending))
    else:
        for index, prompt in enumerate(prompts):
            channel = first_channel + index
            req = queue.submit(_job(prompt, channel, max_new, seed + index))
            stats.append(await consume(req, channel, time.monotonic()))
    wall = time.monotonic() - started
    tokens = sum(s.tokens for s in stats)
    ttfts = [s.ttft for s in stats if s.ttft is not None]
    rates = [s.decode_tps for s in stats if s.decode_tps > 0]
    return RunStat(
        label=label,
        streams=len(prompts),
        concurrent=concurrent,
        wall=wall,
        tokens=tokens,
        total_tps=tokens / wall if wall > 0 else 0.0,
        mean_stream_tps=statistics.fmean(rates) if rates else 0.0,
        ttft_mean=statistics.fmean(ttfts) if ttfts else None,
        ttft_max=max(ttfts) if ttfts else None,
        outcomes=[s.outcome for s in stats],
        per_stream=stats,
    )


def format_runs(runs: Sequence[RunStat]) -> str:
    """A plain table of runs, one per line."""
    header = (
        f"{'run':<28} {'streams':>7} {'tokens':>7} {'wall s':>8} {'total t/s':>10} {'stream t/s':>11} "
        f"{'TTFT mean ms':>13} {'TTFT max ms':>12}"
    )
    lines = [header, "-" * len(header)]
    for run in runs:
        mean = "-" if run.ttft_mean is None else f"{run.ttft_mean * 1000:.0f}"
        worst = "-" if run.ttft_max is None else f"{run.ttft_max * 1000:.0f}"
        lines.append(
            f"{run.label:<28} {run.streams:>7} {run.tokens:>7} {run.wall:>8.2f} {run.total_tps:>10.1f} "
            f"{run.mean_stream_tps:>11.1f} {mean:>13} {worst:>12}"
        )
    return "\n".join(lines)


def describe_engine(engine: ExLlamaV2Engine) -> dict[str, Any]:
    plan = engine.plan
    info: dict[str, Any] = {
        "exllamav2": engine.library_version,
        "model": str(engine.model_path),
        "cache_type": engine.cache_type,
        "capacity": engine.capacity,
        "context_tokens": engine.context_tokens,
    }
    if plan is not None:
        info |= {
            "paged": plan.paged,
            "max_batch_size": plan.max_batch_size,
            "cache_tokens": plan.cache_tokens,
            "chunk_size": plan.chunk_size,
        }
    torch = sys.modules.get("torch")
    with contextlib.suppress(Exception):
        if torch is not None and torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
            info["torch"] = torch.__version__
    return info


def engine_line(info: dict[str, Any]) -> str:
    mode = "paged (continuous batching)" if info.get("paged") else "unpaged (one generation at a time)"
    return (
        f"ExLlamaV2 {info.get('exllamav2')} on {info.get('device', 'an unknown GPU')}: {Path(info['model']).name}, "
        f"{mode}, batch {info.get('max_batch_size')}, {info.get('cache_type')} cache of {info.get('cache_tokens')} "
        f"tokens, context {info.get('context_tokens')}"
    )


@dataclass
class Harness:
    """An engine and a queue on it, started and closed together."""

    engine: ExLlamaV2Engine
    queue: GenerationQueue

    @classmethod
    async def open(cls, model_dir: Path, args: argparse.Namespace, *, max_batch_size: int) -> Harness:
        engine = ExLlamaV2Engine(
            model_dir,
            context_tokens=default_context(model_dir, args.context),
            max_new_tokens=args.max_new_tokens,
            cache_type=args.cache_type,
            cache_tokens=args.cache_tokens,
            max_batch_size=max_batch_size,
            chunk_size=args.chunk_size,
        )
        await engine.start()
        queue = GenerationQueue(engine, max_size=256, timeout=args.timeout)
        await queue.start()
        return cls(engine, queue)

    async def close(self) -> None:
        try:
            await self.queue.close()
        finally:
            await self.engine.close()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="a model folder to load (default: build a tiny random FP16 Llama)")
    parser.add_argument("--workdir", help="where to build the tiny model (default: a temporary folder)")
    parser.add_argument("--context", type=int, help="context tokens (default: 4096, capped at the model's)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per reply (default 128)")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="prompt length per stream (default 256)")
    parser.add_argument("--cache-type", default="q4", choices=["fp16", "q8", "q6", "q4"], help="KV cache type")
    parser.add_argument("--cache-tokens", type=int, help="KV cache size (default: batch x context)")
    parser.add_argument("--chunk-size", type=int, default=2048, help="prompt tokens per forward pass")
    parser.add_argument("--timeout", type=float, default=300.0, help="queue timeout per request, seconds")
    parser.add_argument("--seed", type=int, default=0, help="first sampler seed (one per stream)")
    parser.add_argument("--json", help="write the results as JSON to this path")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_common_arguments(parser)
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams (default 4)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="RPBOT_EXLLAMAV2_MAX_BATCH_SIZE")
    args = parser.parse_args(argv)
    if args.streams < 2:
        parser.error("--streams must be at least 2 (one of them is cancelled)")
    if args.max_new_tokens < 16:
        parser.error("--max-new-tokens must be at least 16, so a stream can be cancelled mid-way")
    return args


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"results written to {path}")


# ---- the smoke test ----------------------------------------------------------------------------------------------


async def smoke(args: argparse.Namespace, model_dir: Path, tiny: bool) -> tuple[int, dict[str, Any]]:
    report: dict[str, Any] = {"tiny_random_model": tiny, "checks": {}, "runs": []}
    checks: dict[str, str] = report["checks"]
    try:
        harness = await Harness.open(model_dir, args, max_batch_size=args.max_batch_size)
    except EngineError as exc:
        report["error"] = str(exc)
        print(f"gpu_smoke: the engine could not start: {exc}", file=sys.stderr)
        return EXIT_NO_ENGINE, report
    engine, queue = harness.engine, harness.queue
    try:
        info = report["engine"] = describe_engine(engine)
        print(engine_line(info))
        n = args.streams
        prompts = [make_prompt(engine, channel, args.prompt_tokens) for channel in range(n)]
        report["prompt_tokens"] = [engine.check_fits(GenerationRequest(prompt=p, max_new_tokens=1)) for p in prompts]

        warm = await run_streams(queue, prompts[:1], 16, label="warm-up", first_channel=1, seed=args.seed)
        checks["warm-up"] = _ok(warm.outcomes[0] in NORMAL_ENDINGS and warm.tokens > 0, f"{warm.outcomes[0]}")
        one = await run_streams(queue, prompts[:1], args.max_new_tokens, label="1 stream", first_channel=10)
        many = await run_streams(
            queue, prompts, args.max_new_tokens, label=f"{n} concurrent streams", first_channel=100, seed=args.seed
        )
        checks["1 stream"] = _ok(one.outcomes[0] in NORMAL_ENDINGS, one.outcomes[0])
        checks[f"{n} streams"] = _ok(all(o in NORMAL_ENDINGS for o in many.outcomes), ", ".join(many.outcomes))

        target = 1
        cancel = await run_streams(
            queue,
            prompts,
            args.max_new_tokens,
            label=f"{n} streams, one cancelled",
            first_channel=200,
            cancel_index=target,
            seed=args.seed,
        )
        cancelled = cancel.per_stream[target]
        others = [s for i, s in enumerate(cancel.per_stream) if i != target]
        checks["cancel: the cancelled stream ended as cancelled"] = _ok(
            cancelled.outcome == "cancelled" and cancelled.chunks >= 3,
            f"{cancelled.outcome} after {cancelled.chunks} chunks",
        )
        checks["cancel: the others finished"] = _ok(
            all(s.outcome in NORMAL_ENDINGS and s.tokens > 0 for s in others), ", ".join(s.outcome for s in others)
        )
        after = await run_streams(queue, prompts[:1], 16, label="after cancel", first_channel=300)
        checks["cancel: the engine serves afterwards"] = _ok(after.outcomes[0] in NORMAL_ENDINGS, after.outcomes[0])
        await asyncio.sleep(0.1)  # let cancelled streams wind down before counting
        checks["engine: no stream left, not broken, never rebuilt"] = _ok(
            engine.active_streams == 0 and not engine.broken and engine.rebuilds == 0,
            f"active {engine.active_streams}, broken {engine.broken}, rebuilds {engine.rebuilds}",
        )
        runs = [warm, one, many, cancel, after]
        report["runs"] = [asdict(run) for run in runs]
        report["speedup"] = many.total_tps / one.total_tps if one.total_tps else None
        print(format_runs(runs))
        if report["speedup"]:
            print(f"{n} concurrent streams give {report['speedup']:.2f}x the tokens/s of one stream")
    except Exception as exc:
        log.exception("the smoke test crashed")
        checks["ran to the end"] = _ok(False, f"{type(exc).__name__}: {exc}")
    finally:
        await harness.close()
    failed = [name for name, verdict in checks.items() if not verdict.startswith("ok")]
    for name, verdict in checks.items():
        print(f"  {'PASS' if verdict.startswith('ok') else 'FAIL'}  {name}: {verdict}")
    report["passed"] = not failed
    print("RESULT:", "PASS" if not failed else f"FAIL ({len(failed)} check(s))")
    return (EXIT_OK if not failed else EXIT_FAILED), report


def _ok(passed: bool, detail: str) -> str:
    return f"{'ok' if passed else 'failed'} ({detail})"


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="rpbot-gpu-smoke-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        model_dir, tiny = prepare_model(args.model, workdir)
        code, report = await smoke(args, model_dir, tiny)
    write_json(args.json, report)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    headers = add_pip_cuda_headers()
    if headers:
        log.info("using CUDA headers from pip packages: %s", ", ".join(headers))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
