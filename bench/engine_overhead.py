"""What rpbot's llama.cpp engine adds on top of llama-cpp-python, on the tiny test model (so overhead dominates).

    PYTHONPATH=. python bench/engine_overhead.py [--tokens 1000] [--runs 15] [--openai] [--json PATH]

The baseline calls llama-cpp-python directly: ``Llama.generate`` on the caller's thread, counting token ids (no
text, no stop strings, no thread hand-over: the least any caller can do). rpbot's LlamaCppEngine does the same
generation on its worker thread with the same model, prompt and samplers, and also turns tokens into text, watches
for stop strings and hands the text to the event loop. Runs alternate (baseline, engine, baseline, ...) so both see
the same machine; the figures are medians over ``--runs`` pairs of wall-clock tokens/s, the median of the per-pair
ratios, and tokens per CPU-second of the whole process (less sensitive to other load on a shared machine). Each
side has a warm-up run first (the prompt is then in both KV caches). With a real 7B model a token costs tens of
milliseconds and these differences vanish; on the tiny model one costs a fraction of a millisecond.

``--openai`` also runs the OpenAIEngine against llama-cpp-python's own OpenAI-compatible server on 127.0.0.1 (HTTP
and server overhead, for information).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import write_json
from bot.generation.base import Engine, GenerationRequest, SamplerParams
from bot.generation.llamacpp import LlamaCppEngine
from tests.support.tiny_model import make_tiny_gguf

PROMPT = "<|system|>Enter RP mode. Pretend to be Seraphina.<|user|>Alice: hello<|model|>Seraphina:"


class Direct:
    """llama-cpp-python called directly, with the engine's sampler settings."""

    def __init__(self, model: Path) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(model), n_ctx=4096, n_threads=1, n_threads_batch=1, verbose=False)
        self.prompt = self.llm.tokenize(PROMPT.encode(), add_bos=True, special=False)

    def run(self, tokens: int) -> tuple[int, float, float]:
        p = SamplerParams()
        self.llm.set_seed(random.randrange(2**31))
        wall, cpu = time.perf_counter(), time.process_time()
        generated = 0
        for _token in self.llm.generate(
            self.prompt,
            top_k=p.top_k,
            top_p=p.top_p,
            min_p=p.min_p,
            typical_p=1.0,
            temp=p.temperature,
            repeat_penalty=p.repetition_penalty,
        ):
            generated += 1
            if generated >= tokens:
                break
        return generated, time.perf_counter() - wall, time.process_time() - cpu

    def close(self) -> None:
        self.llm.close()


async def through(engine: Engine, tokens: int) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    stream = engine.stream(GenerationRequest(PROMPT, SamplerParams(), max_new_tokens=tokens, stop=["<|user|>"]))
    async for _chunk in stream:
        pass
    assert stream.result is not None
    return stream.result.completion_tokens, time.perf_counter() - wall, time.process_time() - cpu


def summary(samples: list[tuple[int, float, float]]) -> dict[str, float]:
    return {
        "tokens_per_s": round(statistics.median(n / wall for n, wall, _ in samples), 1),
        "tokens_per_cpu_s": round(statistics.median(n / cpu for n, _, cpu in samples if cpu > 0), 1),
        "tokens_per_run": statistics.median(n for n, _, _ in samples),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"settings": {"tokens": args.tokens, "runs": args.runs, "model": "tiny test GGUF"}}
    with tempfile.TemporaryDirectory(prefix="rpbot-engine-bench-") as folder:
        model = make_tiny_gguf(Path(folder) / "tiny.gguf")
        direct = Direct(model)
        engine = LlamaCppEngine(model, threads=1)
        await engine.start()
        try:
            direct.run(args.tokens)  # warm-up: the prompt goes into each one's KV cache
            await through(engine, args.tokens)
            base: list[tuple[int, float, float]] = []
            ours: list[tuple[int, float, float]] = []
            ratios: list[float] = []
            for _ in range(args.runs):
                base.append(direct.run(args.tokens))
                ours.append(await through(engine, args.tokens))
                ratios.append((ours[-1][0] / ours[-1][1]) / (base[-1][0] / base[-1][1]))
        finally:
            await engine.close()
            direct.close()
        results["direct"] = summary(base)
        results["engine"] = summary(ours)
        results["ratio_tokens_per_s"] = round(statistics.median(ratios), 3)
        results["ratio_tokens_per_cpu_s"] = round(
            results["engine"]["tokens_per_cpu_s"] / results["direct"]["tokens_per_cpu_s"], 3
        )
        print(
            f"  llama-cpp-python directly: {results['direct']['tokens_per_s']:8,.0f} tokens/s "
            f"({results['direct']['tokens_per_cpu_s']:,.0f} per CPU-second)"
        )
        print(
            f"  rpbot LlamaCppEngine:      {results['engine']['tokens_per_s']:8,.0f} tokens/s "
            f"({results['engine']['tokens_per_cpu_s']:,.0f} per CPU-second)"
        )
        print(
            f"  ratio (median of {args.runs} alternating pairs): {results['ratio_tokens_per_s']:.3f} "
            f"(per CPU-second: {results['ratio_tokens_per_cpu_s']:.3f})"
        )
        if args.openai:
            results["openai_server"] = await openai_side(model, Path(folder), args)
    return results


async def openai_side(model: Path, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    from bot.generation.openai_compat import OpenAIEngine
    from tests.generation.conftest import free_port, start_llama_server, wait_until_serving

    port = free_port()
    server = start_llama_server(model, port, folder / "server.log")
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_until_serving(url, server, folder / "server.log")
        engine = OpenAIEngine([url])
        await engine.start()
        try:
            await through(engine, args.tokens)
            row = summary([await through(engine, args.tokens) for _ in range(args.runs)])
        finally:
            await engine.close()
    finally:
        server.terminate()
        server.wait()
    print(f"  OpenAIEngine -> llama-cpp-python's server: {row['tokens_per_s']:,.0f} tokens/s (HTTP, for information)")
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1000, help="tokens per run (default 1000)")
    parser.add_argument("--runs", type=int, default=15, help="alternating pairs of runs (default 15)")
    parser.add_argument("--openai", action="store_true", help="also measure the OpenAI engine against a local server")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
