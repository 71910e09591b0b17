"""The one list of background jobs (presence/jobs/catalog.py) against what runs them."""

from __future__ import annotations

from typing import Any

import pytest

from config.celery import app as celery_app
from presence import store, tasks
from presence.hooks import dispatch, webhooks
from presence.jobs import catalog, flush, reap, reconcile, sessionlog, sweep


class TestCatalog:
    def test_every_presence_celery_task_is_listed_once(self) -> None:
        registered = {name for name in celery_app.tasks if name.startswith("presence.")}
        listed = [job.task for job in catalog.JOBS]
        assert sorted(listed) == sorted(registered)
        assert len({job.key for job in catalog.JOBS}) == len(catalog.JOBS)

    def test_each_job_module_records_its_runs_under_a_listed_key(self) -> None:
        for module in (sweep, flush, reap, sessionlog, reconcile, dispatch, webhooks):
            job = catalog.by_key(module.TASK)
            assert job.locked, module.__name__

    def test_the_celery_apps_beat_schedule_is_the_catalogs(self) -> None:
        # presence.celery.install(app) (config/celery.py) put it there.
        assert celery_app.conf.beat_schedule == catalog.beat_schedule()
        assert {e["task"] for e in celery_app.conf.beat_schedule.values()} == {
            job.task for job in catalog.scheduled()
        }

    def test_beat_periods_follow_the_settings(self, settings: Any) -> None:
        settings.PRESENCE_SWEEP_INTERVAL = 7.5
        entry = catalog.beat_schedule()["presence-sweep-expired"]
        assert entry == {
            "task": "presence.sweep_expired",
            "schedule": 7.5,
            "kwargs": {"period": 7.5},
            "options": {"expires": 7.5},
        }
        assert catalog.by_key("sweep").period() == 7.5

    def test_on_demand_jobs_have_no_period_and_no_beat_entry(self) -> None:
        deliver = catalog.by_task(webhooks.DELIVER_TASK)
        assert deliver.period() is None
        assert deliver.beat_entry not in catalog.beat_schedule()

    def test_console_jobs_are_recorded_jobs(self) -> None:
        assert set(catalog.console_keys()) <= set(catalog.recorded_keys())

    def test_task_wrappers_exist_for_every_job(self) -> None:
        names = {
            getattr(tasks, attr).name
            for attr in dir(tasks)
            if hasattr(getattr(tasks, attr), "delay")
        }
        assert names == {job.task for job in catalog.JOBS}

    def test_beat_runs_only_periodic_work_and_every_log_reader_is_a_consumer(self) -> None:
        assert {job.key for job in catalog.scheduled()} == {"sweep", "flush", "reap", "reconcile"}
        assert all(job.kind == catalog.PERIODIC for job in catalog.scheduled())
        consumers = {job.key: job.group for job in catalog.consumers()}
        assert consumers == {
            "sessionlog": store.SESSION_LOG_GROUP,
            "hooks": store.HOOKS_GROUP,
            "webhooks": store.WEBHOOKS_GROUP,
        }
        # Each is on the dashboard, in /metrics and presence_status (its runs read back).
        assert set(consumers) <= set(catalog.console_keys())

    def test_the_consume_command_runs_every_consumer_of_the_catalog(self) -> None:
        import threading

        from presence.management.commands import presence_consume

        stopping = threading.Event()
        stopping.set()  # the webhook handler's delivery threads end at once
        made = presence_consume.handlers(list(presence_consume.READERS), stopping)
        assert {h.job for h in made} == {job.key for job in catalog.consumers()}
        assert {h.group for h in made} == {job.group for job in catalog.consumers()}

    def test_lateness(self) -> None:
        assert catalog.by_key("hooks").late_after() == catalog.CONSUMER_LATE
        assert catalog.by_key("sweep").late_after() == 3 * catalog.by_key("sweep").period()
        assert catalog.by_key("deliver").late_after() is None

    def test_unknown_keys_raise(self) -> None:
        with pytest.raises(KeyError):
            catalog.by_key("nope")
        with pytest.raises(KeyError):
            catalog.by_task("presence.nope")
