"""Versions of the package and of the wire protocol."""

PROTOCOL_VERSION = "1.2"
"""Wire protocol version: ``major.minor``. Peers must share the major number."""

__version__ = "0.1.0"
