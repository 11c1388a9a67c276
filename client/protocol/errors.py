"""Errors are data: every failure a caller can see has a stable code.

The same codes appear as the first word of Redis error replies from the
Functions library and in the ``code`` field of error replies written by workers.
"""

from __future__ import annotations

from redis import exceptions as redis_errors


class InferisError(Exception):
    """Base class; ``code`` is the stable wire code of the error."""

    code = "EINFERIS"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code} {self.message}"


class ArgumentError(InferisError, ValueError):
    code = "EARGS"


class TensorError(InferisError, ValueError):
    code = "ETENSOR"


class ModelNotFoundError(InferisError, LookupError):
    code = "EMODEL"


class InputError(InferisError, ValueError):
    code = "EINPUT"


class DigestError(InferisError):
    code = "EDIGEST"


class UnsafeModelError(InferisError):
    code = "EUNSAFE"


class SignatureError(InferisError):
    """The worker's policy refuses this version: unsigned, or not signed by a trusted key;
    or encrypted at rest with a key it does not hold, or that does not decrypt it."""

    code = "ESIGNATURE"


class BackendUnavailableError(InferisError):
    code = "ENOBACKEND"


class BackendError(InferisError):
    code = "EBACKEND"


class DeadlineExceeded(InferisError, TimeoutError):
    code = "EDEADLINE"


class NoAnswerError(DeadlineExceeded):
    """The deadline passed and nothing came back (raised by the client itself)."""


class ReplicationError(InferisError):
    """Applied on the primary but not acknowledged by enough replicas in time."""

    code = "EREPLICA"

    @classmethod
    def shortfall(cls, acked: int, wanted: int, timeout_ms: int) -> ReplicationError:
        return cls(
            f"written on the primary but acknowledged by {acked} of {wanted} replica(s) "
            f"within {timeout_ms} ms; it may be lost if the primary fails now"
        )


class DeadLetteredError(InferisError):
    code = "EPOISON"


class BusyError(InferisError):
    code = "EBUSY"


class AccuracyError(InferisError):
    """A model variant (a quantized version) strays further from its original than
    the caller's bound allows, so it was not stored."""

    code = "EACCURACY"


class OutOfMemoryError(InferisError, MemoryError):
    """Redis refused a write: it reached its ``maxmemory`` (Redis's own OOM)."""

    code = "EOOM"


class PermissionDeniedError(InferisError, PermissionError):
    """Redis's ACL refused a command for this user (Redis's own NOPERM)."""

    code = "ENOPERM"


class LibraryMissingError(InferisError):
    """The Redis has no (or another) inferis Functions library loaded."""

    code = "ELIBRARY"


class RedisRefusedError(InferisError):
    """Redis refused a command for a reason of its own (the message is Redis's)."""

    code = "EREDIS"


class ConnectionLostError(InferisError, ConnectionError):
    """Redis could not be reached within the client's reconnect window."""

    code = "ECONN"


class OutcomeUnknownError(ConnectionLostError):
    """The connection broke while a run was being enqueued: it may or may not be
    queued, and any answer it gets is not waited for. ``rid`` names it."""

    code = "EUNKNOWN"

    def __init__(self, message: str, rid: str = "") -> None:
        super().__init__(message)
        self.rid = rid


_BY_CODE: dict[str, type[InferisError]] = {
    cls.code: cls
    for cls in (
        ArgumentError,
        TensorError,
        ModelNotFoundError,
        InputError,
        DigestError,
        UnsafeModelError,
        SignatureError,
        BackendUnavailableError,
        BackendError,
        DeadlineExceeded,
        DeadLetteredError,
        BusyError,
        AccuracyError,
        ReplicationError,
        OutOfMemoryError,
        PermissionDeniedError,
        LibraryMissingError,
        RedisRefusedError,
        ConnectionLostError,
        OutcomeUnknownError,
    )
}

# Redis's own refusals as inferis errors, so callers meet one family of
# exceptions whatever refused them: by redis-py's class (it strips the code of
# those it knows) or by the first word of the reply.
_REDIS_CLASSES: dict[type[Exception], type[InferisError]] = {
    redis_errors.OutOfMemoryError: OutOfMemoryError,
    redis_errors.NoPermissionError: PermissionDeniedError,
}
_REDIS_REFUSALS: dict[str, type[InferisError]] = {
    "OOM": OutOfMemoryError,
    "NOPERM": PermissionDeniedError,
    "WRONGTYPE": ArgumentError,
    "BUSY": BusyError,
}


def error_from_code(code: str, message: str) -> InferisError:
    """Build the exception for a wire code; unknown codes become InferisError."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = InferisError(message)
        err.code = code
        return err
    return cls(message)


def error_from_reply(text: str) -> InferisError | None:
    """Turn a Redis error reply such as ``"EINPUT x is missing"`` into an exception.

    Returns None when the reply does not carry an inferis code.
    """
    code, _, message = text.partition(" ")
    if code in _BY_CODE:
        return _BY_CODE[code](message)
    return None


def library_missing(exc: object) -> bool:
    """Redis said the inferis Functions are not loaded there."""
    if not isinstance(exc, redis_errors.ResponseError):
        return False
    text = str(exc)
    return "Function not found" in text or "Library not found" in text


def translate_error(exc: Exception) -> InferisError:
    """A Redis error reply as an inferis exception: its own code when a Function
    raised it, else Redis's refusal mapped to one (EOOM, ENOPERM, ...)."""
    if isinstance(exc, InferisError):
        return exc
    text = str(exc)
    mapped = error_from_reply(text)
    if mapped is not None:
        return mapped
    for redis_class, cls in _REDIS_CLASSES.items():
        if isinstance(exc, redis_class):
            code = getattr(exc, "status_code", "") or ""
            return cls(f"Redis refused it: {code} {text}".replace("  ", " "))
    word = text.partition(" ")[0]
    if library_missing(exc):
        return LibraryMissingError(
            f"the inferis Functions library is not loaded on this Redis ({text}); "
            "load it with: inferis load-library --redis URL"
        )
    cls = _REDIS_REFUSALS.get(word)
    if cls is not None:
        return cls(f"Redis refused it: {text}")
    return RedisRefusedError(text)
