"""Signed model versions: ed25519 signatures (``cryptography``) over a version's
digest and how it is loaded, made by the SDK at store time and checked by workers
before loading (``--trusted-keys``, ``--require-signatures``).

The signed message is ``inferis-model-v1:<sha256 hex>:<backend>:<format>``
(backend and format lower-cased, as Redis stores them): the signature covers the
file and the way it is read, so a signed ONNX file cannot be loaded as something
else. ``cryptography`` is imported only here, when signing or verifying.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .protocol.errors import ArgumentError

PREFIX = "inferis-model-v1"


def message(digest: str, backend: str, format: str) -> bytes:
    return f"{PREFIX}:{digest}:{backend.lower()}:{format.lower()}".encode()


def generate() -> tuple[bytes, bytes]:
    """A new key pair: (private PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def private_key(key: Any) -> Any:
    """An Ed25519PrivateKey from itself, PEM bytes, or a path to a PEM file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    data = Path(key).read_bytes() if isinstance(key, str | Path) else key
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ArgumentError(f"signing_key is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ArgumentError("signing_key must be an ed25519 key (inferis keys generate)")
    return loaded


def key_id(public_raw: bytes) -> str:
    """A short name for a public key: the first 16 hex of its SHA-256."""
    import hashlib

    return hashlib.sha256(public_raw).hexdigest()[:16]


def sign(key: Any, digest: str, backend: str, format: str) -> tuple[str, str]:
    """(signature hex, signer key id)."""
    from cryptography.hazmat.primitives import serialization

    loaded = private_key(key)
    raw = loaded.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    return loaded.sign(message(digest, backend, format)).hex(), key_id(raw)


def public_keys(path: str | Path) -> list[bytes]:
    """Raw ed25519 public keys from a file of one or more PEM blocks."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = Path(path).read_bytes()
    found = []
    for block in text.split(b"-----END PUBLIC KEY-----"):
        if b"-----BEGIN PUBLIC KEY-----" not in block:
            continue
        pem = block[block.index(b"-----BEGIN"):] + b"-----END PUBLIC KEY-----\n"
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: only ed25519 public keys are trusted")
        found.append(key.public_bytes(serialization.Encoding.Raw,
                                      serialization.PublicFormat.Raw))
    if not found:
        raise ValueError(f"{path} holds no PEM public key")
    return found


def verify(trusted: Iterable[bytes], signature_hex: str, digest: str, backend: str,
           format: str) -> bool:
    """Whether one of the trusted keys made this signature over this version."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    data = message(digest, backend, format)
    for raw in trusted:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, data)
            return True
        except InvalidSignature:
            continue
    return False
