"""``inferis keys generate``: an ed25519 key pair for signing model versions, or
(``--encryption``) a 32-byte envelope key for encrypting them at rest."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from inferis.client import encryption, signing

from ..config import ConfigError


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", parents=[common], help="keys that sign or encrypt models")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    gen = ksub.add_parser("generate", parents=[common],
                          help="write NAME.pem (private, mode 0600) and NAME.pub.pem; with "
                               "--encryption, NAME.key (32 bytes, mode 0600)")
    gen.add_argument("--out", type=Path, default=Path("."), help="folder to write them to")
    gen.add_argument("--name", default=None,
                     help="default: inferis-signing, or inferis-model with --encryption")
    gen.add_argument("--encryption", action="store_true",
                     help="an envelope key for models encrypted at rest (admins and workers)")
    keys.set_defaults(handler=cmd_keys)


def cmd_keys(ns: argparse.Namespace) -> int:
    ns.out.mkdir(parents=True, exist_ok=True)
    if ns.encryption:
        return _envelope_key(ns.out / f"{ns.name or 'inferis-model'}.key")
    private, public = signing.generate()
    name = ns.name or "inferis-signing"
    private_path = ns.out / f"{name}.pem"
    public_path = ns.out / f"{name}.pub.pem"
    if private_path.exists() or public_path.exists():
        raise ConfigError(f"{private_path} or {public_path} exists: not overwriting a key")
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    public_path.write_bytes(public)
    print(f"private key {private_path} (sign with: inferis model store ... --sign {private_path})")
    print(f"public key  {public_path} (workers: --trusted-keys {public_path})")
    return 0


def _envelope_key(path: Path) -> int:
    if path.exists():
        raise ConfigError(f"{path} exists: not overwriting a key")
    key = encryption.generate()
    encryption.write_key_file(path, key)
    print(f"envelope key {path}, id {encryption.key_id(key)} (store with: inferis model store "
          f"... --encrypt {path}; workers: --model-key-file {path})")
    return 0
