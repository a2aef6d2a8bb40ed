"""The deployment files agree with the code: docker-compose.yml, Dockerfile, .env.example, README and docs.

Docker cannot run here, so these parse the files and check what `docker compose up` relies on: the services, the GPU
reservation, volumes, the healthcheck against /healthz, the postgres profile, and that every RPBOT_* name anyone is
told to set is a real setting (and every setting is documented).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
ENV_NAME = re.compile(r"\bRPBOT_[A-Z0-9_]+\b")
SETTING_NAMES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _seconds(duration: str) -> float:
    """A compose duration such as ``40s``, ``1m30s`` or ``5m`` in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _stages(dockerfile: str) -> list[str]:
    """The FROM line of each build stage, ARG defaults substituted."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile, re.M))
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image) for image in froms]


def test_compose_is_valid_yaml_with_the_bot_and_postgres_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"bot", "postgres"}
    assert set(compose["volumes"]) >= {"rpbot-data", "pgdata"}
    bot = compose["services"]["bot"]
    assert bot["build"] == "." and (ROOT / "Dockerfile").is_file()
    assert bot["env_file"] == ".env"
    assert bot["restart"] == "unless-stopped"
    assert "profiles" not in bot, "the bot must start with a plain `docker compose up`"


def test_the_bot_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    devices = compose["services"]["bot"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and d.get("count", 1) >= 1 for d in devices)


def test_data_is_a_volume_and_models_are_mounted_read_only(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["bot"]["volumes"]
    assert "rpbot-data:/data" in volumes
    models = [v for v in volumes if v.split(":")[1:2] == ["/models"]]
    assert models and models[0].endswith(":ro"), f"the models folder must be read-only: {volumes}"
    # The default database lives on that volume.
    assert "RPBOT_DATABASE_URL=sqlite+aiosqlite:////data/" in _dockerfile()


def test_the_healthcheck_probes_healthz_on_the_metrics_port(compose: dict[str, Any]) -> None:
    bot = compose["services"]["bot"]
    env = _env(bot)
    port = env["RPBOT_METRICS_PORT"]
    assert Settings(_env_file=None, metrics_port=port, metrics_host=env["RPBOT_METRICS_HOST"]).metrics_port > 0
    probe = " ".join(bot["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in probe
    assert env["RPBOT_METRICS_HOST"] == "0.0.0.0", "inside a container the endpoint must listen beyond loopback"
    assert any(str(p).endswith(f":{port}:{port}") and str(p).startswith("127.0.0.1:") for p in bot["ports"])
    # Loading a model takes a while; a probe failing meanwhile must not count.
    assert _seconds(bot["healthcheck"]["start_period"]) >= 60
    assert f"127.0.0.1:{port}/healthz" in _dockerfile()


def test_docker_waits_longer_than_the_shutdown_grace_period(compose: dict[str, Any]) -> None:
    grace = Settings.model_fields["shutdown_grace_seconds"].default
    assert _seconds(compose["services"]["bot"]["stop_grace_period"]) >= grace + 10


def test_the_postgres_profile_runs_the_official_image_on_a_volume(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    assert pg["profiles"] == ["postgres"]
    assert re.fullmatch(r"postgres:\d+(\.\d+)?", pg["image"])
    assert "pgdata:/var/lib/postgresql/data" in pg["volumes"]
    env = _env(pg)
    assert env["POSTGRES_USER"] == "rpbot" and env["POSTGRES_DB"] == "rpbot"
    assert "POSTGRES_PASSWORD" in env and "change-me" not in env["POSTGRES_PASSWORD"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    depends = compose["services"]["bot"]["depends_on"]["postgres"]
    assert depends == {"condition": "service_healthy", "required": False}


def test_the_documented_postgres_url_is_a_valid_setting_pointing_at_the_service() -> None:
    readme = (ROOT / "README.md").read_text()
    urls = re.findall(r"RPBOT_DATABASE_URL=(postgresql\+asyncpg://\S+?@postgres:5432/rpbot)", readme)
    assert urls, "README must say how to point the bot at the compose postgres service"
    settings = Settings(_env_file=None, database_url=urls[0].replace("<password>", "secret"))
    assert settings.database_url.startswith("postgresql+asyncpg://rpbot:secret@postgres:5432/")
    assert "--profile postgres" in readme


def test_the_image_runs_as_a_user_on_a_cuda_runtime_base() -> None:
    dockerfile = _dockerfile()
    stages = _stages(dockerfile)
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-devel-ubuntu\d+\.\d+", stages[0].split(" ")[0])
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", stages[-1])
    # Ubuntu 24.04 images exist from CUDA 12.5 on (and 22.04's Python 3.10 is too old for rpbot).
    cuda, ubuntu = re.match(r"nvidia/cuda:(\d+\.\d+)\.\d+-runtime-ubuntu(\S+)", stages[-1]).groups()  # type: ignore[union-attr]
    assert ubuntu == "24.04" and tuple(map(int, cuda.split("."))) >= (12, 5)
    torch_index = re.search(r"^ARG TORCH_INDEX_URL=\S+/cu(\d+)$", dockerfile, re.M)
    assert torch_index and torch_index.group(1) == cuda.replace(".", ""), "torch's CUDA must match the toolkit"
    assert re.search(r"^ARG WITH_FLASH_ATTN=0$", dockerfile, re.M), "flash-attn is optional, off by default"
    assert 'pip install ".[gpu,postgres]"' in dockerfile
    final = dockerfile[dockerfile.rindex("\nFROM ") :]
    users = re.findall(r"^USER (\S+)", final, re.M)
    assert users and users[-1] not in ("root", "0")
    assert 'VOLUME ["/data"]' in final and "chown rpbot /data" in final
    assert re.search(r'^CMD \["run"\]', final, re.M) and re.search(r'^ENTRYPOINT \["rpbot"\]', final, re.M)


def test_secrets_and_local_data_stay_out_of_the_image() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", "data", "models", ".git", ".venv"} <= ignored


@pytest.mark.parametrize("path", ["docker-compose.yml", "Dockerfile", ".env.example", "README.md", "docs/SCALING.md"])
def test_every_rpbot_name_mentioned_is_a_setting(path: str) -> None:
    # RPBOT_TEST_* configure the test suite (scripts/test_postgres.sh), not the bot.
    names = {n for n in ENV_NAME.findall((ROOT / path).read_text()) if not n.startswith("RPBOT_TEST_")}
    unknown = sorted(names - SETTING_NAMES)
    assert not unknown, f"{path} names settings that do not exist: {unknown}"


def test_the_readme_configuration_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    rows = [line for line in section.splitlines() if line.startswith("| `RPBOT_")]
    documented = {name for row in rows for name in ENV_NAME.findall(row.split("|")[1])}
    missing = sorted(SETTING_NAMES - documented)
    assert not missing, f"README's configuration table does not document: {missing}"
    assert not documented - SETTING_NAMES


def test_env_example_values_are_valid_settings(tmp_path: Path) -> None:
    """Uncommented lines of .env.example load (with a model path that exists, as a user's would)."""
    lines = [
        line
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith("RPBOT_MODEL_PATH=")
    ]
    env = tmp_path / ".env"
    env.write_text("\n".join(lines) + "\n")
    settings = Settings(_env_file=env)  # type: ignore[call-arg]
    assert settings.engine.value == "exllamav2"
