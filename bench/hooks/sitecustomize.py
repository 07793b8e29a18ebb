"""Bench-only start-up hook for the relay processes of ``bench/relay.py --gc-stats``.

``bench/relay.py`` puts this directory on ``PYTHONPATH`` of the process under test only when
asked; Python then imports this module at start-up. With ``BENCH_GC_LOG`` set it times
every garbage-collector pass (``gc.callbacks``) and, at exit, writes per generation the number
of passes, their total and longest pause, in milliseconds, as JSON to that path. With
``BENCH_GC_FREEZE_S`` set it also calls ``gc.freeze()`` that many seconds after start
(from a timer thread), to measure what freezing the start-up heap would save.
Nothing here runs in a normal ``voicegw serve``.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import threading
import time

_path = os.environ.get("BENCH_GC_LOG")
if _path:
    _stats = {g: {"passes": 0, "total_ms": 0.0, "max_ms": 0.0} for g in range(3)}
    _started = [0.0]

    def _time_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - _started[0]) * 1000
        entry = _stats[info["generation"]]
        entry["passes"] += 1
        entry["total_ms"] += ms
        entry["max_ms"] = max(entry["max_ms"], ms)

    def _write(path: str = _path) -> None:
        report = {
            "generations": _stats,
            "objects_at_exit": len(gc.get_objects()),
            "frozen": gc.get_freeze_count(),
        }
        with open(path, "w") as f:
            json.dump(report, f)

    gc.callbacks.append(_time_gc)
    atexit.register(_write)

_freeze = os.environ.get("BENCH_GC_FREEZE_S")
if _freeze:
    _timer = threading.Timer(float(_freeze), gc.freeze)
    _timer.daemon = True
    _timer.start()
