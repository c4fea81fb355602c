"""carto_rs: carto-python's API (``carto.auth``, ``carto.sql``, ``carto.exceptions``) on the
carto-rs Rust SDK, plus DataFrame and numpy uploads.

Migrating from carto-python is replacing ``carto.`` with ``carto_rs.`` in imports.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("carto_rs")
except PackageNotFoundError:  # imported from a source tree without installing
    __version__ = "0.0.0"
