"""Every CPU benchmark, one after another, with one table at the end: each figure beside its baseline from this run.

    PYTHONPATH=. python bench/run_all.py [--quick] [--results bench/results]

Runs bot_overhead, prompt_bench, queue_overhead and engine_overhead (each in its own process, its output shown as
it goes), writes their JSON results and ``summary.json`` / ``summary.md`` (the table, with the machine it ran on)
to ``--results``. Takes about 3 minutes on a 2-core machine; ``--quick`` runs tiny sizes in well under a minute to
check that everything works (its figures mean little). The GPU benchmark (``bench/gpu_bench.py``) needs a GPU and
is not part of this run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# name -> (script, full-size arguments, --quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "bot_overhead": (
        "bot_overhead.py",
        ["--compare-in-process"],
        [
            "--channels",
            "2",
            "--messages",
            "20",
            "--rate",
            "20",
            "--history",
            "5",
            "--max-rate",
            "25",
            "--sweep-seconds",
            "2",
        ],
    ),
    "prompt_bench": ("prompt_bench.py", [], ["--messages", "1000", "--build-turns", "10", "--turns", "40"]),
    "queue_overhead": ("queue_overhead.py", [], ["--waiting", "100", "--rounds", "1"]),
    "engine_overhead": ("engine_overhead.py", [], ["--tokens", "50", "--runs", "2"]),
}


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    return {
        "cpu_model": model,
        "cores": cores,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run_one(name: str, results: Path, quick: bool) -> dict[str, Any]:
    script, full, small = BENCHMARKS[name]
    out = results / f"{name}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(ROOT / "bench" / script), *(small if quick else full), "--json", str(out)]
    print(f"\n== {name}: {' '.join(command[1:])}", flush=True)
    began = time.monotonic()
    status = subprocess.run(command, cwd=ROOT, env=env).returncode
    seconds = round(time.monotonic() - began, 1)
    if status != 0 or not out.exists():
        print(f"== {name} failed (exit status {status}) after {seconds} s", flush=True)
        return {"error": f"exit status {status}", "seconds": seconds}
    print(f"== {name} done in {seconds} s", flush=True)
    return {**json.loads(out.read_text()), "seconds": seconds}


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def rows(all_results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, rpbot, baseline from the same run, target) for the table."""
    out: list[tuple[str, str, str, str]] = []
    bot = all_results.get("bot_overhead", {})
    if "channels" in bot:
        local = {r["channels"]: r for r in bot.get("in_process", [])}
        for row in bot["channels"]:
            base = local.get(row["channels"])
            out.append(
                (
                    f"Bot overhead, {row['channels']} busy channel(s) at {row['rate_per_s']:g} msg/s: "
                    "median / p99, MESSAGE_CREATE to first reply POST",
                    f"{_ms(row['median_ms'])} / {_ms(row['p99_ms'])}",
                    f"emulator in the bot's process: {_ms(base['median_ms'])} / {_ms(base['p99_ms'])}" if base else "-",
                    "p99 < 20 ms at 50 msg/s" if row["channels"] == 100 else "",
                )
            )
            out.append(
                (
                    f"Bot CPU per message, {row['channels']} channel(s)",
                    f"{row['bot_cpu_ms_per_trigger']:.1f} ms",
                    f"emulator in-process: {base['bot_cpu_ms_per_trigger']:.1f} ms (emulator counted)" if base else "-",
                    "",
                )
            )
        held = bot.get("highest_rate_held")
        sweep = ", ".join(f"{r['rate_per_s']:g}: p99 {_ms(r['p99_ms'])}" for r in bot.get("rate_sweep", []))
        out.append(
            (
                f"Highest rate held over {bot['settings']['channels'][-1]} channels (nothing lost, p99 < 1 s)",
                f"{held:g} msg/s" if held else "none",
                f"sweep {sweep}",
                "",
            )
        )
    prompt = all_results.get("prompt_bench", {})
    for name, row in prompt.get("build", {}).items():
        out.append(
            (
                f"Prompt build, {prompt['settings']['messages']:,}-message channel, 4096 context, counter: {name}",
                f"median {row['median_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms",
                f"of which the whole-prompt count: {row['whole_prompt_count_median_ms']:.2f} ms",
                "< 2 ms with cached counts",
            )
        )
    for row in prompt.get("reuse", []):
        out.append(
            (
                f"Prefix reuse over {prompt['settings']['turns']} turns, lorebook keys in "
                f"{row['lorebook_key_rate']:.0%} of messages",
                f"{row['rpbot']['mean_reuse']:.1%}",
                f"naive one-message trimmer: {row['naive']['mean_reuse']:.1%}",
                "",
            )
        )
    queue = all_results.get("queue_overhead", {})
    if "cost_us_per_request" in queue:
        waiting = queue["settings"]["waiting"]
        cost = queue["cost_us_per_request"]
        out.append(
            (
                f"Queue cost per request, {waiting} queued (event-loop CPU)",
                f"{cost['rpbot']:.0f} µs",
                f"plain FIFO: {cost['fifo']:.0f} µs",
                "",
            )
        )
        fair = {r["scheduler"]: r for r in queue["fairness"]}
        out.append(
            (
                f"Light guild's worst wait while a heavy guild floods {waiting} requests",
                f"{fair['rpbot']['light_worst_wait_ms']:.1f} ms",
                f"plain FIFO: {fair['fifo']['light_worst_wait_ms']:.1f} ms",
                "",
            )
        )
    engine = all_results.get("engine_overhead", {})
    if "ratio_tokens_per_s" in engine:
        out.append(
            (
                "llama.cpp engine, tiny model: tokens/s",
                f"{engine['engine']['tokens_per_s']:,.0f} (ratio {engine['ratio_tokens_per_s']:.3f}; "
                f"per CPU-second {engine['ratio_tokens_per_cpu_s']:.3f})",
                f"llama-cpp-python directly: {engine['direct']['tokens_per_s']:,.0f}",
                "ratio >= 0.95",
            )
        )
    out.append(("GPU (ExLlamaV2): tokens/s at 1, 4, 16 channels", "not measured here", "bench/gpu_bench.py", ""))
    return out


def markdown(table: list[tuple[str, str, str, str]], info: dict[str, Any]) -> str:
    lines = [
        f"Measured {info['date_utc']} UTC on {info['cores']} cores ({info['cpu_model']}), Python {info['python']}, "
        f"load average at start {', '.join(str(x) for x in info['load_average_at_start'])}, commit {info['commit']}"
        + (" with uncommitted changes" if info.get("uncommitted_changes") else "")
        + ".",
        "",
        "| Figure | rpbot | Baseline (same run) | Target |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="run only these (repeatable)")
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    info = machine()
    began = time.monotonic()
    all_results = {name: run_one(name, args.results, args.quick) for name in (args.only or BENCHMARKS)}
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["total_seconds"] = round(time.monotonic() - began, 1)
    table = rows(all_results)
    text = markdown(table, info)
    (args.results / "summary.md").write_text(text)
    (args.results / "summary.json").write_text(
        json.dumps({"machine": info, "quick": args.quick, "table": table, "results": all_results}, indent=2)
    )
    print("\n" + text)
    print(f"All benchmarks took {info['total_seconds']} s; results in {args.results}")
    failed = [name for name, result in all_results.items() if "error" in result]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
