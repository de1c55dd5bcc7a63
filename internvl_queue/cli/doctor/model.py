"""Could a worker load ``INTERNVL_MODEL`` here: a local checkpoint, the demo, or a hub id that is
cached or downloadable?

Without network the hub is asked once, with a short timeout, in a thread we stop waiting for: DNS
lookups are not bound by socket timeouts, and the doctor must answer in seconds either way.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...worker.model_source import DEMO_MODEL, demo_dir
from .packages import WORKER_EXTRA
from .report import Check, Level, human_bytes

__all__ = ["ModelReport", "check_model", "hf_cache_dir", "hub_offline"]

# A hub id is "name" or "owner/name"; anything else that is not a directory is a missing path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class ModelReport:
    check: Check
    download_bytes: int  # what the first start still has to download into the cache


def hf_cache_dir() -> Path:
    """Where the Hugging Face hub cache lives (HF_HUB_CACHE, else HF_HOME/hub)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # the base install: same rules as huggingface_hub's
        home = os.environ.get("HF_HOME") or str(
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
        )
        return Path(os.environ.get("HF_HUB_CACHE", Path(home) / "hub")).expanduser()
    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    raw = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return raw.upper() in _TRUE


def check_model(
    model: str, *, data_dir: Path, offline: bool, hub_timeout_s: float = 3.5
) -> ModelReport:
    if model == DEMO_MODEL:
        built = demo_dir(data_dir)
        if (built / "config.json").is_file():
            return _ok(f"demo: the tiny random checkpoint in {built}, {human_bytes(_size(built))}")
        return _ok(f"demo: the tiny random checkpoint is built on first start, into {built}")
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelReport(_local_checkpoint(model, path), 0)
    if not _HUB_ID.match(model):
        return _fail(
            f"INTERNVL_MODEL={model}: no such directory; point it at an -hf InternVL checkpoint "
            "directory or a hub id, or use INTERNVL_MODEL=demo"
        )
    return _hub_model(model, offline, hub_timeout_s)


def _offline_options(model: str) -> str:
    return (
        "point INTERNVL_MODEL at a local checkpoint directory, use INTERNVL_MODEL=demo, or "
        f"download it beforehand into HF_HOME (hf download {model})"
    )


def _local_checkpoint(model: str, path: Path) -> Check:
    if not (path / "config.json").is_file():
        return Check(
            "model",
            Level.FAIL,
            f"INTERNVL_MODEL={model}: the directory has no config.json, so it is no checkpoint; "
            "point it at an -hf InternVL checkpoint or use INTERNVL_MODEL=demo",
        )
    missing = _missing_weights(path)
    if missing:
        return Check("model", Level.FAIL, f"INTERNVL_MODEL={model}: {missing}")
    return Check("model", Level.OK, f"local directory {path.resolve()}, {human_bytes(_size(path))}")


def _missing_weights(snapshot: Path) -> str | None:
    """What is missing for transformers to load the weights, or None."""
    for index in snapshot.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return f"{index.name} is unreadable"
        absent = sorted(s for s in shards if not (snapshot / s).is_file())
        if absent:
            return (
                f"{len(absent)} weight shard(s) missing ({absent[0]}...): an interrupted download?"
            )
        return None
    if any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin")):
        return None
    return "config.json but no weights (*.safetensors)"


def _hub_model(model: str, offline: bool, timeout_s: float) -> ModelReport:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return _fail(
            f"INTERNVL_MODEL={model} is not a local directory, and resolving a hub id needs "
            f"huggingface_hub, from the worker extra: {WORKER_EXTRA}"
        )
    cache = hf_cache_dir()
    config = try_to_load_from_cache(model, "config.json")
    if isinstance(config, str):
        snapshot = Path(config).parent
        if _missing_weights(snapshot) is None:
            return _ok(
                f"{model}: in the Hugging Face cache ({cache}), {human_bytes(_size(snapshot))}"
            )
    if offline:
        return _fail(
            f"INTERNVL_MODEL={model} is neither a local directory nor complete in the Hugging Face "
            f"cache ({cache}), and HF_HUB_OFFLINE=1 forbids downloading it: "
            + _offline_options(model)
        )
    return _ask_hub(model, cache, timeout_s)


def _ask_hub(model: str, cache: Path, timeout_s: float) -> ModelReport:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    outcome: list[Any] = []

    def ask() -> None:
        try:
            outcome.append(HfApi().model_info(model, files_metadata=True, timeout=timeout_s))
        except Exception as exc:
            outcome.append(exc)

    asking = threading.Thread(target=ask, name="doctor-hub", daemon=True)
    asking.start()
    # huggingface_hub retries a timed-out request once. A thread still running past both tries
    # (a hung DNS lookup) is left behind: it is a daemon, and we stop waiting for it.
    deadline_s = 2 * timeout_s + 1
    asking.join(deadline_s)
    found = outcome[0] if outcome else TimeoutError(f"no answer within {deadline_s:.0f} s")
    if isinstance(found, GatedRepoError):
        return _fail(
            f"INTERNVL_MODEL={model} is gated on the hub: accept its terms on the model's page "
            "and set HF_TOKEN"
        )
    if isinstance(found, RepositoryNotFoundError):
        return _fail(
            f"INTERNVL_MODEL={model} is neither a local directory nor a model on the hub "
            f"({constants.ENDPOINT}) (a private one needs HF_TOKEN)"
        )
    if isinstance(found, Exception):
        reason = str(found) or type(found).__name__
        return _fail(
            f"INTERNVL_MODEL={model} is neither a local directory nor in the Hugging Face cache "
            f"({cache}), and the hub ({constants.ENDPOINT}) did not answer ({reason}); without "
            "network, " + _offline_options(model)
        )
    size = sum(sibling.size or 0 for sibling in found.siblings or [])
    return ModelReport(
        Check(
            "model",
            Level.OK,
            f"{model}: on the hub, {human_bytes(size)} downloaded into {cache} on first start",
        ),
        size,
    )


def _size(directory: Path) -> int:
    """Bytes on disk, following the cache's snapshot symlinks to their blobs."""
    total = 0
    for file in directory.rglob("*"):
        try:
            if file.is_file():
                total += file.stat().st_size
        except OSError:
            continue  # a dangling link: counts for nothing
    return total


def _ok(detail: str) -> ModelReport:
    return ModelReport(Check("model", Level.OK, detail), 0)


def _fail(detail: str) -> ModelReport:
    return ModelReport(Check("model", Level.FAIL, detail), 0)
