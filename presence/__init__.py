"""Presence engine: who is connected, where, and for how long."""

# The release (semantic versioning, CHANGELOG.md): the wheel's version is read from here, and the
# browser package (static/presence/package.json) carries the same one.
__version__ = "0.1.0"
