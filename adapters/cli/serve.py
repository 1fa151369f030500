"""`galley serve`: the Tinker API on galley's adapters (``galley.adapters.serve``)."""

from __future__ import annotations

import argparse
import math
import os
import socket
from pathlib import Path

from rich.console import Console

from galley.adapters.cli.run_config import load_run_config
from galley.adapters.composition import build_adapters
from galley.core.errors import ConfigError


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    try:
        from galley.adapters.serve import ServeLimits, TinkerService, create_app, key_ring
        from galley.adapters.serve.keys import LOOPBACK
        from galley.adapters.serve.server import serve_forever
    except ImportError as e:
        raise ConfigError(
            f"galley serve needs its extra ({e.name} is missing): pip install 'galley[serve]'"
        ) from None
    keys = key_ring(args.api_key or os.environ.get("GALLEY_API_KEY"), args.keys_file)
    if keys.open and args.host not in LOOPBACK:
        raise ConfigError(
            f"with no API key configured galley serve binds loopback only, not {args.host!r}: "
            "give --api-key (or GALLEY_API_KEY, or --keys-file) to serve other hosts"
        )
    if not (math.isfinite(args.session_timeout) and args.session_timeout > 0):
        raise ConfigError(
            f"--session-timeout: expected a positive number of seconds, got {args.session_timeout}"
        )
    check_can_listen(args.host, args.port)
    run_config = load_run_config("sft", args.config, args.set, args.adapters)
    adapters = build_adapters(run_config.adapters)
    models = tuple(args.model or [run_config.config.base_model])
    limits = ServeLimits(session_timeout_s=args.session_timeout)
    service = TinkerService(adapters, root=args.root, models=models, limits=limits)
    kinds = ", ".join(f"{port}={c.kind}" for port, c in run_config.adapters.items())
    console.print(f"galley serve: http://{args.host}:{args.port} (models: {', '.join(models)})")
    console.print(f"adapters: {kinds}; checkpoints under {args.root}/<tenant>/ in the blob store")
    if keys.open:
        console.print("no API key configured: loopback only, any tml- key accepted")
    else:
        console.print(f"{len(keys.tenants)} API key(s) configured; other requests get 401")
    serve_forever(create_app(service, keys), args.host, args.port)
    return 0


def check_can_listen(host: str, port: int) -> None:
    """Refuse a host that does not resolve or a port already in use before anything starts
    (the server itself would only exit with its own code once the adapters were built)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--host {host!r} does not resolve to an address: {e}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(address)
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return port


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve the Tinker API for the tinker SDK")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--api-key", help="the one key clients must send (default: GALLEY_API_KEY)")
    p.add_argument("--keys-file", type=Path, help="TOML or JSON: each key -> its tenant")
    p.add_argument("--config", type=Path, help="TOML file with an [adapters] table")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="e.g. adapters.training=noop (repeatable)",
    )
    p.add_argument("--adapters", metavar="KIND", help="use this adapter kind for every port")
    p.add_argument("--model", action="append", help="a base model to advertise (repeatable)")
    p.add_argument(
        "--root",
        default="runs/serve",
        help="blob-store folder for the sessions' checkpoints (beside galley's runs)",
    )
    p.add_argument(
        "--session-timeout",
        type=float,
        default=120.0,
        help="seconds without a heartbeat before a session's models are freed",
    )
    p.set_defaults(handler=cmd_serve)
