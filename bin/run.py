"""`make run`: migrations, optional superuser, embedded Redis if needed, then every process.

The web server (uvicorn), the event log's consumers (``manage.py presence_consume``), Celery
worker and Celery beat run under honcho (Procfile); Ctrl-C stops them all, and the embedded
redis-server with them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config.embedded_redis import RedisServer  # noqa: E402


def manage(*args: str, check: bool = True) -> int:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, check=check).returncode


def main() -> int:
    var = Path(os.environ.get("VAR_DIR", ROOT / "var"))
    var.mkdir(parents=True, exist_ok=True)
    env = os.environ
    # The Procfile's beat keeps its schedule file here (not a var/ of the working directory).
    env["VAR_DIR"] = str(var)
    server = None
    if not env.get("REDIS_URL"):
        port = int(env["EMBEDDED_REDIS_PORT"]) if env.get("EMBEDDED_REDIS_PORT") else None
        server = RedisServer(var / "redis", port=port).start()
        env["REDIS_URL"] = server.url
        (var / "redis.url").write_text(server.url + "\n")
        print(f"run: embedded redis-server at {server.url} (data under {var / 'redis'})")
    # The Procfile's `python` and `celery` must be the virtualenv's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("WEB_HOST", "127.0.0.1")
    env["WEB_PORT"] = env.get("PORT", "8000")
    env.setdefault("WS_MAX_MESSAGE_BYTES", "65536")
    try:
        manage("migrate", "--noinput")
        manage("check")
        # The admin's CSS/JS and ours, served by WhiteNoise from STATIC_ROOT.
        manage("collectstatic", "--noinput", "--verbosity", "0")
        if env.get("DJANGO_SUPERUSER_USERNAME") and env.get("DJANGO_SUPERUSER_PASSWORD"):
            env.setdefault("DJANGO_SUPERUSER_EMAIL", "")
            # Fails harmlessly when the user exists already.
            manage("createsuperuser", "--noinput", check=False)
        if not env.get("PROMETHEUS_MULTIPROC_DIR"):
            # Counters of every process (web, worker, beat) summed at /metrics
            # (presence/obs/metrics.py). Emptied at each start: files of dead pids would linger.
            metrics_dir = var / "prometheus"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        print(f"run: serving on http://{env['WEB_HOST']}:{env['WEB_PORT']}/ (Ctrl-C stops all)")
        honcho = subprocess.Popen(
            [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "start"], cwd=ROOT
        )
        # Ctrl-C reaches honcho through the terminal's process group; a SIGTERM sent to this
        # process alone (a supervisor, `timeout`) is passed on so no child is orphaned.
        signal.signal(signal.SIGTERM, lambda signum, frame: honcho.send_signal(signal.SIGTERM))
        while True:
            try:
                return honcho.wait()
            except KeyboardInterrupt:
                continue  # honcho got the same SIGINT and is stopping its children
    finally:
        if server is not None:
            server.stop()
            (var / "redis.url").unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
