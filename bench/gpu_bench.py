#!/usr/bin/env python3
"""Benchmark of the ExLlamaV2 engine through the GenerationQueue: batching across channels against one at a time.

For each level (default 1, 4 and 16 channels) it sends one request per channel all at once, then the same number of
requests one after another, in the same run on the same loaded model, and reports for each: total tokens/s, mean
per-stream decode tokens/s, and time to first token (mean and worst, from submit). Prompts differ from their first
token on, so no run reuses another's cached prefix. The speedup column is concurrent over sequential total tokens/s.

Usage::

    python3 bench/gpu_bench.py [--model DIR] [--levels 1,4,16] [--max-new-tokens 200] [--prompt-tokens 512]
                               [--cache-type q4] [--max-batch-size N] [--json PATH]

Without ``--model`` it builds the tiny random FP16 Llama of ``scripts/gpu_smoke.py`` (its numbers measure the
engine's and the queue's overhead, not a 7B model's speed). ``scripts/gpu_smoke.py``'s docstring says how to run
both on a GPU machine, where exllamav2 travels as a wheel and compiles its CUDA extension on first import. Without
flash-attn the engine runs unpaged (one generation at a time), and concurrent equals sequential by construction.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import gpu_smoke as smoke

from bot.generation.base import EngineError


def parse_levels(text: str) -> list[int]:
    try:
        levels = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 1,4,16") from None
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError("levels must be whole numbers of at least 1, e.g. 1,4,16")
    return levels


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    smoke.add_common_arguments(parser)
    parser.set_defaults(max_new_tokens=200, prompt_tokens=512)
    parser.add_argument("--levels", type=parse_levels, default=[1, 4, 16], help="channel counts (default 1,4,16)")
    parser.add_argument("--max-batch-size", type=int, help="engine batch size (default: the largest level)")
    parser.add_argument("--no-sequential", action="store_true", help="skip the one-at-a-time runs")
    return parser.parse_args(argv)


def format_levels(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'channels':>8} {'conc t/s':>9} {'seq t/s':>9} {'speedup':>8} {'stream t/s':>11} "
        f"{'TTFT conc mean/max ms':>22} {'TTFT seq mean ms':>17}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        conc, seq = row["concurrent"], row.get("sequential")
        ttft = "-" if conc["ttft_mean"] is None else f"{conc['ttft_mean'] * 1000:.0f}/{conc['ttft_max'] * 1000:.0f}"
        seq_tps = "-" if seq is None else f"{seq['total_tps']:.1f}"
        seq_ttft = "-" if seq is None or seq["ttft_mean"] is None else f"{seq['ttft_mean'] * 1000:.0f}"
        speedup = "-" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        lines.append(
            f"{row['channels']:>8} {conc['total_tps']:>9.1f} {seq_tps:>9} {speedup:>8} "
            f"{conc['mean_stream_tps']:>11.1f} {ttft:>22} {seq_ttft:>17}"
        )
    return "\n".join(lines)


async def bench(args: argparse.Namespace, model_dir: Path, tiny: bool) -> tuple[int, dict[str, Any]]:
    report: dict[str, Any] = {"tiny_random_model": tiny, "levels": [], "settings": {}}
    batch = args.max_batch_size or max(args.levels)
    try:
        harness = await smoke.Harness.open(model_dir, args, max_batch_size=batch)
    except EngineError as exc:
        report["error"] = str(exc)
        print(f"gpu_bench: the engine could not start: {exc}", file=sys.stderr)
        return smoke.EXIT_NO_ENGINE, report
    engine, queue = harness.engine, harness.queue
    code = smoke.EXIT_OK
    try:
        info = report["engine"] = smoke.describe_engine(engine)
        report["settings"] = {"max_new_tokens": args.max_new_tokens, "prompt_tokens": args.prompt_tokens}
        print(smoke.engine_line(info))
        channel = 1
        warm = await smoke.run_streams(
            queue, [smoke.make_prompt(engine, 0, args.prompt_tokens)], 32, label="warm-up", first_channel=channel
        )
        if warm.outcomes[0] not in smoke.NORMAL_ENDINGS:
            raise RuntimeError(f"the warm-up generation ended with {warm.outcomes[0]}")
        for level in args.levels:
            row: dict[str, Any] = {"channels": level, "sequential": None, "speedup": None}
            modes = [True] if args.no_sequential else [True, False]
            for concurrent in modes:
                channel += 1000
                prompts = [smoke.make_prompt(engine, channel + i, args.prompt_tokens) for i in range(level)]
                run = await smoke.run_streams(
                    queue,
                    prompts,
                    args.max_new_tokens,
                    label=f"{level} {'concurrent' if concurrent else 'sequential'}",
                    concurrent=concurrent,
                    seed=args.seed,
                    first_channel=channel,
                )
                bad = [o for o in run.outcomes if o not in smoke.NORMAL_ENDINGS]
                if bad:
                    code = smoke.EXIT_FAILED
                    print(f"gpu_bench: {run.label}: {len(bad)} request(s) ended badly: {bad[0]}", file=sys.stderr)
                row["concurrent" if concurrent else "sequential"] = asdict(run)
            if row["sequential"] and row["sequential"]["total_tps"]:
                row["speedup"] = row["concurrent"]["total_tps"] / row["sequential"]["total_tps"]
            report["levels"].append(row)
            print(f"  {level} channel(s) done")
        print(format_levels(report["levels"]))
    except Exception as exc:
        smoke.log.exception("the benchmark crashed")
        report["error"] = f"{type(exc).__name__}: {exc}"
        code = smoke.EXIT_FAILED
    finally:
        await harness.close()
    return code, report


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="rpbot-gpu-bench-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        model_dir, tiny = smoke.prepare_model(args.model, workdir)
        code, report = await bench(args, model_dir, tiny)
    smoke.write_json(args.json, report)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    smoke.setup_logging(args.verbose)
    smoke.add_pip_cuda_headers()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
