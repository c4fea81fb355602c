"""carto_rs: carto-python's API (``carto.auth``, ``carto.sql``, ``carto.exceptions``) on the
carto-rs Rust SDK, plus DataFrame and numpy uploads.

Migrating from carto-python is replacing ``carto.`` with ``carto_rs.`` in imports.
"""

from ._native import __version__

__all__ = ["__version__"]
