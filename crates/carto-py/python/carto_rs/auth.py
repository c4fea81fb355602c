"""Authenticated access to a CARTO SQL API with an API key (carto-python's ``carto.auth``)."""

import json
import re
import warnings
from urllib.parse import urlparse

from . import __version__, _native
from ._http import Response
from .exceptions import CartoException, CartoRateLimitException, api_error


def _user_name(base_url):
    """`/user/{name}/` in the path, else the host's first label (without `www.`)."""
    try:
        parts = urlparse(base_url)
        match = re.search(r"^/user/([^/]+)/.*$", parts.path)
        if match is None:
            host = parts.netloc
            if host.startswith("www."):
                host = host[len("www."):]
            match = re.search(r"^(.*?)\..*", host)
        return match.group(1)
    except Exception:
        raise CartoException(
            "Could not find a valid user_name in the base URL provided. Please check that "
            "the URL is one of 'https://{user_name}.carto.com', "
            "'https://carto.com/user/{user_name}' or a similar one based on your domain"
        ) from None


def _text(value):
    return value if isinstance(value, str) else str(value)


class APIKeyAuthClient:
    """Access to an account's APIs with its API key.

    ``base_url`` is ``https://{user}.carto.com/`` or ``https://host/user/{user}/``.
    ``organization`` and ``session`` are accepted for compatibility and not used (the
    connection pool is the Rust client's).
    """

    _verify = True

    def __init__(self, base_url, api_key, organization=None, session=None, client_id=None,
                 user_agent=None):
        self.organization = organization
        self.session = session
        self.api_key = api_key
        if not base_url.startswith("https"):
            warnings.warn("You are using unencrypted API key authentication: use an https "
                          "base URL")
        if not base_url.endswith("/"):
            base_url += "/"
        self.base_url = base_url
        self.username = _user_name(base_url)
        self.user_agent = user_agent or f"carto-rs-python/{__version__}"
        self.client_id = client_id or f"carto_rs-{__version__}"
        try:
            self._native = _native.Client(base_url, api_key or "", self.user_agent,
                                          verify=self._verify)
        except _native.NativeError as error:
            raise CartoException(error.args[0]) from None

    def send(self, relative_path, http_method, **requests_args):
        """One request to ``relative_path`` (relative to the base URL) with the key and
        client id added, as carto-python does: into a JSON body (``json=``) of a POST or
        PUT, else into the query string. Takes ``params``, ``data`` (a dict: a form) and
        ``json``; returns the answer (``status_code``, ``headers``, ``content``, ``json()``).
        Raises CartoRateLimitException on 429."""
        method = http_method.upper()
        params = dict(requests_args.get("params") or {})
        body = requests_args.get("json")
        credentials = {"api_key": self.api_key, "client": self.client_id}
        if method in ("POST", "PUT") and body is not None:
            body = {**body, **credentials}
        else:
            params.update(credentials)
        data = requests_args.get("data")
        if data is not None and not isinstance(data, dict):
            raise CartoException(TypeError("data must be a dict (sent as a form)"))
        query = [(k, _text(v)) for k, v in params.items() if v is not None]
        form = None if data is None else [(k, _text(v)) for k, v in data.items() if v is not None]
        try:
            status, headers, content = self._native.request(
                method, relative_path, query, form,
                None if body is None else json.dumps(body))
        except _native.NativeError as error:
            raise CartoException(error.args[0]) from None
        response = Response(status, headers, content, self.base_url + relative_path)
        if CartoRateLimitException.is_rate_limited(response):
            raise CartoRateLimitException(response)
        return response

    def get_response_data(self, response, parse_json=True):
        """The answer's JSON (or bytes if not ``parse_json``; None for 204), or the
        APIError for its status (raised)."""
        if response.status_code >= 400:
            raise api_error(response.status_code, response.content, response.headers,
                            response.url)
        if response.status_code == 204:
            return None
        return response.json() if parse_json else response.content


class NonVerifiedAPIKeyAuthClient(APIKeyAuthClient):
    """APIKeyAuthClient without TLS certificate checks (on-premises servers)."""

    _verify = False

    def __init__(self, base_url, api_key, organization=None, session=None):
        super().__init__(base_url, api_key, organization, session)
