"""Exceptions, as carto-python raises them.

Every error is a :class:`CartoException` whose ``args[0]`` is the cause. An answer of the
server with a status of 400 or more is caused by an :class:`APIError` subclass chosen by the
status (the classes of ``pyrestcli.exceptions``, under the same names), whose ``args[0]`` is
the server's ``error`` list (``'Access denied'`` for 401 and 403).
"""

import json


class CartoException(Exception):
    """Any failure of a carto_rs client."""


class CartoRateLimitException(CartoException):
    """A request refused with 429 Too Many Requests; ``limit``, ``remaining``, ``reset`` and
    ``retry_after`` (seconds) are the server's rate-limit headers."""

    def __init__(self, response):
        super().__init__(response.text)
        headers = response.headers
        self.limit = int(headers["Carto-Rate-Limit-Limit"])
        self.remaining = int(headers["Carto-Rate-Limit-Remaining"])
        self.retry_after = int(headers["Retry-After"])
        self.reset = int(headers["Carto-Rate-Limit-Reset"])

    @staticmethod
    def is_rate_limited(response):
        """True for a 429 answer with a usable ``Retry-After``."""
        if response.status_code != 429 or "Retry-After" not in response.headers:
            return False
        try:
            return int(response.headers["Retry-After"]) >= 0
        except ValueError:
            return False


class APIError(Exception):
    """The server answered with an error status (pyrestcli's ``BaseException``)."""

    def __init__(self, message, status_code=None, headers=None, reason=None, url=None):
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers
        self.reason = reason
        self.url = url


class BadRequestException(APIError):
    """400."""


class _AccessDenied(APIError):
    def __init__(self, message, status_code=None, headers=None, reason=None, url=None):
        super().__init__(message, status_code, headers, reason, url)
        # The server's reason stays in `server_message`; the message is what pyrestcli says.
        self.server_message = message
        self.args = ("Access denied",)


class UnauthorizedErrorException(_AccessDenied):
    """401: the key is wrong."""


class ForbiddenErrorException(_AccessDenied):
    """403: the key may not do this."""


class NotFoundException(APIError):
    """404."""


class UnprocessableEntityError(APIError):
    """422."""


class RateLimitException(APIError):
    """429 without usable rate-limit headers."""


class ServerErrorException(APIError):
    """500."""


_BY_STATUS = {
    400: BadRequestException,
    401: UnauthorizedErrorException,
    403: ForbiddenErrorException,
    404: NotFoundException,
    422: UnprocessableEntityError,
    429: RateLimitException,
    500: ServerErrorException,
}


def api_error(status_code, body, headers=None, url=None):
    """The APIError for an answer: its message is the body's ``error`` (else ``errors``,
    else the body's text)."""
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body
    message = text
    try:
        document = json.loads(text)
        if isinstance(document, dict):
            message = document.get("error", document.get("errors", text))
    except ValueError:
        pass
    return _BY_STATUS.get(status_code, APIError)(message, status_code, headers, None, url)
