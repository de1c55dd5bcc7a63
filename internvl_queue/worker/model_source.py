"""Where the worker's model comes from: ``INTERNVL_MODEL`` turned into something loadable, fast.

Three kinds of value:
- ``demo``: the tiny random checkpoint, built into the data directory the first time (offline);
- a local directory (a value that is an existing path, or looks like one: ``/``, ``.``, ``~``);
- a Hugging Face hub id. The hub is asked once, with a short timeout, before transformers is; a
  hub that cannot be reached falls back to the local cache, and a model that is neither reachable
  nor cached fails at once with one sentence, instead of minutes of download retries.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["DEMO_MODEL", "ModelUnavailable", "demo_dir", "resolve_model"]

log = logging.getLogger(__name__)

DEMO_MODEL = "demo"
_HUB_TIMEOUT_S = 10.0


class ModelUnavailable(Exception):
    """Raised when INTERNVL_MODEL cannot be loaded; the message is one sentence for the operator."""


_OFFLINE_OPTIONS = (
    "set INTERNVL_MODEL to a local checkpoint directory, download the model into the Hugging "
    "Face cache (HF_HOME) on a machine with network, or use INTERNVL_MODEL=demo (a tiny offline "
    "model)"
)


def resolve_model(model: str, data_dir: Path) -> str:
    """A path or hub id that transformers can load now; raises ``ModelUnavailable`` otherwise."""
    if model == DEMO_MODEL:
        return str(_demo_model(data_dir))
    path = Path(model).expanduser()
    if path.exists() or model.startswith(("/", ".", "~")):
        return str(_local_model(model, path))
    return _hub_model(model)


def demo_dir(data_dir: Path) -> Path:
    """Where the demo checkpoint is built (INTERNVL_MODEL=demo)."""
    return data_dir / "models" / DEMO_MODEL


def _demo_model(data_dir: Path) -> Path:
    from ..testing.tiny_model import make_tiny_model

    directory = demo_dir(data_dir)
    if not (directory / "config.json").is_file():
        log.info("building the demo model (tiny, random weights) in %s", directory)
        make_tiny_model(directory, seed=0)
    return directory


def _local_model(model: str, path: Path) -> Path:
    if not path.is_dir():
        raise ModelUnavailable(
            f"INTERNVL_MODEL={model} is not a directory: point it at a checkpoint directory "
            "(with config.json), a hub id, or use INTERNVL_MODEL=demo"
        )
    if not (path / "config.json").is_file():
        raise ModelUnavailable(
            f"INTERNVL_MODEL={model} has no config.json: it must be an -hf InternVL checkpoint "
            "directory (as save_pretrained writes it)"
        )
    return path.resolve()


def _hub_model(model: str) -> str:
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    def cached() -> str | None:
        try:
            return str(snapshot_download(model, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError, OSError):
            return None

    if constants.HF_HUB_OFFLINE:
        if (found := cached()) is not None:
            return found
        raise ModelUnavailable(
            f"INTERNVL_MODEL={model} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
            f"is set: {_OFFLINE_OPTIONS}"
        )
    try:
        HfApi().model_info(model, timeout=_HUB_TIMEOUT_S)
    except HFValidationError:
        raise ModelUnavailable(
            f"INTERNVL_MODEL={model} is neither a local directory nor a valid hub id "
            "(owner/name): fix INTERNVL_MODEL"
        ) from None
    except GatedRepoError:
        raise ModelUnavailable(
            f"INTERNVL_MODEL={model} is gated on the Hugging Face hub: accept its terms and set "
            "HF_TOKEN, or use a local copy"
        ) from None
    except RepositoryNotFoundError:
        raise ModelUnavailable(
            f"INTERNVL_MODEL={model}: no such model on the Hugging Face hub (or it is private: "
            "set HF_TOKEN); check the id"
        ) from None
    except Exception as exc:  # the network: DNS, refused, timed out, proxy, TLS
        if (found := cached()) is not None:
            log.warning("the hub is unreachable (%s); using the cached %s", exc, model)
            return found
        raise ModelUnavailable(
            f"INTERNVL_MODEL={model} cannot be downloaded (the Hugging Face hub is unreachable: "
            f"{exc}) and is not in the local cache: {_OFFLINE_OPTIONS}"
        ) from None
    return model
