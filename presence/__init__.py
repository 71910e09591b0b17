"""Presence engine: who is connected, where, and for how long."""
