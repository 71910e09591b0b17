"""Celery app: settings under the CELERY_ namespace, tasks from each app's tasks.py."""

import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def _django_logging(**kwargs: Any) -> None:
    """Workers and beat log through Django's LOGGING (presence/obs/logs.py: format, redaction)
    instead of Celery's own set-up; connecting this signal is what turns Celery's off."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
