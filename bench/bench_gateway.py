"""Measure the gateway against the MCP SDK used directly, in one run, on loopback.

    python bench/bench_gateway.py [--calls 400] [--repeats 3]

Against a stdio server and a streamable HTTP server (`echo_server.py`, one `echo` tool):

  (a) the SDK in async code: `ClientSession.call_tool`, timed inside its event loop
  (b) `Gateway.call` from a plain thread, through the blocking portal
  (c) the HTTP API: `RemoteGateway.call` over keep-alive HTTP to an `ApiServer`
  (d) `toolscript serve`: the SDK's `ClientSession.call_tool` over stdio to a `serve`
      process that passes the call on to the same server
  (e) `/mcp`: the SDK's `ClientSession.call_tool` over streamable HTTP to a `toolscript
      gateway` process's `/mcp`, which passes the call on to the same server

Latencies are measured in interleaved rounds (a, b, c, d, e, a, b, ...), so that changes in
background load affect them alike; (a)'s, (d)'s and (e)'s event loops run in threads of
their own.

It prints per-call latency (median and p95) with the ratios b/a, c/a, d/a and e/a;
throughput with 1, 8 and 32 concurrent callers (threads for b and c, tasks on one session
for a, d and e); and the time to connect 1 versus 10 stdio servers. Every ratio is against
a baseline measured in the same run. Targets: b/a <= 1.15, c/a <= 1.5, d/a <= 1.3,
e/a <= 1.3, (e) with 32 callers at >= 0.8x (a)'s throughput, 10 servers in <= 1.5x the
time of 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import httpx2
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import Config, parse_config
from gateway import Gateway
from gateway_http import ApiServer, RemoteGateway

ECHO = str(Path(__file__).resolve().with_name("echo_server.py"))
WARMUP = 50
ROUNDS = 10
CONCURRENCY = (1, 8, 32)
TARGETS = {"b/a": 1.15, "c/a": 1.5, "d/a": 1.3, "e/a": 1.3, "start 10/1": 1.5}
THROUGHPUT_TARGET = 0.8  # (e)/(a) with 32 callers, at least
TOOLSCRIPT = str(Path(__file__).resolve().parent.parent / "toolscript.py")
ARGS = {"text": "hello"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per latency run and per throughput level")
    parser.add_argument("--repeats", type=int, default=3, help="start-up measurements of each kind")
    options = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {options.calls} calls per figure\n")
    verdicts: list[tuple[str, float, float]] = []
    direct: dict[str, float] = {}  # (a)'s median latency per kind
    with _http_echo_server() as url:
        for kind in ("stdio", "http"):
            cfg = parse_config({"servers": {"echo": _server_table(kind, url)}})
            with (
                _sdk(kind, url) as sdk,
                Gateway(cfg) as gateway,
                _api(gateway) as remote,
                _sdk(kind, url, through="serve") as serve,
                _sdk(kind, url, through="gateway") as mcp,
            ):
                verdicts += _latency(kind, sdk, gateway, remote, serve, mcp, options.calls, direct)
                verdicts.append(_throughput(kind, sdk, gateway, remote, serve, mcp, options.calls))
    # What any front over HTTP starts from: the SDK's own client and server over streamable HTTP,
    # against the same call over stdio. (e) stdio pays it, (e) http pays it twice.
    print(f"The SDK over streamable HTTP / over stdio, (a) http / (a) stdio: {direct['http'] / direct['stdio']:.2f}\n")
    verdicts.append(_startup(options.repeats))
    print("\nTargets")
    for name, value, target in verdicts:
        if name.startswith("throughput"):
            verdict = "ok" if value >= target else "MISSED"
            print(f"  {name:<18} {value:6.3f}  (target >= {target})  {verdict}")
        else:
            print(f"  {name:<18} {value:6.3f}  (target <= {target})  {'ok' if value <= target else 'MISSED'}")


# -- latency -------------------------------------------------------------------------


class _Sdk:
    """(a): one SDK session on its own event loop; every figure is timed inside async code."""

    def __init__(self, portal: Any, session: ClientSession) -> None:
        self._portal = portal
        self._session = session

    def latencies(self, calls: int) -> list[float]:
        return self._portal.call(self._latencies, calls)

    def throughput(self, workers: int, calls: int) -> float:
        return self._portal.call(self._throughput, workers, calls)

    async def _latencies(self, calls: int) -> list[float]:
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            await self._session.call_tool("echo", ARGS)
            times.append(time.perf_counter() - started)
        return times

    async def _throughput(self, workers: int, calls: int) -> float:
        per_worker = max(1, calls // workers)

        async def worker() -> None:
            for _ in range(per_worker):
                await self._session.call_tool("echo", ARGS)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)
        return per_worker * workers / (time.perf_counter() - started)


def _latency(
    kind: str,
    sdk: _Sdk,
    gateway: Gateway,
    remote: RemoteGateway,
    serve: _Sdk,
    mcp: _Sdk,
    calls: int,
    direct: dict[str, float],
) -> list[tuple[str, float, float]]:
    a: list[float] = []
    b: list[float] = []
    c: list[float] = []
    d: list[float] = []
    e: list[float] = []
    sdk.latencies(WARMUP)
    _timed(lambda: gateway.call("echo__echo", ARGS), WARMUP)
    _timed(lambda: remote.call("echo__echo", ARGS), WARMUP)
    serve.latencies(WARMUP)
    mcp.latencies(WARMUP)
    # Interleaved rounds, so that a change in background load hits all five alike.
    for _ in range(ROUNDS):
        a += sdk.latencies(calls // ROUNDS)
        b += _timed(lambda: gateway.call("echo__echo", ARGS), calls // ROUNDS)
        c += _timed(lambda: remote.call("echo__echo", ARGS), calls // ROUNDS)
        d += serve.latencies(calls // ROUNDS)
        e += mcp.latencies(calls // ROUNDS)
    direct[kind] = _median(a)
    print(f"Latency per call, {kind} server (median / p95, microseconds)")
    for label, times in (
        ("(a) SDK, async", a),
        ("(b) Gateway, thread", b),
        ("(c) HTTP API", c),
        ("(d) toolscript serve", d),
        ("(e) gateway /mcp", e),
    ):
        print(f"  {label:<22} {_median(times):8.0f} / {_p95(times):8.0f}")
    ratios = [
        (f"b/a {kind}", _median(b) / _median(a), TARGETS["b/a"]),
        (f"c/a {kind}", _median(c) / _median(a), TARGETS["c/a"]),
        (f"d/a {kind}", _median(d) / _median(a), TARGETS["d/a"]),
        (f"e/a {kind}", _median(e) / _median(a), TARGETS["e/a"]),
    ]
    print("  " + "   ".join(f"{name} = {value:.3f}" for name, value, _ in ratios) + "\n")
    return ratios


def _timed(call: Callable[[], Any], calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


# -- throughput ----------------------------------------------------------------------


def _throughput(
    kind: str, sdk: _Sdk, gateway: Gateway, remote: RemoteGateway, serve: _Sdk, mcp: _Sdk, calls: int
) -> tuple[str, float, float]:
    print(f"Throughput, {kind} server (calls per second; ratio to (a) at the same concurrency)")
    print(
        f"  {'callers':>7}  {'(a) SDK tasks':>14}  {'(b) Gateway':>18}  {'(c) HTTP API':>18}  {'(d) serve':>18}"
        f"  {'(e) /mcp':>18}"
    )
    ratio = 0.0
    for workers in CONCURRENCY:
        a = sdk.throughput(workers, calls)
        b = _threaded(lambda: gateway.call("echo__echo", ARGS), workers, calls)
        c = _threaded(lambda: remote.call("echo__echo", ARGS), workers, calls)
        d = serve.throughput(workers, calls)
        e = mcp.throughput(workers, calls)
        ratio = e / a
        print(
            f"  {workers:>7}  {a:>14.0f}  {b:>10.0f} ({b / a:4.2f})  {c:>10.0f} ({c / a:4.2f})"
            f"  {d:>10.0f} ({d / a:4.2f})  {e:>10.0f} ({e / a:4.2f})"
        )
    print()
    return f"throughput e/a {kind}", ratio, THROUGHPUT_TARGET  # at the highest concurrency


def _threaded(call: Callable[[], Any], workers: int, calls: int) -> float:
    return threaded_load(call, workers, calls)[0]


def threaded_load(call: Callable[[], Any], workers: int, calls: int) -> tuple[float, list[float]]:
    """Calls per second of `workers` threads making `calls` calls in all, and each call's latency."""
    per_worker = max(1, calls // workers)
    barrier = threading.Barrier(workers + 1, timeout=120)  # a failed worker must not hang the run
    times: list[float] = []

    def worker() -> None:
        call()  # opens this thread's HTTP connection before the clock starts
        barrier.wait()
        for _ in range(per_worker):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return per_worker * workers / (time.perf_counter() - started), times


# -- start-up ------------------------------------------------------------------------


def _startup(repeats: int) -> tuple[str, float, float]:
    gateway_times: dict[int, list[float]] = {1: [], 10: []}
    sdk_times: dict[int, list[float]] = {1: [], 10: []}
    for _ in range(repeats):
        for count in (1, 10):
            gateway_times[count].append(_gateway_start(_stdio_config(count)))
            sdk_times[count].append(anyio.run(_sdk_start, count))
    g1, g10 = statistics.median(gateway_times[1]), statistics.median(gateway_times[10])
    s1, s10 = statistics.median(sdk_times[1]), statistics.median(sdk_times[10])
    print(f"Start-up, stdio servers (median of {repeats}, seconds until every server is connected)")
    print(f"  {'':<26} {'1 server':>9} {'10 servers':>11} {'10/1':>6}")
    print(f"  {'Gateway.start()':<26} {g1:9.3f} {g10:11.3f} {g10 / g1:6.2f}")
    print(f"  {'SDK, concurrent tasks':<26} {s1:9.3f} {s10:11.3f} {s10 / s1:6.2f}")
    print(f"  Gateway / SDK for 10 servers: {g10 / s10:.2f}")
    return ("start 10/1", g10 / g1, TARGETS["start 10/1"])


def _gateway_start(cfg: Config) -> float:
    started = time.perf_counter()
    with Gateway(cfg) as gateway:
        elapsed = time.perf_counter() - started
        failed = [row for row in gateway.servers() if row["status"] != "connected"]
    if failed:
        raise SystemExit(f"start-up benchmark: servers failed: {failed}")
    return elapsed


async def _sdk_start(count: int) -> float:
    ready = [anyio.Event() for _ in range(count)]
    done = anyio.Event()

    async def hold(event: anyio.Event) -> None:
        async with _sdk_session("stdio", ""):
            event.set()
            await done.wait()

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for event in ready:
            tg.start_soon(hold, event)
        for event in ready:
            await event.wait()
        elapsed = time.perf_counter() - started
        done.set()
    return elapsed


# -- helpers -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _sdk_session(kind: str, url: str, through: str | None = None) -> AsyncIterator[ClientSession]:
    transport: Any
    with (
        tempfile.TemporaryDirectory(prefix="bench-front-") as home,
        open(os.devnull, "w") as devnull,
        contextlib.ExitStack() as stack,
    ):
        config = Path(home, "config.toml")
        table = _server_table(kind, url)
        config.write_text("[servers.echo]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
        env = {**os.environ, "TOOLSCRIPT_HOME": home}
        if through == "gateway":  # `toolscript gateway`'s /mcp, passing the calls on to the same server
            gateway_url, token = stack.enter_context(_gateway_process(config, env))
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
            transport = streamable_http_client(gateway_url + "/mcp", http_client=http)
        elif through == "serve":  # `toolscript serve` over stdio, passing the calls on to the same server
            transport = stdio_client(
                StdioServerParameters(
                    command=sys.executable,
                    args=[TOOLSCRIPT, "--config", str(config), "serve"],
                    env=env,
                ),
                errlog=devnull,
            )
        elif kind == "stdio":
            transport = stdio_client(
                StdioServerParameters(command=sys.executable, args=[ECHO, "stdio"]), errlog=devnull
            )
        else:
            transport = streamable_http_client(url)
        async with transport as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await session.list_tools()
            yield session


def _server_table(kind: str, url: str) -> dict[str, Any]:
    return {"command": sys.executable, "args": [ECHO, "stdio"]} if kind == "stdio" else {"url": url}


def _stdio_config(count: int) -> Config:
    return parse_config({"servers": {f"echo{i}": _server_table("stdio", "") for i in range(count)}})


@contextlib.contextmanager
def _sdk(kind: str, url: str, through: str | None = None) -> Iterator[_Sdk]:
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(_sdk_session(kind, url, through)) as session:
            yield _Sdk(portal, session)


@contextlib.contextmanager
def _gateway_process(config: Path, env: dict[str, str], toolscript: str = TOOLSCRIPT) -> Iterator[tuple[str, str]]:
    """`toolscript gateway` (of the checkout at `toolscript`) with `config`: its URL and API token."""
    proc = subprocess.Popen(
        [sys.executable, toolscript, "-q", "--config", str(config), "gateway"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(2))
        yield lines["TOOLSCRIPT_GATEWAY_URL"], lines["TOOLSCRIPT_GATEWAY_TOKEN"]
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def _http_echo_server() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, ECHO, "http"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("URL="):
            raise SystemExit(f"the HTTP echo server did not start: {line!r}")
        yield line.strip().split("=", 1)[1]
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def _api(gateway: Gateway) -> Iterator[RemoteGateway]:
    api = ApiServer(gateway)
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    try:
        yield RemoteGateway(api.url, token=api.token)  # the API's token check is part of what is measured
    finally:
        api.shutdown()
        api.server_close()


def _median(times: list[float]) -> float:
    return statistics.median(times) * 1e6


def _p95(times: list[float]) -> float:
    return statistics.quantiles(times, n=20)[-1] * 1e6


if __name__ == "__main__":
    main()
