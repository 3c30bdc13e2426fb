"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status.

Every fault of the client is a 4xx. That matters beyond politeness: the openai SDK retries every 5xx (and 429)
with back-off, so a bad image reported as a 500 would be sent three more times before the user sees it.

| status | type                  | when                                                          |
|--------|-----------------------|---------------------------------------------------------------|
| 400    | invalid_request_error | bad JSON or field, bad or refused media, too long a prompt    |
| 401    | authentication_error  | missing or wrong `Authorization: Bearer` key (--api_key)      |
| 403    | invalid_request_error | a Host header this server does not answer to (--allowed_hosts) |
| 404    | invalid_request_error | unknown model name, unknown path                              |
| 408    | invalid_request_error | the body did not arrive in time                               |
| 413    | invalid_request_error | body over --max_request_bytes                                 |
| 415    | invalid_request_error | a POST whose Content-Type is not application/json             |
| 429    | rate_limit_error      | more requests waiting than --max_queue                        |
| 500    | server_error          | a bug or a failure of the model itself                        |
"""

from __future__ import annotations

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """Raised anywhere while handling a request; the app turns it into the JSON error response."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 error_type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or ERROR_TYPES.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_exception(error: BaseException, param: str | None = None) -> APIError:
    """A user-facing exception (bad image, template refusal, UserError) as a 400; anything else as a 500."""
    from swiftlite.errors import user_error_types

    if isinstance(error, APIError):
        return error
    if isinstance(error, user_error_types()):
        from swiftlite.media import MediaError

        code = "invalid_media" if isinstance(error, MediaError) else "invalid_request"
        return APIError(400, str(error), param=param, code=code)
    return APIError(500, f"internal error: {type(error).__name__}: {error}", code="internal_error")
