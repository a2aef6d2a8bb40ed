"""What rpbot's engines add on top of the backend, measured on the tiny test model (so overhead dominates).

    PYTHONPATH=. python bench/engine_overhead.py [--tokens 400] [--runs 5]

Compares tokens/s of llama-cpp-python's own generate loop with LlamaCppEngine (worker thread, detokenizing, stop
strings, chunks crossing to the event loop), and LlamaCppEngine with the OpenAIEngine against llama-cpp-python's
server on 127.0.0.1. With a real 7B model the backend's own time per token (tens of ms) dwarfs these differences.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bot.generation.base import Engine, GenerationRequest, SamplerParams
from bot.generation.llamacpp import LlamaCppEngine
from bot.generation.openai_compat import OpenAIEngine
from tests.generation.conftest import free_port, start_llama_server, wait_until_serving
from tests.support.tiny_model import make_tiny_gguf

PROMPT = "<|system|>Enter RP mode. Pretend to be Seraphina.<|user|>Alice: hello<|model|>"


def raw_llama(model: Path, tokens: int, runs: int) -> list[float]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=4096, n_threads=1, verbose=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
    rates = []
    for _ in range(runs):
        began = time.perf_counter()
        generated = 0
        for _token in llm.generate(prompt, temp=0.8, top_k=0, top_p=0.9, min_p=0.05, repeat_penalty=1.1):
            generated += 1
            if generated >= tokens:
                break
        rates.append(generated / (time.perf_counter() - began))
    llm.close()
    return rates


async def through_engine(engine: Engine, tokens: int, runs: int) -> list[float]:
    await engine.start()
    rates = []
    for _ in range(runs):
        began = time.perf_counter()
        stream = engine.stream(GenerationRequest(PROMPT, SamplerParams(), max_new_tokens=tokens, stop=["<|user|>"]))
        async for _chunk in stream:
            pass
        assert stream.result is not None
        rates.append(stream.result.completion_tokens / (time.perf_counter() - began))
    await engine.close()
    return rates


def show(name: str, rates: list[float]) -> None:
    print(
        f"{name:<28} median {statistics.median(rates):>8,.0f} tokens/s  (runs: {', '.join(f'{r:,.0f}' for r in rates)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = make_tiny_gguf(Path(folder) / "tiny.gguf")
        show("llama-cpp-python generate", raw_llama(model, args.tokens, args.runs))
        show("LlamaCppEngine", await through_engine(LlamaCppEngine(model, threads=1), args.tokens, args.runs))
        port = free_port()
        server = start_llama_server(model, port, Path(folder) / "server.log")
        try:
            url = f"http://127.0.0.1:{port}/v1"
            wait_until_serving(url, server, Path(folder) / "server.log")
            show("OpenAIEngine -> llama server", await through_engine(OpenAIEngine([url]), args.tokens, args.runs))
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    asyncio.run(main())
