"""Model blobs encrypted at rest: AES-256-GCM (``cryptography``) under a 32-byte
envelope key that only the admins who store and the workers who load hold.

The stored blob is ``INFE``, a format byte (1), a 12-byte nonce, then the
ciphertext and its 16-byte tag. The associated data is
``inferis-model-enc-v1:<backend>:<format>``, so ciphertext stored under one way
of reading fails to decrypt under another. The nonce is derived from the key
and the plaintext (HMAC-SHA256, a synthetic IV): the same file under the same
key always gives the same bytes, so versions still dedupe by digest, and two
different files never share a nonce. What it shows is only that two versions
hold the same file.

The version's digest (and a signature, client/signing.py) is over the stored
bytes, the ciphertext: Redis, the worker's digest check and the audit see only
those. A version records the key's id, the first 16 hex of its SHA-256, in its
metadata field ``encrypted``. ``cryptography`` is imported only here.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .protocol.errors import ArgumentError, SignatureError

MAGIC = b"INFE"
FORMAT = 1
KEY_BYTES = 32
NONCE_BYTES = 12
_HEADER = len(MAGIC) + 1 + NONCE_BYTES
# AES-GCM as cryptography offers it takes at most 2**31 - 1 bytes at once.
MAX_PLAINTEXT = 2**31 - 1


def generate() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def write_key_file(path: str | Path, key: bytes) -> None:
    """The raw key, readable by its owner only; an existing file is never replaced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)


def load_key(key: Any) -> bytes:
    """A key from its 32 bytes, or a file holding them raw or as 64 hex digits."""
    data = Path(key).read_bytes() if isinstance(key, str | Path) else key
    if not isinstance(data, bytes | bytearray):
        raise ArgumentError(
            f"an encryption key is 32 bytes or a key file, got {type(key).__name__}")
    data = bytes(data)
    if len(data) != KEY_BYTES:
        with contextlib.suppress(UnicodeDecodeError, ValueError):  # 64 hex digits
            data = bytes.fromhex(data.decode("ascii").strip())
    if len(data) != KEY_BYTES:
        raise ArgumentError(f"an encryption key must be {KEY_BYTES} bytes "
                            "(inferis keys generate --encryption)")
    return data


def load_keys(paths: Iterable[str | Path]) -> dict[str, bytes]:
    """Keys by id, from key files (a worker may hold the old and the new while rotating)."""
    return {key_id(k): k for k in (load_key(Path(p)) for p in paths)}


def key_id(key: bytes) -> str:
    """A public name for a key: the first 16 hex of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:16]


def _aad(backend: str, format: str) -> bytes:
    return f"inferis-model-enc-v1:{backend.lower()}:{format.lower()}".encode()


def encrypt(key: bytes, blob: bytes, backend: str, format: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(blob) > MAX_PLAINTEXT:
        raise ArgumentError(f"a model encrypted at rest is at most {MAX_PLAINTEXT} bytes")
    aad = _aad(backend, format)
    nonce_key = hmac.digest(key, b"inferis-model-nonce-v1", "sha256")
    nonce = hmac.digest(nonce_key, aad + b"\0" + blob, "sha256")[:NONCE_BYTES]
    return MAGIC + bytes([FORMAT]) + nonce + AESGCM(key).encrypt(nonce, blob, aad)


def decrypt(keys: Mapping[str, bytes], wanted: str, data: bytes, backend: str, format: str,
            label: str) -> bytes:
    """The plaintext of a version encrypted with key ``wanted``; SignatureError when
    that key is not among ``keys``, or the bytes do not decrypt with it (altered, or
    encrypted for another backend or format)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = keys.get(wanted)
    if key is None:
        held = ", ".join(sorted(keys)) or "none"
        raise SignatureError(f"{label} is encrypted with key {wanted}; this holder has no such "
                             f"key (it holds: {held})")
    if len(data) < _HEADER + 16 or data[:4] != MAGIC or data[4] != FORMAT:
        raise SignatureError(f"{label} is marked encrypted but its blob is not an inferis "
                             "envelope")
    nonce = data[5:_HEADER]
    try:
        return AESGCM(key).decrypt(nonce, data[_HEADER:], _aad(backend, format))
    except InvalidTag:
        raise SignatureError(f"{label} does not decrypt with key {wanted}: its blob was altered "
                             "or encrypted for another backend or format") from None
