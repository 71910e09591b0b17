"""The sampler's call tree and speedscope export (pure functions over a profile)."""

from __future__ import annotations

import threading

from presence.live import sampler


def _profile() -> sampler.Profile:
    frames = [
        {"name": "main", "file": "app.py", "line": 1},
        {"name": "work", "file": "app.py", "line": 10},
        {"name": "idle", "file": "app.py", "line": 20},
    ]
    return {
        "seconds": 1.0,
        "interval": 0.01,
        "samples": 100,
        "sampler_cpu_seconds": 0.001,
        "threads": ["MainThread", "worker"],
        "frames": frames,
        "stacks": [[0, [0, 1], 75], [0, [0, 2], 20], [1, [2], 5]],
        "dropped_stacks": 0,
    }


def test_call_tree_shares_and_nesting() -> None:
    tree = sampler.call_tree(_profile())
    main_thread, worker = tree
    assert (main_thread["name"], main_thread["percent"]) == ("thread MainThread", 95.0)
    (main,) = main_thread["children"]
    assert [(c["name"], c["samples"]) for c in main["children"]] == [("work", 75), ("idle", 20)]
    assert main["children"][0]["where"] == "app.py:10"
    assert worker["percent"] == 5.0


def test_call_tree_prunes_small_nodes() -> None:
    tree = sampler.call_tree(_profile(), min_percent=10)
    assert tree[1]["children"] == []  # the worker's 5 % frame


def test_speedscope_document() -> None:
    doc = sampler.to_speedscope(_profile(), name="p")
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert doc["shared"]["frames"][1]["name"] == "work"
    main, worker = doc["profiles"]
    assert main["type"] == "sampled" and main["unit"] == "seconds"
    assert main["samples"] == [[0, 1], [0, 2]] and main["weights"] == [0.75, 0.2]
    assert main["endValue"] == 0.95 and worker["name"] == "worker"


def test_sample_sees_other_threads_and_bounds_the_stacks() -> None:
    stop = threading.Event()

    def busy_worker() -> None:
        while not stop.is_set():
            sum(range(100))

    thread = threading.Thread(target=busy_worker, name="busy")
    thread.start()
    try:
        profile = sampler.sample(0.3)
    finally:
        stop.set()
        thread.join()
    assert "busy" in profile["threads"]
    assert any(f["name"].endswith(".busy_worker") for f in profile["frames"])
    # A thread holding the GIL delays the sampler's rounds (it then catches up).
    assert 10 <= profile["samples"] <= 35
    assert all(len(idxs) <= sampler.MAX_DEPTH for _, idxs, _ in profile["stacks"])
