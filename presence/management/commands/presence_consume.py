"""``manage.py presence_consume``: the event log's long-running readers, in one process.

One thread per consumer group (session rows, Django signals, webhooks), each blocking on
its group (presence/jobs/consumers.py); the Procfile's ``consume`` line runs it and
``make run`` starts it with everything else. Run more of them to scale: each process reads
under its own consumer names (``<host>-<pid>-<job>``) and the groups share the entries out.
SIGTERM or SIGINT stops it within a few seconds (docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from presence.hooks.readers import SignalHandler, WebhookHandler
from presence.jobs import consumers
from presence.jobs.sessionlog import SessionHandler

logger = logging.getLogger("presence.jobs.consumers")

READERS = ("sessionlog", "hooks", "webhooks")


def handlers(names: list[str], stopping: threading.Event) -> list[consumers.Handler]:
    """The handlers of the readers named (keys of presence.jobs.catalog)."""
    made: list[consumers.Handler] = []
    for name in names:
        if name == "sessionlog":
            made.append(SessionHandler())
        elif name == "hooks":
            made.append(SignalHandler())
        elif name == "webhooks":
            made.append(WebhookHandler(stopping))
        else:
            raise CommandError(f"unknown reader {name!r} (known: {', '.join(READERS)})")
    return made


class Command(BaseCommand):
    help = "Run the event log's readers (session rows, signals, webhooks) until SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--only",
            default=",".join(READERS),
            help=f"comma-separated readers to run (default: {','.join(READERS)})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        names = [n.strip() for n in options["only"].split(",") if n.strip()]
        stopping = threading.Event()

        def stop(signum: int, frame: Any) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        made = handlers(names, stopping)
        logger.info("consume: reading %s (pid %d)", ", ".join(names), os.getpid())
        stuck = consumers.run_consumers(made, stopping)
        if stuck:
            logger.warning("consume: stopped with %d readers still busy", len(stuck))
        else:
            logger.info("consume: stopped")
