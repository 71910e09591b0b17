"""Celery app: settings under the CELERY_ namespace, tasks from each app's tasks.py, presence's
beat schedule from presence.celery.install."""

import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging

import presence.celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
# presence's tasks and beat schedule (presence/celery.py, docs/install.md).
presence.celery.install(app)
app.autodiscover_tasks()


@setup_logging.connect
def _django_logging(**kwargs: Any) -> None:
    """Workers and beat log through Django's LOGGING (presence/obs/logs.py: format, redaction)
    instead of Celery's own set-up; connecting this signal is what turns Celery's off."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
