"""scripts/gpu_smoke.py and bench/gpu_bench.py end to end on CPU: real queue, real tiny model files, and the
stand-in exllamav2 (so the GPU session that runs them for real does not spend its minutes on a script bug)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("bot.generation.queue", reason="the scripts drive the GenerationQueue")

from tests.generation import test_exllamav2_fake as fake

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def smoke(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.delitem(sys.modules, "gpu_smoke", raising=False)
    module = load_script("gpu_smoke", ROOT / "scripts" / "gpu_smoke.py")
    monkeypatch.setitem(sys.modules, "gpu_smoke", module)
    return module


@pytest.fixture
def gpu_bench(smoke: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.delitem(sys.modules, "gpu_bench", raising=False)
    return load_script("gpu_bench", ROOT / "bench" / "gpu_bench.py")


@pytest.mark.parametrize("paged", [True, False])
def test_smoke_passes_on_the_tiny_model(
    smoke: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], paged: bool
) -> None:
    fake.install(monkeypatch, paged=paged)
    out = tmp_path / "smoke.json"
    code = smoke.main(["--workdir", str(tmp_path), "--max-new-tokens", "64", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out.read_text())
    assert report["passed"] and report["tiny_random_model"]
    assert report["engine"]["paged"] is paged
    assert report["engine"]["capacity"] == (8 if paged else 1)
    assert all(verdict.startswith("ok") for verdict in report["checks"].values())
    labels = [run["label"] for run in report["runs"]]
    assert labels == ["warm-up", "1 stream", "4 concurrent streams", "4 streams, one cancelled", "after cancel"]
    cancelled = report["runs"][3]["per_stream"][1]
    assert cancelled["outcome"] == "cancelled" and cancelled["chunks"] == 3
    assert report["runs"][2]["tokens"] == 4 * 64
    assert "RESULT: PASS" in printed and "total t/s" in printed
    # The tiny model folder was really built and loaded from.
    assert (tmp_path / "tiny-llama" / "model.safetensors").stat().st_size > 1_000_000
    assert fake.state().configs[0].model_dir == str(tmp_path / "tiny-llama")


def test_smoke_fails_when_streams_end_too_early(
    smoke: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = fake.install(monkeypatch)
    state.pieces = ["Hi", fake.EOS]  # every reply ends after one chunk: nothing to cancel mid-stream
    out = tmp_path / "smoke.json"
    assert smoke.main(["--workdir", str(tmp_path), "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert not report["passed"]
    assert report["checks"]["cancel: the cancelled stream ended as cancelled"].startswith("failed")
    assert "RESULT: FAIL" in capsys.readouterr().out


def test_smoke_reports_an_engine_that_cannot_start(
    smoke: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.install(monkeypatch)
    out = tmp_path / "smoke.json"
    assert smoke.main(["--model", str(tmp_path / "nowhere"), "--json", str(out)]) == 2
    assert "does not exist" in json.loads(out.read_text())["error"]
    assert "could not start" in capsys.readouterr().err


def test_smoke_rejects_arguments_that_cannot_test_cancelling(smoke: ModuleType) -> None:
    with pytest.raises(SystemExit):
        smoke.parse_args(["--streams", "1"])
    with pytest.raises(SystemExit):
        smoke.parse_args(["--max-new-tokens", "8"])


def test_pip_cuda_headers_are_added_when_the_toolkit_lacks_them(
    smoke: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    include = tmp_path / "site" / "nvidia" / "cu13" / "include"
    include.mkdir(parents=True)
    (include / "cublas_v2.h").write_text("")
    (include / "cusparse.h").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "nvidia", raising=False)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    monkeypatch.setenv("CPATH", "/already/there")
    monkeypatch.delenv("NVCC_APPEND_FLAGS", raising=False)
    assert smoke.add_pip_cuda_headers() == [str(include)]
    assert smoke.os.environ["CPATH"].split(smoke.os.pathsep) == [str(include), "/already/there"]
    assert smoke.os.environ["NVCC_APPEND_FLAGS"] == f"-I{include}"
    # With the headers in the toolkit nothing changes.
    (tmp_path / "cuda" / "include").mkdir(parents=True)
    (tmp_path / "cuda" / "include" / "cublas_v2.h").write_text("")
    assert smoke.add_pip_cuda_headers() == []


def test_bench_compares_concurrent_and_sequential(
    gpu_bench: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.install(monkeypatch)
    out = tmp_path / "bench.json"
    argv = ["--workdir", str(tmp_path), "--levels", "1,4", "--max-new-tokens", "32", "--prompt-tokens", "64"]
    assert gpu_bench.main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["channels"] for row in report["levels"]] == [1, 4]
    for row in report["levels"]:
        assert row["concurrent"]["concurrent"] is True and row["sequential"]["concurrent"] is False
        assert row["concurrent"]["tokens"] == row["sequential"]["tokens"] == 32 * row["channels"]
        assert row["speedup"] is not None and row["speedup"] > 0
    assert report["engine"]["max_batch_size"] == 4  # the largest level
    assert "speedup" in capsys.readouterr().out


def test_bench_levels_are_validated(gpu_bench: ModuleType) -> None:
    assert gpu_bench.parse_levels("16, 1,4") == [1, 4, 16]
    for bad in ("", "0,4", "one"):
        with pytest.raises(Exception, match=r"levels|comma-separated"):
            gpu_bench.parse_levels(bad)
