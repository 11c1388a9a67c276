"""The envelope of models encrypted at rest, without Redis: what is stored, what
decrypts, what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferis.client import ArgumentError, SignatureError, encryption
from inferis.client.audit import describe, stated_by
from inferis.client.protocol import commands

BLOB = b"a model file " * 1000


def test_the_envelope_round_trips_and_hides_the_file() -> None:
    key = encryption.generate()
    sealed = encryption.encrypt(key, BLOB, "onnx", "")
    assert sealed.startswith(encryption.MAGIC) and BLOB[100:164] not in sealed
    keys = {encryption.key_id(key): key}
    assert encryption.decrypt(keys, encryption.key_id(key), sealed, "ONNX", "", "m v1") == BLOB
    # the same file under the same key is the same bytes: versions still dedupe
    assert encryption.encrypt(key, BLOB, "onnx", "") == sealed
    assert encryption.encrypt(key, BLOB + b"!", "onnx", "")[5:17] != sealed[5:17]  # nonce


def test_what_does_not_decrypt_is_a_signature_error() -> None:
    key, other = encryption.generate(), encryption.generate()
    kid = encryption.key_id(key)
    sealed = encryption.encrypt(key, BLOB, "onnx", "")
    with pytest.raises(SignatureError, match="no such key"):
        encryption.decrypt({encryption.key_id(other): other}, kid, sealed, "onnx", "", "m v1")
    with pytest.raises(SignatureError, match="does not decrypt"):
        encryption.decrypt({kid: other}, kid, sealed, "onnx", "", "m v1")  # a lying key id
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(SignatureError, match="altered"):
        encryption.decrypt({kid: key}, kid, bytes(flipped), "onnx", "", "m v1")
    with pytest.raises(SignatureError, match="another backend"):
        encryption.decrypt({kid: key}, kid, sealed, "torch", "", "m v1")
    with pytest.raises(SignatureError, match="not an inferis envelope"):
        encryption.decrypt({kid: key}, kid, BLOB, "onnx", "", "m v1")


def test_key_files_are_raw_or_hex_and_private(tmp_path: Path) -> None:
    key = encryption.generate()
    encryption.write_key_file(tmp_path / "k.key", key)
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        encryption.write_key_file(tmp_path / "k.key", key)
    (tmp_path / "hex.key").write_text(key.hex() + "\n")
    assert encryption.load_key(tmp_path / "k.key") == encryption.load_key(tmp_path / "hex.key")
    (tmp_path / "short.key").write_bytes(b"x" * 31)
    with pytest.raises(ArgumentError, match="32 bytes"):
        encryption.load_key(tmp_path / "short.key")
    assert list(encryption.load_keys([tmp_path / "k.key"])) == [encryption.key_id(key)]


def test_an_encrypted_store_sends_ciphertext_and_its_digest(tmp_path: Path) -> None:
    key = encryption.generate()
    (store,) = commands.modelstore("m", "onnx", BLOB, encryption_key=key, by="admin/ci")
    args = store.args
    sent = args[args.index("BLOB") + 1]
    assert sent != BLOB and args[args.index("DIGEST") + 1] == commands.sha256_hex(sent)
    assert args[args.index("ENCRYPTED") + 1] == encryption.key_id(key)
    assert args[args.index("BY") + 1] == "admin/ci"


def test_by_is_the_acl_user_then_the_caller_id() -> None:
    assert stated_by("admin", "") == "admin" and stated_by("admin", "ci") == "admin/ci"
    assert stated_by("", "ci") == "?/ci"
    with pytest.raises(ArgumentError, match="256 bytes"):
        stated_by("admin", "x" * 300)
    line = describe({"event": "store", "version": "3", "digest": "ab" * 32, "by": "admin",
                     "signer": "s1", "encrypted": "k1"})
    assert line.startswith("store") and "v3" in line and "key k1" in line and "by admin" in line
