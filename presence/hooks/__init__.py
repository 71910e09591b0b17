"""Server-side hooks: Django signals and signed webhooks, driven by the event log."""
