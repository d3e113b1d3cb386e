"""Start localstripe bound to loopback only, from scratch, without its pickle dump.

Usage: python -m devtools.localstripe_server --port 8420
localstripe's own `start()` binds to all interfaces and persists to /tmp/localstripe.pickle
after every write; neither suits tests or the demo.
"""

from __future__ import annotations

import argparse
import logging

from aiohttp import web
from localstripe import resources, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8420)
    args = parser.parse_args()
    if args.host not in {"127.0.0.1", "localhost", "::1"}:
        parser.error("localstripe is only ever bound to loopback")
    resources.Store.dump_to_disk = lambda self: None  # keep state in memory only
    logging.basicConfig(level=logging.WARNING)
    print(f"localstripe listening on http://{args.host}:{args.port}", flush=True)
    web.run_app(server.app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
