"""Errors that carry a protocol error code, so every layer can fail a request without knowing the wire format."""

from __future__ import annotations


class EngineError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequest(EngineError):
    code = "INVALID_REQUEST"


class UnsupportedVersion(EngineError):
    code = "UNSUPPORTED_VERSION"


class NotReady(EngineError):
    code = "NOT_READY"


class OutOfMemory(EngineError):
    code = "OUT_OF_MEMORY"


class Canceled(EngineError):
    code = "CANCELED"


class NsfwContent(EngineError):
    code = "NSFW_CONTENT"


def internal_error(exc: BaseException, log, what: str) -> EngineError:
    """An unexpected failure as clients see it: a generic message and a reference into the engine log, never the
    exception's class, text or traceback (they can name files, paths and library internals)."""
    import secrets

    ref = secrets.token_hex(4)
    log.error("%s failed (error ref %s)", what, ref, exc_info=exc)
    return EngineError(f"internal engine error (ref {ref}); the engine log has the details")


class ModelUnavailable(Exception):
    """The weights are missing and cannot be fetched: fatal at startup, reported as MODEL_UNAVAILABLE (exit 2)."""


class SetupRefused(RuntimeError):
    """A fast-path setting this machine cannot run (fp8 without CUDA or torchao): fatal at startup, and its message
    is ours, so health and the failed event show it instead of a generic load failure."""
