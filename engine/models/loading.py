"""From a stored version to a model ready to run: fetch, verify, refuse what is unsafe, load.

Every load checks the blob's SHA-256 against the version's digest before a
backend sees a byte of it (the stored bytes: for a version encrypted at rest,
the ciphertext, which is then decrypted with the worker's envelope key).
Formats that run code when loaded (pickle) are refused unless the worker's
operator trusts them. The signature a request is checked against (what the
model reports, completed by what was declared at store time) is computed here
once per load, not per request.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass

import redis

from inferis.client import encryption, signing
from inferis.client.protocol import keys
from inferis.client.protocol.errors import (
    BackendError,
    DigestError,
    InferisError,
    SignatureError,
    UnsafeModelError,
)
from inferis.client.protocol.models import ModelInfo

from .. import metrics
from ..backends.base import BackendOptions, LoadedModel, gpu_index
from ..backends.registry import canonical_name, get_backend, load_model
from ..isolation.runner import IsolatedModel, IsolatedRunner
from .pipeline import PIPELINE_BACKEND
from .signature import Signature, merge_specs

log = logging.getLogger(__name__)

# Formats whose loading can execute arbitrary code.
UNSAFE_FORMATS = frozenset({"pickle", "joblib", "cloudpickle"})
__all__ = ["PIPELINE_BACKEND", "UNSAFE_FORMATS", "Loaded", "fetch_blob", "fetch_model_file",
           "load_backend_model"]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A version in memory: its metadata, the backend's model and the signature
    requests are checked against (what the model reports, completed by what
    was declared at store time)."""

    info: ModelInfo
    model: LoadedModel
    signature: Signature


def signature_of(info: ModelInfo, model: LoadedModel) -> Loaded:
    inputs = merge_specs(model.inputs, info.inputs)
    outputs = merge_specs(model.outputs, info.outputs)
    return Loaded(info, model, Signature(info.name, inputs, outputs))


def fetch_blob(conn: redis.Redis, info: ModelInfo) -> bytes:
    """All chunks of the version's file in one round trip, checked against its digest."""
    pipe = conn.pipeline(transaction=False)
    for index in range(info.chunks):
        pipe.get(keys.model_key(info.name, f"blob:{info.digest}:{index}"))
    parts = pipe.execute()
    if any(p is None for p in parts):
        raise DigestError(f"{info.label} is missing blob chunks")
    blob = b"".join(parts)
    if hashlib.sha256(blob).hexdigest() != info.digest:
        raise DigestError(
            f"{info.label}: blob SHA-256 does not match its digest {info.digest}; "
            "refusing to load it"
        )
    return blob


def refuse_unkeyed(info: ModelInfo, options: BackendOptions) -> None:
    """A version encrypted at rest loads only on a worker holding its key: refused
    before its blob is fetched."""
    if info.encrypted and info.encrypted not in options.model_keys:
        held = ", ".join(sorted(options.model_keys)) or "none"
        raise SignatureError(f"{info.label} is encrypted with key {info.encrypted}, which this "
                             f"worker does not hold (--model-key-file; it holds: {held})")


def fetch_model_file(conn: redis.Redis, info: ModelInfo, options: BackendOptions) -> bytes:
    """The version's file as its backend reads it: fetched, checked against its
    digest, and decrypted when it is encrypted at rest."""
    refuse_unkeyed(info, options)
    blob = fetch_blob(conn, info)
    if not info.encrypted:
        return blob
    return encryption.decrypt(options.model_keys, info.encrypted, blob, info.backend,
                              info.format, info.label)


def refuse_unsigned(info: ModelInfo, options: BackendOptions) -> None:
    """The worker's signature policy: a signature present is checked against the
    trusted keys (when there are any); with ``require_signatures`` one must be."""
    if not info.signature:
        if options.require_signatures:
            raise SignatureError(f"{info.label} is not signed; this worker loads only models "
                                 "signed by a trusted key (--require-signatures)")
        return
    if not options.trusted_keys:
        return  # nothing to check it against: the policy is off
    if not signing.verify(options.trusted_keys, info.signature, info.digest, info.backend,
                          info.format):
        raise SignatureError(f"{info.label}'s signature (signer {info.signer or '?'}) is not "
                             "valid for its content by any trusted key; refusing to load it")


def refuse_unsafe(info: ModelInfo, options: BackendOptions) -> None:
    if info.format in UNSAFE_FORMATS and not options.trust_unsafe_formats:
        raise UnsafeModelError(
            f"{info.label} is in format {info.format!r}, which can run arbitrary code when "
            "loaded; the worker refuses it unless started with --trust-unsafe-formats"
        )


def load_in_process(blob: bytes, info: ModelInfo, options: BackendOptions) -> LoadedModel:
    """The backend's model, in this process; any failure is that version's EBACKEND."""
    try:
        return load_model(blob, info, options)
    except InferisError:
        raise
    except Exception as exc:
        raise BackendError(
            f"cannot load {info.label} with backend {info.backend}: {type(exc).__name__}: {exc}"
        ) from None


def load_backend_model(
    conn: redis.Redis,
    info: ModelInfo,
    options: BackendOptions,
    runner: IsolatedRunner | None = None,
    key: Hashable = None,
) -> LoadedModel:
    """Check, fetch and load ``info``: in this process, or in ``runner``'s child
    process (under ``key``) where a run past its timeout can be cut off."""
    refuse_unsafe(info, options)
    refuse_unsigned(info, options)
    refuse_unkeyed(info, options)
    if runner is None:
        get_backend(info.backend)  # ENOBACKEND before fetching a blob it cannot load
    else:
        canonical_name(info.backend)  # the child imports the backend itself
    blob = fetch_model_file(conn, info, options)
    started = time.perf_counter()
    if runner is None:
        model: LoadedModel = load_in_process(blob, info, options)
    else:
        model = IsolatedModel(runner, key, blob, info)
    _note_device(info, model)
    log.info(
        "loaded %s (%s, %d bytes) in %.1f ms on %s", info.label, info.backend, info.size,
        (time.perf_counter() - started) * 1000, model.device,
    )
    return model


def _note_device(info: ModelInfo, model: LoadedModel) -> None:
    """A version that asked for a GPU this worker does not have runs on CPU: count it."""
    device = model.device
    if gpu_index(info.device) is not None and gpu_index(device) is None:
        metrics.DEVICE_FALLBACKS.labels(info.name, canonical_name(info.backend), info.device).inc()
