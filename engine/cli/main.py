"""The ``inferis`` command: up, worker, demo, load-library and model management.

Every failure is one line on stderr, ``error: CODE message``, and exit status 1
(2 for a command line argparse refuses); never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import redis

from inferis.client.protocol.errors import InferisError

from ..config import ConfigError
from . import acl, keys, models, regions, retention, serve

log = logging.getLogger("inferis")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferis", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_commands(sub, common)
    models.add_commands(sub, common)
    keys.add_commands(sub, common)
    acl.add_commands(sub, common)
    retention.add_commands(sub, common)
    regions.add_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(ns.log_level).upper(), logging.INFO),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    try:
        return int(ns.handler(ns))
    except InferisError as exc:
        return _error(exc.code, exc.message)
    except ConfigError as exc:
        return _error("EARGS", str(exc))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return _error("ECONN", f"cannot reach Redis at {getattr(ns, 'redis', None)}: {exc}")
    except redis.ResponseError as exc:
        return _error("EREDIS", str(exc))
    except OSError as exc:
        return _error("EIO", str(exc))
    except KeyboardInterrupt:
        return 130


def _error(code: str, message: str) -> int:
    print(f"error: {code} {message}", file=sys.stderr)
    return 1
