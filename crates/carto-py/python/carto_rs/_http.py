"""What a request answered, for code written against carto-python's requests responses."""

import json


class Headers(dict):
    """Response headers; names are case-insensitive, as in requests."""

    def __init__(self, pairs=()):
        super().__init__()
        for name, value in pairs:
            name = name.lower()
            # Repeated headers are joined, as HTTP allows and requests does.
            self[name] = f"{self[name]}, {value}" if name in self else value

    def __getitem__(self, name):
        return super().__getitem__(name.lower())

    def __contains__(self, name):
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name, default=None):
        return super().get(name.lower(), default)


class Response:
    """A complete answer: ``status_code``, ``headers``, ``content``, ``text``, ``json()``."""

    def __init__(self, status_code, headers, content, url=None):
        self.status_code = status_code
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.content = content
        self.url = url

    @property
    def ok(self):
        """True below 400."""
        return self.status_code < 400

    @property
    def text(self):
        """The body as text."""
        return self.content.decode("utf-8", "replace")

    def json(self):
        """The body parsed as JSON."""
        return json.loads(self.content)
