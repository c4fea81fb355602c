from typing import Any, Optional

from ._http import Response

class APIKeyAuthClient:
    organization: Optional[str]
    session: Any
    api_key: Optional[str]
    base_url: str
    username: str
    user_agent: str
    client_id: str
    def __init__(
        self,
        base_url: str,
        api_key: Optional[str],
        organization: Optional[str] = ...,
        session: Any = ...,
        client_id: Optional[str] = ...,
        user_agent: Optional[str] = ...,
    ) -> None: ...
    def send(self, relative_path: str, http_method: str, **requests_args: Any) -> Response: ...
    def get_response_data(self, response: Response, parse_json: bool = ...) -> Any: ...

class NonVerifiedAPIKeyAuthClient(APIKeyAuthClient):
    def __init__(
        self,
        base_url: str,
        api_key: Optional[str],
        organization: Optional[str] = ...,
        session: Any = ...,
    ) -> None: ...
