"""The answers ``galley serve`` gives a request it will not run: an HTTP status and why."""

from __future__ import annotations

from galley.core.errors import ConfigError, DataError, GalleyError, NotFoundError, ValidationError


class ApiError(Exception):
    """Refused with ``status`` (always 4xx: the server keeps serving); ``detail`` says why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def bad_request(detail: str) -> ApiError:
    return ApiError(400, detail)


def not_found(what: str) -> ApiError:
    """Unknown, and also what another tenant owns: the answer does not say which."""
    return ApiError(404, f"{what} not found")


def unsupported(feature: str) -> ApiError:
    return ApiError(400, f"galley serve does not support {feature}")


def busy(detail: str) -> ApiError:
    """429: the SDK backs off and retries."""
    return ApiError(429, detail)


# Failures of a request's work that are the request's fault: the SDK reports them as user errors.
USER_ERRORS = (ValidationError, ConfigError, DataError, NotFoundError, ApiError)


def failure_category(error: BaseException) -> str:
    return "user" if isinstance(error, USER_ERRORS) else "server"


def describe(error: BaseException) -> str:
    if isinstance(error, ApiError):
        return error.detail
    if isinstance(error, GalleyError):
        return str(error)
    return f"{type(error).__name__}: {error}"
