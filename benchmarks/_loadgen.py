"""HTTP/1.1 load generator for benchmarks/serving.py: raw keep-alive connections on one uvloop event loop,
responses parsed by httptools (a few tens of microseconds of CPU a request, several times less than httpx).

Run as its own process, so its CPU is not the server's: it reads one JSON spec on stdin and writes one JSON
result on stdout.

  closed loop: `concurrency` connections, each sends its next request as soon as the last one is answered (after
               a 429, once its Retry-After has passed, as a well-behaved client does).
  open loop:   arrivals at Poisson times of `rate` per second, whatever the server does; a request waits for a
               free keep-alive connection or opens one (at most `max_connections`); latency counts from the
               scheduled arrival, so a slow server cannot hide its backlog (no coordinated omission).

Spec: {"host", "port", "requests": [raw HTTP requests as text, cycled], "mode": "closed"|"open",
       "concurrency", "rate", "warmup_s", "seconds", "timeout_s", "keep_bodies", "seed", "max_connections"}
Result: {"window_s", "latency_ms": [...], "status": [...], "index": [...], "done_s": [...] (answer time after the
         window's start), "bodies": [...] (keep_bodies),
         "timeouts", "connection_errors", "saturated", "cpu_s", "sent"}; only requests answered (closed loop) or
         arrived (open loop) inside the measured window (after the warm-up) are recorded.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field

import httptools


class RequestTimeout(Exception):
    """The server did not answer within timeout_s; the connection is dropped (a client gives up on it)."""


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self, keep_bodies: bool):
        self.keep_bodies = keep_bodies
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.body: list[bytes] = []
        self.retry_after: float | None = None
        self.usable = True

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad response: {exc}"))
            self.close()  # the stream is out of step with its requests: never reuse it

    def connection_lost(self, exc) -> None:
        self.usable = False
        self._fail(ConnectionError("connection closed by the server"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.body = []
        self.retry_after = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            try:
                self.retry_after = float(value)
            except ValueError:
                self.retry_after = None

    def on_body(self, body: bytes) -> None:
        if self.keep_bodies:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.usable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def _time_out(self) -> None:
        self.usable = False
        self._fail(RequestTimeout())
        self.close()

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.close()

    async def request(self, raw: bytes, timeout_s: float) -> tuple[int, bytes]:
        """(status, body) of one request; RequestTimeout or ConnectionError otherwise (the connection is then dead)."""
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        timer = loop.call_later(timeout_s, self._time_out)  # cheaper than wait_for: one timer handle
        try:
            self.transport.write(raw)
            return await self.waiter
        finally:
            timer.cancel()
            self.waiter = None


async def connect(host: str, port: int, keep_bodies: bool) -> Connection:
    _, conn = await asyncio.get_running_loop().create_connection(lambda: Connection(keep_bodies), host, port)
    return conn


@dataclass
class Recorder:
    """What happened inside the measured window [t0, t1] (perf_counter seconds)."""
    t0: float
    t1: float
    keep_bodies: bool
    latency_ms: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    done_s: list[float] = field(default_factory=list)  # when each answer came, seconds after t0
    bodies: list[str] = field(default_factory=list)
    timeouts: int = 0
    connection_errors: int = 0
    saturated: int = 0
    sent: int = 0

    def inside(self, t: float) -> bool:
        return self.t0 <= t <= self.t1

    def answer(self, index: int, started: float, status: int, body: bytes) -> None:
        now = time.perf_counter()
        self.latency_ms.append(round((now - started) * 1000, 3))
        self.done_s.append(round(now - self.t0, 4))
        self.status.append(status)
        self.index.append(index)
        if self.keep_bodies:
            self.bodies.append(body.decode("utf-8", "replace"))


async def closed_loop(spec: dict, raws: list[bytes], rec: Recorder) -> None:
    """`concurrency` connections, each sending its next request once the last is answered, until t1."""
    counter = iter(range(random.Random(spec["seed"]).randrange(len(raws)), 1 << 62))

    async def worker() -> None:
        conn: Connection | None = None
        while time.perf_counter() < rec.t1:
            if conn is None or not conn.usable:
                try:
                    conn = await connect(spec["host"], spec["port"], rec.keep_bodies)
                except OSError:
                    rec.connection_errors += time.perf_counter() >= rec.t0
                    await asyncio.sleep(0.01)
                    continue
            index = next(counter) % len(raws)
            started = time.perf_counter()
            try:
                status, body = await conn.request(raws[index], spec["timeout_s"])
            except RequestTimeout:
                rec.timeouts += rec.inside(started)
                continue
            except ConnectionError:
                rec.connection_errors += rec.inside(started)
                continue
            if rec.inside(time.perf_counter()):
                rec.sent += 1
                rec.answer(index, started, status, body)
            if status == 429:  # a well-behaved client backs off as told instead of hammering a full queue
                await asyncio.sleep(min(conn.retry_after or 1.0, max(0.0, rec.t1 - time.perf_counter())))
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))


async def open_loop(spec: dict, raws: list[bytes], rec: Recorder) -> None:
    """Poisson arrivals at spec["rate"] per second from now until t1; waits for the last answers (<= timeout_s)."""
    rng = random.Random(spec["seed"])
    idle: list[Connection] = []
    open_connections = 0
    pending: set[asyncio.Task] = set()

    async def one(index: int, scheduled: float) -> None:
        nonlocal open_connections
        counted = rec.inside(scheduled)
        rec.sent += counted
        conn = None
        while idle and conn is None:
            conn = idle.pop()
            conn = conn if conn.usable else None
        if conn is None:
            if open_connections >= spec["max_connections"]:
                rec.saturated += counted  # the generator's own limit: reported, never blamed on the server
                return
            open_connections += 1
            try:
                conn = await connect(spec["host"], spec["port"], rec.keep_bodies)
            except OSError:
                open_connections -= 1
                rec.connection_errors += counted
                return
        try:
            status, body = await conn.request(raws[index], spec["timeout_s"])
        except RequestTimeout:
            rec.timeouts += counted
        except ConnectionError:
            rec.connection_errors += counted
        else:
            if counted:
                rec.answer(index, scheduled, status, body)
        if conn.usable:
            idle.append(conn)
        else:
            conn.close()
            open_connections -= 1

    arrival = time.perf_counter()
    index = rng.randrange(len(raws))
    while True:
        arrival += rng.expovariate(spec["rate"])
        if arrival >= rec.t1:
            break
        delay = arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.get_running_loop().create_task(one(index % len(raws), arrival))
        pending.add(task)
        task.add_done_callback(pending.discard)
        index += 1
    if pending:
        await asyncio.wait(list(pending), timeout=spec["timeout_s"] + 1)
    for conn in idle:
        conn.close()


async def run(spec: dict) -> dict:
    """Run the spec's load; the measured window starts after warmup_s."""
    raws = [r.encode("utf-8") for r in spec["requests"]]
    start = time.perf_counter()
    rec = Recorder(t0=start + spec["warmup_s"], t1=start + spec["warmup_s"] + spec["seconds"],
                   keep_bodies=spec.get("keep_bodies", False))
    load = closed_loop if spec["mode"] == "closed" else open_loop
    task = asyncio.get_running_loop().create_task(load(spec, raws, rec))
    await asyncio.sleep(max(0.0, rec.t0 - time.perf_counter()))
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, rec.t1 - time.perf_counter()))
    cpu_s = time.process_time() - cpu0
    await task
    return {"window_s": spec["seconds"], "latency_ms": rec.latency_ms, "status": rec.status, "index": rec.index,
            "done_s": rec.done_s, "bodies": rec.bodies, "timeouts": rec.timeouts,
            "connection_errors": rec.connection_errors,
            "saturated": rec.saturated, "cpu_s": round(cpu_s, 4), "sent": rec.sent}


def main() -> None:
    spec = json.load(sys.stdin)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # uvloop is in uvicorn[standard]; plain asyncio still works, only slower
        runner = asyncio.run
    json.dump(runner(run(spec)), sys.stdout)


if __name__ == "__main__":
    main()
