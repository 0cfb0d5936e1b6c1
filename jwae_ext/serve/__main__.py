"""``python -m jwae_ext.serve INDEX [INDEX ...]``: the search page and its JSON API on
http://127.0.0.1:8000/ (see docs/serve.md). Ctrl-C or SIGTERM stops it cleanly."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import signal
import socket
import sys

import uvicorn

from jwae_ext.ops.kernels import add_kernels_option
from jwae_ext.search import Index
from jwae_ext.serve.app import create_app

LOOPBACK_NAMES = ("localhost", "127.0.0.1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jwae_ext.serve", description=__doc__)
    p.add_argument("index", nargs="+", help="an index folder, or the shards of one collection")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this computer only)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=10.0,
        help="largest request body, query images included, in MiB (default 10)",
    )
    add_kernels_option(p)
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in 0..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        p.error(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    return args


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        index = Index.open(args.index)
    except (OSError, ValueError) as err:
        print(f"jwae_ext.serve: cannot open the index: {err}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        sock = socket.create_server((args.host, args.port), family=family)
    except OSError as err:
        print(f"jwae_ext.serve: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    loopback = is_loopback(args.host)
    if not loopback:
        print(
            f"jwae_ext.serve: WARNING: listening on {args.host}: the collection (its images and "
            "captions) becomes visible to the network",
            file=sys.stderr,
        )
    # Host headers other than loopback names are refused on loopback (DNS rebinding).
    hosts = LOOPBACK_NAMES if loopback and family == socket.AF_INET else None
    app = create_app(index, max_upload_bytes=int(args.max_upload_mb * 2**20), allowed_hosts=hosts)
    port = sock.getsockname()[1]
    url = f"http://{f'[{args.host}]' if family == socket.AF_INET6 else args.host}:{port}/"
    info = index.info
    print(
        f"jwae_ext.serve: {info['images']} images, run {info.get('run')} "
        f"({info.get('variant')}): {url}  (Ctrl-C stops)",
        flush=True,
    )
    # SIGTERM ends it like Ctrl-C: uvicorn finishes the requests in flight, then re-raises.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    print("jwae_ext.serve: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
