"""Run the bot as a real process (``python -m bot run``) against the emulator in the test process.

Both processes share one SQLite file, so tests read the store the bot writes. ``start()`` returns once /healthz
says the bot is connected, its database reachable and its engine ready.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.discord_emulator import DiscordEmulator

ROOT = Path(__file__).resolve().parents[2]  # tests/support/ -> the project root
START_TIMEOUT = 90.0  # importing discord.py, loading the model, connecting: slow on a busy CI machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BotProcess:
    process: asyncio.subprocess.Process
    log_path: Path
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def errors(self) -> list[str]:
        """ERROR and CRITICAL lines, and tracebacks, in the bot's log."""
        return [
            line
            for line in self.log().splitlines()
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
        ]

    def rss_kib(self) -> tuple[int, int]:
        """(current, peak) resident memory of the process in KiB, from /proc."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def health(self) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(f"http://127.0.0.1:{self.metrics_port}/healthz") as response,
        ):
            return response.status, await response.json()

    async def until(self, check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
        """Poll ``check`` until truthy; fail with the bot's log if the process dies or time runs out."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.process.returncode is not None:
                pytest.fail(f"rpbot exited ({self.process.returncode}) while waiting for {what}:\n{self.log()[-4000:]}")
            try:
                value = await check()
            except (aiohttp.ClientError, OSError):
                value = None
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.log()[-4000:]}")
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs."""
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), timeout)
        return self.process.returncode or 0


async def start_bot(
    emu: DiscordEmulator,
    database_url: str,
    workdir: Path,
    *,
    module: str = "bot",
    env: dict[str, str] | None = None,
    name: str = "rpbot",
) -> BotProcess:
    """Start ``python -m <module> run`` with the emulator's URLs and wait until it is healthy."""
    port = free_port()
    values = {k: v for k, v in os.environ.items() if not k.startswith("RPBOT_")}
    values.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        RPBOT_DISCORD_TOKEN=emu.token,
        RPBOT_DISCORD_API_URL=emu.api_url,
        RPBOT_DISCORD_GATEWAY_URL=emu.gateway_url,
        RPBOT_DATABASE_URL=database_url,
        RPBOT_METRICS_PORT=str(port),
        RPBOT_STREAM_EDIT_INTERVAL="0.2",
        RPBOT_SHUTDOWN_GRACE_SECONDS="5",
    )
    values.update(env or {})
    log_path = workdir / f"{name}-{port}.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "--env-file", str(workdir / "absent.env"), "run",
            stdout=log_file, stderr=asyncio.subprocess.STDOUT, env=values, cwd=workdir,
        )  # fmt: skip
    bot = BotProcess(process, log_path, port)

    async def healthy() -> bool:
        return (await bot.health())[0] == 200

    await bot.until(healthy, "rpbot to report healthy", START_TIMEOUT)
    return bot
