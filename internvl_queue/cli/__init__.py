"""The ``internvl-queue`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _cmd_up(args: argparse.Namespace) -> int:
    from .local_service import default_data_dir
    from .up import run_up

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    return run_up(args.host, args.port, data_dir, demo=args.demo)


def _cmd_api(args: argparse.Namespace) -> int:
    from ..core.settings import Settings
    from .serve_api import serve_api

    # Checked here, before gunicorn, so that bad settings end in one sentence (main), not in a
    # traceback from each gunicorn process.
    Settings.from_env()
    _configure_logging()
    serve_api(args.host, args.port, workers=args.workers, threads=args.threads)
    return 0


def _run_worker(app: Any, queue: str, name: str, loglevel: str, on_forced_stop: Any = None) -> int:
    """Run a Celery worker consuming ``queue`` only (several, comma-separated: taken in that
    order), without Celery's banner (our own start-up lines say what runs); its exit status.

    No gossip, mingle, worker heartbeat events or remote control (``queue.py``): workers share
    nothing but Redis, and those consumers are the ones that reconnect badly after a Redis
    restart. The worker exits with status 0 only when asked to stop (SIGTERM/SIGINT); one that
    stops for any other reason exits 1, so a supervisor restarts it. A second stop request stops
    at once: ``on_forced_stop`` runs first (the GPU worker hands its jobs back there).
    """
    from celery.exceptions import SecurityWarning

    from .worker_stop import StopRequests

    # Celery warns a root user because a root worker that accepts pickle runs whatever a message
    # carries; ours accept JSON only, so in containers and CI, where root is the norm, the
    # warning would only be noise at every start.
    warnings.filterwarnings(
        "ignore", message="You're running the worker with superuser", category=SecurityWarning
    )
    argv = [
        "--quiet",
        "worker",
        f"--loglevel={loglevel}",
        "-Q",
        queue,
        "--hostname",
        f"{name}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    stops = StopRequests(on_forced_stop).install()
    # app.start, not app.worker_main: worker_main drops the worker's exit status.
    code = app.start(argv) or 0
    return stops.exit_status(code)


def _cmd_worker(args: argparse.Namespace) -> int:
    if args.gpus is None and args.gpus_per_worker is not None:
        print(
            "internvl-queue worker: --gpus-per-worker needs --gpus (e.g. --gpus all "
            "--gpus-per-worker 2); a single worker spans its visible GPUs with "
            "INTERNVL_GPUS_PER_WORKER",
            file=sys.stderr,
        )
        return 2
    if args.gpus is not None:
        from ..core.settings import Settings
        from .gpu_workers import group_gpus, parse_gpus, run_gpu_workers

        try:
            # Without the flag, INTERNVL_GPUS_PER_WORKER groups them (compose's .env sets it).
            per_worker = args.gpus_per_worker or Settings.from_env().gpus_per_worker
            groups = group_gpus(parse_gpus(args.gpus), per_worker)
        except ValueError as exc:
            print(f"internvl-queue worker: {exc}", file=sys.stderr)
            return 2
        return run_gpu_workers(groups, args.loglevel)
    _configure_logging()
    # Importing the entry module reads the settings and registers the task and start-up hooks.
    from ..core.priority import lane_queues
    from ..worker.main import app, settings, stop_now

    # Every lane of its queue, the highest first: the order in which it takes messages.
    lanes = ",".join(lane_queues(settings.queue_name))
    return _run_worker(app, lanes, "internvl", args.loglevel, on_forced_stop=stop_now)


def _cmd_webhook_worker(args: argparse.Namespace) -> int:
    _configure_logging()
    # Importing the entry module reads the settings and registers the task and the pump hooks.
    from ..webhooks.main import app, settings

    return _run_worker(app, settings.webhook_queue, "internvl-webhooks", args.loglevel)


def _cmd_submit(args: argparse.Namespace) -> int:
    from .local_service import api_url
    from .submit import JobOptions, submit

    options = JobOptions(
        max_new_tokens=args.max_new_tokens,
        max_tiles=args.max_tiles,
        timeout_s=args.timeout,
        metadata=args.metadata,
        webhook_url=args.webhook_url,
        webhook_events=args.webhook_events,
        idempotency_key=args.idempotency_key,
    )
    return submit(
        (args.api or api_url()).rstrip("/"),
        [Path(p) for p in args.images],
        args.question,
        options,
        wait=args.wait,
        api_key=args.api_key,
    )


def _cmd_keys(args: argparse.Namespace) -> int:
    import redis

    from .keys import create_key, list_keys, open_store, revoke_key, where

    store = open_store()
    try:
        if args.keys_command == "create":
            return create_key(store, args.name)
        if args.keys_command == "list":
            return list_keys(store)
        return revoke_key(store, args.key_id)
    except redis.ConnectionError as exc:
        print(
            f"internvl-queue keys: cannot reach Redis at {where(store)} ({exc}); start the "
            "service (internvl-queue up) or set REDIS_URL to its Redis",
            file=sys.stderr,
        )
        return 1


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    return run_doctor()


def _cmd_healthcheck(args: argparse.Namespace) -> int:
    from .healthcheck import run_healthcheck

    return run_healthcheck(args.kind)


def _cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from ..testing.tiny_model import make_tiny_model

    path = make_tiny_model(Path(args.directory), seed=args.seed)
    print(path)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="internvl-queue",
        description="Asynchronous image-question service: Flask API, Redis, Celery GPU workers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser(
        "up", help="run Redis (unless REDIS_URL is set), the workers and the API"
    )
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument(
        "--data-dir",
        help="Redis's AOF, the service file, the development webhook secret, the demo model "
        "(default: $INTERNVL_DATA_DIR, else ~/.local/state/internvl-queue)",
    )
    up.add_argument(
        "--demo",
        action="store_true",
        help="serve the tiny random demo model (offline; built into the data dir on first use)",
    )
    up.set_defaults(func=_cmd_up)

    api = commands.add_parser("api", help="serve the HTTP API (gunicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=2, help="gunicorn processes")
    api.add_argument("--threads", type=int, default=8, help="threads per process")
    api.set_defaults(func=_cmd_api)

    worker = commands.add_parser("worker", help="run a GPU worker (Celery) with the model warm")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument(
        "--gpus",
        metavar="all|0,1,...",
        help="one worker process per GPU, each pinned to it (CUDA_VISIBLE_DEVICES)",
    )
    worker.add_argument(
        "--gpus-per-worker",
        type=int,
        metavar="N",
        help="with --gpus: one worker per group of N GPUs (in the order listed), the model "
        "loaded across its group (for a model larger than one GPU); default "
        "$INTERNVL_GPUS_PER_WORKER, else 1",
    )
    worker.set_defaults(func=_cmd_worker)

    webhooks = commands.add_parser(
        "webhook-worker", help="run a webhook worker (Celery): delivers signed job events"
    )
    webhooks.add_argument("--loglevel", default="INFO")
    webhooks.set_defaults(func=_cmd_webhook_worker)

    submit = commands.add_parser(
        "submit",
        help="submit images and a question to the API",
        description="Submit a job and print it (JSON), or with --wait print its answer. Exit "
        "status: 0 done, 1 refused / unreachable / job failed, 2 bad arguments, 3 --wait gave up.",
    )
    submit.add_argument("images", nargs="+", metavar="IMAGE")
    submit.add_argument("--question", "-q", required=True)
    submit.add_argument(
        "--api",
        metavar="URL",
        help="the API (default: $INTERNVL_API, else the running up's, else http://127.0.0.1:8000)",
    )
    submit.add_argument(
        "--api-key",
        default=os.environ.get("INTERNVL_API_KEY"),
        help="API key (default: $INTERNVL_API_KEY)",
    )
    submit.add_argument("--max-new-tokens", type=int, metavar="N", help="most tokens in the answer")
    submit.add_argument("--max-tiles", type=int, metavar="N", help="most 448-px tiles per image")
    submit.add_argument(
        "--timeout",
        type=int,
        metavar="SECONDS",
        help="the job's deadline from submission (timeout_s; default: the service's, 600)",
    )
    submit.add_argument("--metadata", metavar="JSON", help="a JSON object returned with the job")
    submit.add_argument("--webhook-url", metavar="URL", help="where the job's events are POSTed")
    submit.add_argument(
        "--webhook-events",
        metavar="EVENTS",
        help="comma-separated, some of job.started,job.succeeded,job.failed,job.canceled",
    )
    submit.add_argument(
        "--idempotency-key", metavar="KEY", help="makes a retried submit return the same job"
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait for the answer and print it; gives up 10 s after the job's deadline",
    )
    submit.set_defaults(func=_cmd_submit)

    keys = commands.add_parser(
        "keys",
        help="create, list and revoke API keys (in REDIS_URL, else the running up's Redis)",
    )
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser(
        "create", help="make a key; it is printed once, alone on the last line"
    )
    create.add_argument("--name", required=True, help="what the key is for (1-100 characters)")
    keys_commands.add_parser("list", help="every key: id, name, created, active or revoked")
    revoke = keys_commands.add_parser("revoke", help="revoke a key, effective at once")
    revoke.add_argument("key_id", metavar="KEY_ID")
    keys.set_defaults(func=_cmd_keys)

    health = commands.add_parser(
        "healthcheck",
        help="exit 0 if this host's worker (or webhook worker) is serving, else 1 (containers)",
    )
    health.add_argument(
        "kind",
        choices=["worker", "webhook-worker"],
        help="worker: a worker of this host has a live heartbeat in Redis; "
        "webhook-worker: Redis answers",
    )
    health.set_defaults(func=_cmd_healthcheck)

    doctor = commands.add_parser(
        "doctor",
        help="check whether a worker could start here: torch, GPUs, Redis, the model, disk "
        "(exit 0 if so, 1 if not)",
    )
    doctor.set_defaults(func=_cmd_doctor)

    tiny = commands.add_parser(
        "make-tiny-model", help="write a tiny random InternVL checkpoint (offline demo, tests)"
    )
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_cmd_make_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ..core.settings import SettingsError

    try:
        code: int = args.func(args)
    except SettingsError as exc:  # one sentence naming the variables, no traceback
        print(f"internvl-queue {args.command}: invalid settings: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
