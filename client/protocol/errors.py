"""Errors are data: every failure a caller can see has a stable code.

The same codes appear as the first word of Redis error replies from the
Functions library and in the ``code`` field of error replies written by workers.
"""

from __future__ import annotations


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


_BY_CODE: dict[str, type[InferisError]] = {
    cls.code: cls
    for cls in (
        ArgumentError,
        TensorError,
        ModelNotFoundError,
        InputError,
        DigestError,
        UnsafeModelError,
        BackendUnavailableError,
        BackendError,
        DeadlineExceeded,
        DeadLetteredError,
        BusyError,
        ReplicationError,
    )
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


def translate_error(exc: Exception) -> Exception:
    """A Redis error reply carrying an inferis code as its exception; others unchanged."""
    if isinstance(exc, InferisError):
        return exc
    mapped = error_from_reply(str(exc))
    return exc if mapped is None else mapped
