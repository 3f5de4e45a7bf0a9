"""The `surge` command: serve, models, check, build-demo, and the rollout operations."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from surge.cli_keys import add_commands as add_key_commands
from surge.cli_receipts import add_commands as add_receipt_commands
from surge.cli_rollouts import add_commands as add_rollout_commands
from surge.config import (
    Config,
    ConfigError,
    demo_repository_from_env,
    export_for_workers,
    load_config,
)
from surge.observe.logs import configure_logging


def _load(path: str | None) -> Config:
    config = load_config(Path(path) if path else None)
    if path is None:
        config.model_repository = demo_repository_from_env()
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from surge.api.app import create_app

    config = _load(args.config)
    server = config.server
    if args.host:
        server.host = args.host
    if args.port is not None:
        server.port = args.port
    if args.workers:
        server.workers = args.workers
    configure_logging(server.log_level, config.observability.logs.format)
    if args.config is None:
        from surge.demo.build import ensure_demo_models
        from surge.llm.tiny_model import build_tiny_chat_model

        ensure_demo_models(config.model_repository)
        for model in config.llm.models.values():  # the demo's tiny-chat
            for backend in model.backends:
                if backend.local is not None:
                    build_tiny_chat_model(backend.local.path)
    # uvicorn re-raises the signal it shut down on; exiting 0 on it makes SIGTERM a clean stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    common = {
        "host": server.host,
        "port": server.port,
        "log_level": server.log_level,
        "access_log": server.access_log,
        "timeout_graceful_shutdown": server.shutdown_grace_s,
        "lifespan": "on",
        # uvicorn's own lines go through surge's handler (JSON by default), not its own.
        "log_config": None,
    }
    if server.workers == 1:
        uvicorn.run(create_app(config), **common)
    else:
        # Each worker process builds its own app from the same config file.
        export_for_workers(Path(args.config) if args.config else None, config)
        uvicorn.run("surge.api.app:app_from_env", factory=True, workers=server.workers, **common)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import httpx

    from surge.repository import ModelRepository

    config = _load(args.config)
    base = f"http://{config.server.host}:{config.server.port}"
    serving: dict[tuple[str, str], str] = {}
    for name, endpoint in config.endpoints.items():
        # A running server may serve other versions than the config names (rollouts).
        versions = [endpoint.version]
        try:
            answer = httpx.get(f"{base}/v2/models/{name}", timeout=1.0)
            if answer.status_code == 200:
                versions = answer.json()["versions"]
        except httpx.HTTPError:
            pass
        serving.update({(config.model_of(name), v): name for v in versions})
    print(f"repository: {config.model_repository}")
    print(f"{'MODEL':<12} {'VERSION':<8} {'RUNTIME':<11} {'ENDPOINT':<12} STATE")
    for version in ModelRepository(config.model_repository).list():
        endpoint = serving.get((version.model, version.version))
        state = "not configured"
        if endpoint:
            try:
                url = f"{base}/v2/models/{endpoint}/versions/{version.version}/ready"
                state = "ready" if httpx.get(url, timeout=1.0).status_code == 200 else "not ready"
            except httpx.HTTPError:
                state = "server not running"
        print(
            f"{version.model:<12} {version.version:<8} {version.manifest.runtime:<11} "
            f"{endpoint or '-':<12} {state}"
        )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from surge.repository import ModelRepository

    config = load_config(Path(args.file))
    repository = ModelRepository(config.model_repository)
    problems = []
    for name, endpoint in config.endpoints.items():
        model = config.model_of(name)
        if not (repository.root / model / endpoint.version / "model.yaml").exists():
            problems.append(
                f"  endpoints.{name}: {model}/{endpoint.version} is not in {repository.root}"
            )
    if problems:
        print(f"{args.file}: {len(problems)} problem(s)\n" + "\n".join(problems), file=sys.stderr)
        return 1
    print(f"{args.file}: ok ({len(config.endpoints)} endpoint(s))")
    return 0


def cmd_build_demo(args: argparse.Namespace) -> int:
    from surge.demo.build import ensure_demo_models

    logging.basicConfig(level="INFO", format="%(message)s")
    ensure_demo_models(demo_repository_from_env())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="surge", description="surge inference server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a config (default: the built-in demo)")
    serve.add_argument("--config", help="YAML config file")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)
    models = sub.add_parser("models", help="list the model repository and what serves")
    models.add_argument("--config")
    models.set_defaults(func=cmd_models)
    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check)
    build = sub.add_parser("build-demo", help="build the demo models now")
    build.set_defaults(func=cmd_build_demo)
    add_rollout_commands(sub)
    add_receipt_commands(sub)
    add_key_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
