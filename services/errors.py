"""The errors of the system, with one common base.

Every error a user can cause or meet derives from :class:`CaiError` and carries the gRPC status it
becomes (``status``, a ``grpc.StatusCode`` name, so this module does not import grpc). Servicers
just raise; one server interceptor (``services.common.server``) turns a ``CaiError`` into that
status with ``str(error)`` as the message, counts it and logs one line. Anything else that escapes
a servicer is our bug: INTERNAL, with an id to find its traceback in the server log.

Subclasses that used to derive from ``ValueError``/``RuntimeError`` keep that base too (multiple
inheritance), so callers catching the old base still catch them.
"""

from __future__ import annotations


class CaiError(Exception):
    """An error meant for the user: ``str(error)`` says what was wrong and what to do."""

    status = "FAILED_PRECONDITION"
    """The gRPC status code name this error answers with."""


class InvalidArgument(CaiError, ValueError):
    """The request (or a file, a flag) is invalid; the message names the field."""

    status = "INVALID_ARGUMENT"


class InvalidRequest(InvalidArgument):
    """A request field is invalid: ``InvalidRequest(field, message)`` reads ``"<field>: <message>"``."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ResourceExhausted(CaiError):
    """Over a limit of work (too many requests in flight, a message too large)."""

    status = "RESOURCE_EXHAUSTED"


class FailedPrecondition(CaiError):
    """The system is not in a state to do this (a checkpoint that will not load)."""

    status = "FAILED_PRECONDITION"


class Unavailable(CaiError):
    """A dependency is down (a dead engine, an unreachable queue); retry or restart."""

    status = "UNAVAILABLE"


class PermissionDenied(CaiError):
    """The caller may not do this (a path outside what the server serves)."""

    status = "PERMISSION_DENIED"


class NotFound(CaiError):
    """The named thing does not exist (a model, a checkpoint folder)."""

    status = "NOT_FOUND"
