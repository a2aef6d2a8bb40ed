"""What every benchmark script does with its results: write them as JSON where ``--json`` points."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    """Write ``results`` to ``path`` (its folder created); nothing when no path was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
