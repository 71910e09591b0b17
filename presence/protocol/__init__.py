"""The wire protocol's vocabulary: close codes, frame decoding, wire types, hook event names.

The bottom layer beside ``presence.conf``: it imports nothing of the project but the settings
(docs/architecture.md).
"""
