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


class ModelUnavailable(Exception):
    """The weights are missing and cannot be fetched: fatal at startup, reported as MODEL_UNAVAILABLE (exit 2)."""
