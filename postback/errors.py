"""Errors that carry their HTTP answer; the app maps them to responses in one place."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as ``status`` with a JSON body.

    ``body`` overrides the default ``{"success": false, "code": ..., "error": ...}``
    where the product documentation fixes another shape (the chat endpoint's ``{}``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self._body = body
        self.headers = headers

    @property
    def body(self) -> dict[str, Any]:
        if self._body is not None:
            return self._body
        return {"success": False, "code": self.code, "error": self.message}


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def unauthorized(
    message: str = "a valid API key is required (Authorization: Bearer <key>)",
) -> ApiError:
    # RFC 6750: a 401 names the scheme the client should use.
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
