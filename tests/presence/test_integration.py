"""The integration points themselves: presence.celery.install, presence.asgi, presence.urls."""

from __future__ import annotations

from celery import Celery
from django.urls import resolve

import presence.celery
from presence.asgi import is_presence_application, presence_application
from presence.jobs import catalog


def _host_app(schedule: dict | None = None) -> Celery:
    app = Celery("host", set_as_current=False)
    app.config_from_object({"beat_schedule": schedule or {}})
    return app


class TestCeleryInstall:
    def test_before_configuration_the_schedule_is_added_when_celery_reads_it(self) -> None:
        app = _host_app({"host-job": {"task": "host.job", "schedule": 60.0}})
        presence.celery.install(app)
        assert not app.configured  # nothing read yet: safe before Django is set up

        schedule = app.conf.beat_schedule

        assert set(schedule) == {"host-job", *catalog.beat_schedule()}
        assert (
            schedule["presence-sweep-expired"] == catalog.beat_schedule()["presence-sweep-expired"]
        )

    def test_after_configuration_too(self) -> None:
        app = _host_app()
        assert app.conf.beat_schedule == {}
        presence.celery.install(app)
        assert app.conf.beat_schedule == catalog.beat_schedule()

    def test_a_host_entry_of_the_same_name_wins_and_twice_is_once(self) -> None:
        mine = {"task": "presence.sweep_expired", "schedule": 1.0}
        app = _host_app({"presence-sweep-expired": mine})
        presence.celery.install(app)
        presence.celery.install(app)
        assert app.conf.beat_schedule["presence-sweep-expired"] == mine
        assert presence.celery.is_installed(app)
        assert not presence.celery.is_installed(_host_app())

    def test_the_tasks_are_registered(self) -> None:
        app = _host_app()
        presence.celery.install(app)
        app.loader.import_default_modules()
        assert {job.task for job in catalog.JOBS} <= set(app.tasks)


class TestAsgi:
    def test_presence_application_is_recognised(self) -> None:
        async def http(scope: dict, receive: object, send: object) -> None:
            raise AssertionError("not called")

        application = presence_application(http)
        assert is_presence_application(application)
        assert not is_presence_application(http)
        assert not is_presence_application({})


class TestUrls:
    def test_presence_urls_serve_the_api_token_health_and_metrics(self) -> None:
        for url in ("/api/presence/online/", "/api/presence/token/", "/healthz", "/readyz"):
            assert resolve(url).url_name, url
        assert resolve("/metrics").url_name == "metrics"
