"""The benchmarks run: ``bench/run_all.py --quick`` (tiny sizes) end to end. Figures are not checked, only that every
benchmark ran, measured what it says and that the table has each figure beside its baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_run_all_quick_runs_every_cpu_benchmark(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick", "--results", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    results = summary["results"]
    assert set(results) == {"bot_overhead", "prompt_bench", "queue_overhead", "engine_overhead"}
    assert not [name for name, result in results.items() if "error" in result]
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["python"]

    bot = results["bot_overhead"]
    for row in bot["channels"] + bot["rate_sweep"]:
        # Every trigger got its reply, or a newer trigger in its channel took its place; the bot logged no error.
        assert row["replied"] + row["replaced"] == row["messages"] and row["lost"] == 0, row
        assert row["error_count"] == 0 and row["replied"] > 0 and row["emulator"] == "subprocess"

    prompt = results["prompt_bench"]
    assert prompt["build"] and all(r["prompt_tokens_mean"] <= 4096 - 300 for r in prompt["build"].values())
    for row in prompt["reuse"]:
        assert row["rpbot"]["turns_measured"] > 0 and row["rpbot"]["mean_reuse"] > row["naive"]["mean_reuse"]

    queue = results["queue_overhead"]
    assert {r["scheduler"] for r in queue["fairness"]} == {"rpbot", "fifo"}
    assert all(r["light_requests"] >= 1 for r in queue["fairness"])

    engine = results["engine_overhead"]
    assert engine["direct"]["tokens_per_run"] == engine["engine"]["tokens_per_run"] == 50

    table = (tmp_path / "summary.md").read_text()
    for figure in ("Bot overhead", "Prompt build", "Prefix reuse", "Queue cost", "worst wait", "llama.cpp engine"):
        assert figure in table
    assert "naive one-message trimmer" in table and "plain FIFO" in table and "llama-cpp-python directly" in table
