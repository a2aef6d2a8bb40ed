"""Helpers for the operations tests: free ports and scraping the metrics endpoint over real HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Scrape:
    """One /metrics scrape, parsed with prometheus_client's own parser."""

    families: dict[str, Any]

    def value(self, sample: str, **labels: str) -> float:
        """The value of one sample (e.g. ``rpbot_replies_total`` with ``outcome="ok"``); 0 when absent."""
        for family in self.families.values():
            for s in family.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0


async def scrape(http: aiohttp.ClientSession, port: int) -> Scrape:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    return Scrape({family.name: family for family in text_string_to_metric_families(text)})


async def health(http: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
        return response.status, await response.json()
