"""``internvl-queue doctor``: could a GPU worker start on this machine, and if not, why?

One line per check (OK, WARN or FAIL), then a one-sentence verdict; exit 0 when a worker could
start (the worker stack importable, its device usable, Redis reachable, the model resolvable),
1 otherwise. Each check is a function returning ``Check`` records; only ``run_doctor`` prints.
The whole run takes seconds, with or without network: every remote call has a short timeout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import TextIO

from ...core.settings import DEFAULT_MODEL, Settings
from ..local_service import default_data_dir, redis_target, running_service
from .disk import check_disk
from .gpu import check_device
from .model import check_model, hf_cache_dir, hub_offline
from .packages import check_packages
from .redis_check import check_redis_target, redis_source
from .report import Check, Level, exit_code, format_check, verdict
from .workers import check_workers

__all__ = ["run_doctor"]

_GiB = 1024**3


def _model_env() -> tuple[dict[str, str], str]:
    """(environment, where its model comes from). Without INTERNVL_MODEL, the model of the
    ``internvl-queue up`` running now (``service.json``) is the one a user means: ``up --demo``
    serves the demo, not the default."""
    env = dict(os.environ)
    if env.get("INTERNVL_MODEL"):
        return env, "INTERNVL_MODEL"
    service = running_service()
    if service is not None and service.model:
        env["INTERNVL_MODEL"] = service.model
        return env, f"the model of the internvl-queue up running as pid {service.pid}"
    return env, "the default; set INTERNVL_MODEL to check another"


def _settings_checks(env: Mapping[str, str]) -> tuple[list[Check], str, str, int]:
    """(checks, model, device, GPUs per worker). Invalid settings are a FAIL, and the rest is
    still checked."""
    try:
        settings = Settings.from_env(env)
    except ValueError as exc:
        device = env.get("INTERNVL_DEVICE") or "auto"
        model = env.get("INTERNVL_MODEL") or DEFAULT_MODEL
        failed = Check("settings", Level.FAIL, f"{exc}: a worker refuses to start with it")
        return [failed], model, device if device in ("auto", "cpu", "cuda") else "auto", 1
    return [], settings.model, settings.device, settings.gpus_per_worker


def run_doctor(out: TextIO = sys.stdout) -> int:
    checks: list[Check] = []

    def report(found: list[Check]) -> None:
        # Printed as each check finishes, so that a slow one (the hub) shows where it waits.
        for check in found:
            print(format_check(check), file=out, flush=True)
        checks.extend(found)

    env, model_source = _model_env()
    settings_checks, model, device, gpus_per_worker = _settings_checks(env)
    report(settings_checks)
    report(check_packages())
    device_report = check_device(device, gpus_per_worker)
    report(device_report.checks)
    try:
        report(check_redis_target(redis_target(), redis_source()))
        report(check_workers(redis_target()))
    except ValueError as exc:  # the settings check has said it too; Redis cannot be checked
        report([Check("Redis", Level.FAIL, f"{exc}: fix it to check Redis")])
    model_report = check_model(model, data_dir=default_data_dir(), offline=hub_offline())
    checked = model_report.check
    report([replace(checked, detail=f"{checked.detail} ({model_source})")])
    need = model_report.download_bytes
    report(
        [
            check_disk("model cache", hf_cache_dir(), need_bytes=need, warn_below=5 * _GiB),
            check_disk("data dir", default_data_dir()),
        ]
    )
    print(verdict(checks, device_report.runs_on), file=out)
    return exit_code(checks)
