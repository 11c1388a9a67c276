"""``inferis keys generate``: an ed25519 key pair for signing model versions."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from inferis.client import signing

from ..config import ConfigError


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", parents=[common], help="keys that sign model versions")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    gen = ksub.add_parser("generate", parents=[common],
                          help="write NAME.pem (private, mode 0600) and NAME.pub.pem")
    gen.add_argument("--out", type=Path, default=Path("."), help="folder to write them to")
    gen.add_argument("--name", default="inferis-signing")
    keys.set_defaults(handler=cmd_keys)


def cmd_keys(ns: argparse.Namespace) -> int:
    private, public = signing.generate()
    ns.out.mkdir(parents=True, exist_ok=True)
    private_path = ns.out / f"{ns.name}.pem"
    public_path = ns.out / f"{ns.name}.pub.pem"
    if private_path.exists() or public_path.exists():
        raise ConfigError(f"{private_path} or {public_path} exists: not overwriting a key")
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    public_path.write_bytes(public)
    print(f"private key {private_path} (sign with: inferis model store ... --sign {private_path})")
    print(f"public key  {public_path} (workers: --trusted-keys {public_path})")
    return 0
