from typing import Any, Mapping, Optional, Union

class CartoException(Exception): ...

class CartoRateLimitException(CartoException):
    limit: int
    remaining: int
    retry_after: int
    reset: int
    def __init__(self, response: Any) -> None: ...
    @staticmethod
    def is_rate_limited(response: Any) -> bool: ...

class APIError(Exception):
    status_code: Optional[int]
    headers: Optional[Mapping[str, str]]
    reason: Optional[str]
    url: Optional[str]
    def __init__(
        self,
        message: Any,
        status_code: Optional[int] = ...,
        headers: Optional[Mapping[str, str]] = ...,
        reason: Optional[str] = ...,
        url: Optional[str] = ...,
    ) -> None: ...

class BadRequestException(APIError): ...
class UnauthorizedErrorException(APIError):
    server_message: Any
class ForbiddenErrorException(APIError):
    server_message: Any
class NotFoundException(APIError): ...
class UnprocessableEntityError(APIError): ...
class RateLimitException(APIError): ...
class ServerErrorException(APIError): ...

def api_error(
    status_code: int,
    body: Union[bytes, str],
    headers: Optional[Mapping[str, str]] = ...,
    url: Optional[str] = ...,
) -> APIError: ...
