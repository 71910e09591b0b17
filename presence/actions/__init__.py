"""Presence writes (``do_<verb>_<noun>``): what a socket, a handler or an operator changes.

They change Redis through the store (whose scripts log the resulting events) and never
format a reply: the surfaces above do that.
"""
