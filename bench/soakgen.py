"""Load generator for ``bench/soak.py``: ``--calls`` simulated Twilio calls at all times, with
churn, for ``--seconds``.

Usage (``bench/soak.py`` runs it; by hand only to debug)::

    python bench/soakgen.py --url http://127.0.0.1:8000 --token TWILIO_TOKEN --calls 100 \
        --seconds 600 [--min-call-s 20 --max-call-s 90 --seed 1]

Each of ``--calls`` slots places one call after another: a call lasts a random
``--min-call-s``..``--max-call-s`` seconds (cut short at the end of the run), and the next one
starts when it ends. Slots start spread over the first ``RAMP_S`` seconds. A call is what
``bench/loadgen.py`` does for one (its ``Call`` and ``setup``): the signed voice webhook, the
TwiML's stream URL and token, the signed media WebSocket, ``connected`` and ``start``, a probe
frame echoed end to end; then 20 ms mu-law frames at real-time pace with every ``mark``
acknowledged; then, like Twilio at hang-up, ``stop``, the close, and a signed ``completed``
status callback.

Protocol with the parent, one JSON object a line on stdout: ``{"ready": true}`` once started;
then for each line on stdin, ``go`` starts the run (no answer), ``sample`` is answered with the
counters so far and the round-trip figures since the previous sample (``finished`` once every
call has ended), and ``result`` with the totals, after which the generator exits.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import random
import sys
import time
from array import array
from typing import Any, Final

from loadgen import (
    FRAME_S,
    SETUP_CONCURRENCY,
    SETUP_TIMEOUT_S,
    TAIL_S,
    Call,
    emit,
    finish,
    post_signed,
    setup,
    twilio_params,
)

RAMP_S: Final = 10.0
"""Slots start evenly spread over this many seconds (or a tenth of the run, if shorter)."""
RETRY_S: Final = 1.0
"""After a call fails to set up, its slot waits this long before the next one."""
FINE_MS: Final = 100.0
"""Round trips are counted in 0.1 ms bins up to this, in 1 ms bins above (up to ``MAX_MS``)."""
MAX_MS: Final = 60_000.0
BINS: Final = int(FINE_MS * 10) + int(MAX_MS - FINE_MS) + 1


def _bin(ms: float) -> int:
    if ms < FINE_MS:
        return int(ms * 10)
    return min(int(FINE_MS * 10) + int(ms - FINE_MS), BINS - 1)


def _bin_top(index: int) -> float:
    """The upper bound of bin ``index``, in ms."""
    fine = int(FINE_MS * 10)
    return (index + 1) / 10 if index < fine else FINE_MS + (index - fine + 1)


def _quantile(ordered: list[float] | array[float], q: float) -> float | None:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None


class Soak:
    """The run's calls and what they counted. Ended calls fold into the totals and are
    dropped, so memory stays flat however long the run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.indices = itertools.count()
        self.live: dict[Call, tuple[int, int]] = {}  # call -> (round trips, lags) taken
        self.started = self.ended = self.failed = 0
        self.sent = self.back = self.marks = self.duplicates = self.unknown = 0
        self.status_codes: collections.Counter[str] = collections.Counter()
        self.close_codes: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.durations_s: list[float] = []
        self.window: array[float] = array("d")  # round trips since the last sample, ms
        self.lags: array[float] = array("d")  # how late frames left since the last sample, ms
        self.histogram = array("l", bytes(8 * BINS))  # every round trip of the run
        self.gate = asyncio.Semaphore(SETUP_CONCURRENCY)
        self.deadline = 0.0
        self.slots: list[asyncio.Task[None]] = []

    # -- calls ---------------------------------------------------------------------------

    async def run(self, http: Any, validator: Any) -> None:
        began = time.monotonic()
        self.deadline = began + self.args.seconds
        ramp = min(RAMP_S, self.args.seconds / 10)
        self.slots = [
            asyncio.create_task(self.slot(http, validator, ramp * k / self.args.calls))
            for k in range(self.args.calls)
        ]
        await asyncio.gather(*self.slots)

    async def slot(self, http: Any, validator: Any, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        while (left := self.deadline - time.monotonic()) >= FRAME_S * 10:
            seconds = min(self.rng.uniform(self.args.min_call_s, self.args.max_call_s), left)
            if not await self.call(http, validator, seconds):
                await asyncio.sleep(RETRY_S)

    async def call(self, http: Any, validator: Any, seconds: float) -> bool:
        """One call of ``seconds`` of audio, set up to hang-up; False if set-up failed."""
        call = Call(next(self.indices), round(seconds / FRAME_S), 0.0)
        self.started += 1
        began = time.monotonic()
        try:
            async with self.gate, asyncio.timeout(SETUP_TIMEOUT_S):
                await setup(self.args, call, http, validator)
        except Exception as exc:
            self.failed += 1
            self.errors[f"setup: {type(exc).__name__}: {exc}"[:160]] += 1
            if call.ws is not None:
                call.ws.transport.abort()
            if call.receiver is not None:
                call.receiver.cancel()
            return False
        self.live[call] = (0, 0)
        try:
            await call.stream(time.perf_counter())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TAIL_S):
                    await call.done.wait()
            await finish(call)
            reply = await post_signed(
                self.args, http, validator, "/webhooks/twilio/status",
                {**twilio_params(call, "completed"), "CallDuration": str(round(seconds))},
            )  # fmt: skip
            self.status_codes[str(reply.status_code)] += 1
        except Exception as exc:
            self.errors[f"call: {type(exc).__name__}: {exc}"[:160]] += 1
        finally:
            self._fold(call)
            self.durations_s.append(round(time.monotonic() - began, 2))
        return True

    def _fold(self, call: Call) -> None:
        self._take(call)
        del self.live[call]
        self.ended += 1
        self.sent += len(call.lag_ms)
        self.back += call.received
        self.marks += call.marks
        self.duplicates += call.duplicates
        self.unknown += call.unknown
        self.close_codes[str(call.close_code)] += 1
        if call.error:
            self.errors[call.error] += 1

    def _take(self, call: Call) -> None:
        """Move ``call``'s new round trips (into the sample window and the histogram) and send
        lags (into the sample's)."""
        rtt_seen, lag_seen = self.live[call]
        fresh = call.latency_ms[rtt_seen:]
        self.live[call] = (len(call.latency_ms), len(call.lag_ms))
        self.lags.extend(call.lag_ms[lag_seen:])
        self.window.extend(fresh)
        histogram = self.histogram
        for ms in fresh:
            histogram[_bin(ms)] += 1

    # -- reports -------------------------------------------------------------------------

    def sample(self) -> dict[str, Any]:
        for call in self.live:
            self._take(call)
        window, lags = sorted(self.window), sorted(self.lags)
        self.window, self.lags = array("d"), array("d")
        live = list(self.live)
        return {
            "started": self.started,
            "ended": self.ended,
            "failed": self.failed,
            "live": len(live),
            "frames_sent": self.sent + sum(len(c.lag_ms) for c in live),
            "frames_back": self.back + sum(c.received for c in live),
            "rtt_ms": {
                "n": len(window),
                "p50": _quantile(window, 0.50),
                "p99": _quantile(window, 0.99),
                "max": round(window[-1], 3) if window else None,
            },
            "send_lag_ms": {"p99": _quantile(lags, 0.99), "max": _quantile(lags, 1.0)},
            "finished": bool(self.slots) and all(t.done() for t in self.slots),
        }

    def result(self) -> dict[str, Any]:
        n = sum(self.histogram)
        cumulative, quantiles = 0, {}
        wanted = [(q, q * n) for q in (0.5, 0.99, 0.999)]
        for i, count in enumerate(self.histogram):
            cumulative += count
            while wanted and cumulative > wanted[0][1]:
                quantiles[f"p{wanted[0][0] * 100:g}"] = round(_bin_top(i), 1)
                wanted.pop(0)
        durations = sorted(self.durations_s)
        return {
            "calls_started": self.started,
            "calls_ended": self.ended,
            "calls_failed": self.failed,
            "frames_sent": self.sent,
            "frames_back": self.back,
            "marks_acked": self.marks,
            "duplicates": self.duplicates,
            "unknown": self.unknown,
            "rtt_ms": {"n": n, **quantiles},  # upper bounds of their bins
            "call_s": {
                "min": durations[0] if durations else None,
                "p50": _quantile(durations, 0.5),
                "max": durations[-1] if durations else None,
            },
            "status_callbacks": dict(self.status_codes),
            "close_codes": dict(self.close_codes),
            "errors": dict(self.errors.most_common(10)),
        }


async def main(args: argparse.Namespace) -> None:
    import httpx
    from twilio.request_validator import RequestValidator

    args.target = "voicegw"  # what loadgen.setup reads
    soak = Soak(args)
    validator = RequestValidator(args.token)
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=SETUP_CONCURRENCY * 2)
    async with httpx.AsyncClient(base_url=args.url, timeout=SETUP_TIMEOUT_S, limits=limits) as http:
        emit({"ready": True})
        running: asyncio.Task[None] | None = None
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            if line == "go" and running is None:
                running = asyncio.create_task(soak.run(http, validator))
            elif line == "sample":
                emit(soak.sample())
            elif line == "result":
                break
        if running is not None:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    emit(soak.result())  # after the client closed: the gateway sees every connection gone


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http://host:port of the gateway")
    parser.add_argument("--token", required=True, help="the gateway's Twilio auth token")
    parser.add_argument("--calls", type=int, required=True, help="concurrent calls")
    parser.add_argument("--seconds", type=float, required=True, help="length of the run")
    parser.add_argument("--min-call-s", type=float, default=20.0)
    parser.add_argument("--max-call-s", type=float, default=90.0)
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


if __name__ == "__main__":
    options = _options()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(options))
    else:
        uvloop.run(main(options))
