"""Real Celery processes on the highly available brokers: Redis behind Sentinel (worker and beat
ride through a failover) and RabbitMQ with quorum queues (the machine's, at 127.0.0.1:5672)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from presence import store
from presence.redis_url import celery_broker
from tests.support.celery import CeleryProcess, celery_env
from tests.support.paths import ROOT
from tests.support.sentinel import SentinelTopology

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def runs(r: redis.Redis, task: str) -> int:
    """Completed runs of ``task`` (presence.jobs.periodic records them in the presence Redis)."""
    return int(store.read_task_run(r, task).get("runs_total", 0))


def wait_for(check: Callable[[], bool], what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")
        time.sleep(0.1)


def send_flush_through(url: str) -> None:
    """Send ``presence.flush_stats`` through the broker at ``url`` (any project URL form),
    on a fresh connection, as a web process configured with that URL would."""
    from config.celery import app

    broker_url, options = celery_broker(url)
    with app.connection_for_write(broker_url, transport_options=options) as connection:
        app.send_task("presence.flush_stats", connection=connection)


def beat_sends(beat: CeleryProcess) -> int:
    return beat.text().count("Sending due task")


class TestSentinelBroker:
    def test_worker_and_beat_ride_through_a_broker_failover(
        self,
        r: redis.Redis,
        sentinel_topology: SentinelTopology,
        celery_worker_process: Callable[..., CeleryProcess],
    ) -> None:
        # The broker behind Sentinel (db 1); the presence store stays on the private Redis.
        env = {
            "CELERY_BROKER_URL": sentinel_topology.url_for_db(1),
            "PRESENCE_SWEEP_INTERVAL": "1",  # beat sends a sweep every second
            "STATS_FLUSH_INTERVAL": "3600",  # ... and no flush: the flushes below are ours
        }
        worker = celery_worker_process(env=env, concurrency=1)
        beat = celery_worker_process(env=env, beat=True)
        send_flush_through(sentinel_topology.url_for_db(1))
        wait_for(lambda: runs(r, "flush") == 1, "the flush sent before the failover")
        wait_for(lambda: runs(r, "sweep") >= 1, "a sweep scheduled by beat")
        assert sentinel_topology.primary().client(db=1).exists("_kombu.binding.celery")

        sentinel_topology.failover()  # returns once the old primary is a replica
        sent_before = beat_sends(beat)
        sweeps = runs(r, "sweep")

        send_flush_through(sentinel_topology.url_for_db(1))
        wait_for(lambda: runs(r, "flush") == 2, "the flush sent after the failover")
        wait_for(lambda: beat_sends(beat) >= sent_before + 2, "beat to send after the failover")
        wait_for(lambda: runs(r, "sweep") >= sweeps + 2, "the worker to run beat's sweeps")
        assert worker.proc.poll() is None, worker.text()[-3000:]
        assert beat.proc.poll() is None, beat.text()[-3000:]
        # The queue now lives on the new primary.
        assert sentinel_topology.primary().client(db=1).exists("_kombu.binding.celery")


@pytest.fixture
def quorum_queue() -> Iterator[str]:
    """A queue name of this test only (runs side by side do not share it); deleted after."""
    from kombu import Connection

    name = f"presence-test-{uuid.uuid4().hex[:12]}"
    yield name
    with Connection(AMQP_URL, connect_timeout=5) as connection:
        channel = connection.channel()
        channel.queue_delete(name)
        channel.exchange_delete(name)


def queue_type_is_quorum(name: str) -> bool:
    """RabbitMQ refuses to redeclare a queue with another type: a classic redeclaration of a
    quorum queue fails with PRECONDITION_FAILED (406)."""
    from amqp.exceptions import PreconditionFailed
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=5) as connection:
        channel = connection.channel()
        try:
            channel.queue_declare(
                name, durable=True, auto_delete=False, arguments={"x-queue-type": "classic"}
            )
        except PreconditionFailed as exc:
            return "x-queue-type" in str(exc)
        return False


class TestRabbitMQBroker:
    def test_a_task_sent_is_run_by_a_real_worker_from_a_quorum_queue(
        self,
        r: redis.Redis,
        quorum_queue: str,
        celery_worker_process: Callable[..., CeleryProcess],
    ) -> None:
        env = {"CELERY_BROKER_URL": AMQP_URL}
        worker = celery_worker_process(env=env, concurrency=1, queues=quorum_queue)
        # Sent by a process configured like a web process with CELERY_BROKER_URL=amqp://...
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import django; django.setup(); from config.celery import app; "
                f"app.send_task('presence.flush_stats', queue={quorum_queue!r})",
            ],
            cwd=ROOT,
            env=celery_env(env),
            check=True,
            timeout=60,
        )
        wait_for(lambda: runs(r, "flush") == 1, "the worker to run the task from RabbitMQ")
        assert "presence.flush_stats" in worker.text()
        assert queue_type_is_quorum(quorum_queue)
        assert worker.proc.poll() is None


def test_queue_type_probe_tells_classic_from_quorum(quorum_queue: str) -> None:
    """The probe above can fail: a classic queue is not reported as quorum."""
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=5) as connection:
        connection.channel().queue_declare(quorum_queue, durable=True, auto_delete=False)
    assert not queue_type_is_quorum(quorum_queue)
