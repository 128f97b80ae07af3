"""Measure toolscript's fronts against their peers, mcp-proxy and mcpo, in one run, on loopback.

    python bench/bench_peers.py [--calls 300] [--callers 32] [--rounds 3] [--peers-dir DIR]

Every front fronts the same stdio server (`echo_server.py stdio`, one `echo` tool):

  direct     the SDK's `ClientSession.call_tool` over stdio to the server (the baseline)
  sdk-http   the SDK's own streamable HTTP server (`echo_server.py http`) and client: what any
             front over HTTP starts from (a reference, it fronts nothing)
  serve      `toolscript serve` over stdio, with the SDK's client
  sdk-proxy  `sdk_proxy.py`: the SDK's low-level server passing calls to the SDK's client, over
             stdio both ways; the least any proxy built on the SDK costs (a reference for serve)
  /mcp/echo  a `toolscript gateway` process's `/mcp/echo`, with the SDK's streamable HTTP client
  /mcp       the same gateway's `/mcp` (all servers; with one, its tools keep their names)
  mcp-proxy  mcp-proxy 0.13's streamable HTTP `/mcp`, with the SDK's streamable HTTP client
  REST       the same gateway's `POST /tools/echo__echo`, `http.client` on kept-alive connections
  mcpo       mcpo 0.0.20's `POST /echo`, `http.client` on kept-alive connections

Latency: the median of `--calls` sequential calls. Throughput: `--callers` concurrent callers
(tasks on one session for the MCP fronts, threads with a connection each for the REST ones)
making `--calls` calls in all; it also gives the median latency of a call under that load,
and the CPU time the process in the middle (the gateway, a peer) spent per call meanwhile,
which background load disturbs far less than throughput.
A round measures every front in turn; the order rotates from round to round, and each figure
is the best of `--rounds` rounds. Ratios are taken within the run, so that background load
hits all fronts alike.

mcp-proxy and mcpo are installed by this script, with pip, into virtual environments of their
own under `--peers-dir` (default: $XDG_CACHE_HOME/toolscript-bench, else ~/.cache/toolscript-bench).
They are never a dependency of toolscript. The first run needs the package index.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
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

ROOT = Path(__file__).resolve().parent.parent
# The gateway's and the HTTP echo server's processes, as bench_gateway.py starts them (this folder is on sys.path).
from bench_gateway import _gateway_process, _http_echo_server, threaded_load  # noqa: E402

ECHO = [sys.executable, str(ROOT / "bench" / "echo_server.py"), "stdio"]
SDK_PROXY = ROOT / "bench" / "sdk_proxy.py"
TOOLSCRIPT = str(ROOT / "toolscript.py")
ARGS = {"text": "hello"}
# Both peers are built on the SDK's v1 API, which mcpo 0.0.20 does not pin; nor does it pin
# FastAPI, whose later releases refuse the keyword arguments it passes.
PEERS = {"mcp-proxy": ["mcp-proxy==0.13.*", "mcp<2"], "mcpo": ["mcpo==0.0.20", "mcp<2", "fastapi<0.122"]}
WARMUP = 30
START_TIMEOUT = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="sequential calls per latency figure")
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers for throughput")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each figure is the best of them")
    parser.add_argument("--peers-dir", type=Path, default=_default_peers_dir(), help="where the peers are installed")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout of toolscript whose /mcp/echo and REST are measured too"
    )
    options = parser.parse_args()
    peers = {name: _install(options.peers_dir, name, specs) for name, specs in PEERS.items()}
    load = os.getloadavg()[0]
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load:.1f}, {options.calls} calls, "
        f"{options.callers} callers, best of {options.rounds} rounds\n"
    )
    with contextlib.ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-peers-")))
        config = home / "config.toml"
        config.write_text(f"[servers.echo]\ncommand = {json.dumps(ECHO[0])}\nargs = {json.dumps(ECHO[1:])}\n")
        env = {**os.environ, "TOOLSCRIPT_HOME": str(home)}
        gateway_url, token = stack.enter_context(_gateway_process(config, env))
        sdk_http_url = stack.enter_context(_http_echo_server())
        proxy_url = stack.enter_context(_peer_process("mcp-proxy", [str(peers["mcp-proxy"]), "--log-level", "WARNING"]))
        mcpo_url = stack.enter_context(_peer_process("mcpo", [str(peers["mcpo"])]))
        auth = {"Authorization": f"Bearer {token}"}
        fronts: dict[str, Front] = {
            "direct": stack.enter_context(_mcp_front(_stdio(ECHO), "echo")),
            "sdk-http": stack.enter_context(_mcp_front(_http(sdk_http_url), "echo")),
            "serve": stack.enter_context(
                _mcp_front(_stdio([sys.executable, TOOLSCRIPT, "--config", str(config), "serve"], env), "echo")
            ),
            "sdk-proxy": stack.enter_context(_mcp_front(_stdio([sys.executable, str(SDK_PROXY), *ECHO]), "echo")),
            "/mcp/echo": stack.enter_context(_mcp_front(_http(gateway_url + "/mcp/echo", auth), "echo")),
            "/mcp": stack.enter_context(_mcp_front(_http(gateway_url + "/mcp", auth), "echo")),
            "mcp-proxy": stack.enter_context(_mcp_front(_http(proxy_url + "/mcp"), "echo")),
            "REST": RestFront(gateway_url, "/tools/echo__echo", auth),
            "mcpo": RestFront(mcpo_url, "/echo", {}),
        }
        if options.baseline:  # the same fronts from another checkout, for a before/after in one run
            old_url, old_token = stack.enter_context(
                _gateway_process(config, env, str(options.baseline / "toolscript.py"))
            )
            old_auth = {"Authorization": f"Bearer {old_token}"}
            fronts["old /mcp"] = stack.enter_context(_mcp_front(_http(old_url + "/mcp/echo", old_auth), "echo"))
            fronts["old REST"] = RestFront(old_url, "/tools/echo__echo", old_auth)
        middles = {"/mcp/echo": gateway_url, "/mcp": gateway_url, "mcp-proxy": proxy_url, "REST": gateway_url}
        middles |= {"mcpo": mcpo_url, **({"old /mcp": old_url, "old REST": old_url} if options.baseline else {})}
        for name, url in middles.items():
            fronts[name].pid = _listener_pid(url)
        results = _measure(fronts, options.calls, options.callers, options.rounds)
    _report(results, options.callers)


# -- the fronts ----------------------------------------------------------------------


class Front:
    pid: int | None = None  # the process in the middle (a gateway, a peer), whose CPU time is measured

    def latencies(self, calls: int) -> list[float]:
        raise NotImplementedError

    def load(self, callers: int, calls: int) -> tuple[float, list[float]]:
        """Calls per second with `callers` concurrent callers, and each call's latency."""
        raise NotImplementedError


class McpFront(Front):
    """An SDK client session on an event loop of its own; every figure is timed inside async code."""

    def __init__(self, portal: Any, session: ClientSession, tool: str) -> None:
        self._portal = portal
        self._session = session
        self._tool = tool

    def latencies(self, calls: int) -> list[float]:
        return self._portal.call(self._latencies, calls)

    def load(self, callers: int, calls: int) -> tuple[float, list[float]]:
        return self._portal.call(self._load, callers, calls)

    async def _call(self) -> None:
        result = await self._session.call_tool(self._tool, ARGS)
        if result.is_error:
            raise RuntimeError(f"the call failed: {result}")

    async def _latencies(self, calls: int) -> list[float]:
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            await self._call()
            times.append(time.perf_counter() - started)
        return times

    async def _load(self, callers: int, calls: int) -> tuple[float, list[float]]:
        per_caller = max(1, calls // callers)
        times: list[float] = []

        async def caller() -> None:
            for _ in range(per_caller):
                started = time.perf_counter()
                await self._call()
                times.append(time.perf_counter() - started)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(caller)
        return per_caller * callers / (time.perf_counter() - started), times


class RestFront(Front):
    """JSON over `http.client`, one kept-alive connection per calling thread."""

    def __init__(self, url: str, path: str, headers: dict[str, str]) -> None:
        self._address = url.split("//", 1)[1].split("/", 1)[0]
        self._path = path
        self._headers = {**headers, "Content-Type": "application/json"}
        self._body = json.dumps(ARGS).encode()
        self._local = threading.local()

    def _call(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            host, port = self._address.rsplit(":", 1)
            connection = self._local.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.request("POST", self._path, self._body, self._headers)
            response = connection.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected):
            # uvicorn (mcpo) closes a connection idle for 5 s, as between two rounds: open another.
            connection.close()
            connection.request("POST", self._path, self._body, self._headers)
            response = connection.getresponse()
        body = response.read()
        if response.status != 200 or b"hello" not in body:
            raise RuntimeError(f"the call failed: {response.status} {body[:200]!r}")

    def latencies(self, calls: int) -> list[float]:
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            self._call()
            times.append(time.perf_counter() - started)
        return times

    def load(self, callers: int, calls: int) -> tuple[float, list[float]]:
        return threaded_load(self._call, callers, calls)


# -- measuring -----------------------------------------------------------------------


def _measure(fronts: dict[str, Front], calls: int, callers: int, rounds: int) -> dict[str, dict[str, float]]:
    names = list(fronts)
    for name in names:  # warm up every front, and check it answers
        with _named(name):
            fronts[name].latencies(WARMUP)
            fronts[name].load(callers, callers)
    best: dict[str, dict[str, float]] = {}
    for round_number in range(rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            with _named(name):
                latency = statistics.median(fronts[name].latencies(calls))
                pid, cpu_before = fronts[name].pid, _cpu_seconds(fronts[name].pid)
                rate, loaded = fronts[name].load(callers, max(calls, callers))
                cpu = (_cpu_seconds(pid) - cpu_before) / max(calls, callers) if pid else float("nan")
            row = best.setdefault(
                name, {"latency": float("inf"), "rate": 0.0, "loaded": float("inf"), "cpu": float("inf")}
            )
            row["latency"] = min(row["latency"], latency)
            row["rate"] = max(row["rate"], rate)
            row["loaded"] = min(row["loaded"], statistics.median(loaded))
            row["cpu"] = min(row["cpu"], cpu) if pid else cpu
        print(f"  round {round_number + 1} done, load {os.getloadavg()[0]:.1f}", flush=True)
    return best


@contextlib.contextmanager
def _named(front: str) -> Iterator[None]:
    """End the run with one line naming the front that failed and the innermost error."""
    try:
        yield
    except Exception as exc:  # an exception group hides its cause ten levels down
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        # Said here: on its way out through the sessions' task groups it gets wrapped again.
        print(f"{front} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _report(results: dict[str, dict[str, float]], callers: int) -> None:
    direct = results["direct"]
    print(
        f"\n{'front':<10} {'latency us':>10} {'vs direct':>9}   {'calls/s':>8} {'vs direct':>9}   "
        f"{'latency at ' + str(callers):>14} {'vs direct':>9}   {'CPU us/call':>11}"
    )
    for name, row in results.items():
        cpu = f"{row['cpu'] * 1e6:11.0f}" if row["cpu"] == row["cpu"] else f"{'':>11}"  # NaN: not measured
        print(
            f"{name:<10} {row['latency'] * 1e6:10.0f} {row['latency'] / direct['latency']:8.2f}x   "
            f"{row['rate']:8.0f} {row['rate'] / direct['rate']:8.2f}x   "
            f"{row['loaded'] * 1e6:14.0f} {row['loaded'] / direct['loaded']:8.2f}x   {cpu}"
        )
    proxy, mcpo = results["mcp-proxy"], results["mcpo"]
    goals: list[tuple[str, float, str, float]] = []
    for front in ("/mcp/echo", "/mcp"):
        goals.append((f"{front} latency / mcp-proxy's", results[front]["latency"] / proxy["latency"], "<=", 1.0))
        goals.append((f"{front} throughput / mcp-proxy's", results[front]["rate"] / proxy["rate"], ">=", 1.0))
    goals.append(("serve latency / direct", results["serve"]["latency"] / direct["latency"], "<=", 1.3))
    goals.append(("REST latency / mcpo's", results["REST"]["latency"] / mcpo["latency"], "<=", 1.0))
    goals.append(("REST throughput / mcpo's", results["REST"]["rate"] / mcpo["rate"], ">=", 1.0))
    goals.append(
        (f"REST latency at {callers} callers / direct", results["REST"]["loaded"] / direct["loaded"], "<=", 1.5)
    )
    print("\nGoals (issue 20)")
    for label, value, relation, goal in goals:
        met = value <= goal if relation == "<=" else value >= goal
        print(f"  {label:<36} {value:6.2f}  (goal {relation} {goal})  {'met' if met else 'MISSED'}")
    for front, peer in (("/mcp/echo", proxy), ("/mcp", proxy), ("REST", mcpo)):
        cpu = results[front]["cpu"] / peer["cpu"]
        print(f"  {front} CPU per call under load / its peer's: {cpu:.2f} (no goal; less noisy than throughput)")
    floor = results["sdk-proxy"]["latency"]
    print(
        f"  serve / the SDK's least proxy (sdk_proxy.py): latency {results['serve']['latency'] / floor:.2f}x; "
        f"that proxy / direct: {floor / direct['latency']:.2f}x (no goal)"
    )
    sdk_http = results["sdk-http"]
    for front in ("/mcp/echo", "/mcp"):
        latency, rate = results[front]["latency"] / sdk_http["latency"], results[front]["rate"] / sdk_http["rate"]
        print(f"  {front} / the SDK's own streamable HTTP: latency {latency:.2f}x, throughput {rate:.2f}x (no goal)")


# -- processes and sessions ----------------------------------------------------------


def _default_peers_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "toolscript-bench"


def _install(peers_dir: Path, name: str, specs: list[str]) -> Path:
    """The path of peer `name`'s command, installed with pip into a virtual environment of its own."""
    venv = peers_dir / specs[0].replace("==", "-").replace("*", "x")
    command = venv / "bin" / name
    if not command.exists():
        print(f"installing {' '.join(specs)} into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *specs], capture_output=True)
        if pip.returncode != 0:
            command.unlink(missing_ok=True)
            raise SystemExit(f"pip could not install {specs}:\n{pip.stderr.decode(errors='replace')[-2000:]}")
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "show", name], capture_output=True, text=True, check=True
    ).stdout
    print(f"{name} {next(line.split()[1] for line in version.splitlines() if line.startswith('Version:'))}")
    return command


def _cpu_seconds(pid: int | None) -> float:
    """User and system CPU time of process `pid` so far (0 without one)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _listener_pid(url: str) -> int | None:
    """The process listening on the loopback port of `url` (found through /proc; None elsewhere)."""
    port = int(url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                return int(fd_dir.parent.name)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _peer_process(name: str, command: list[str]) -> Iterator[str]:
    """A peer fronting the echo server on a free loopback port; its base URL once it accepts connections."""
    port = _free_port()
    argv = [*command, "--host", "127.0.0.1", "--port", str(port), "--", *ECHO]  # the same for both peers
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc, name)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_for_port(port: int, proc: subprocess.Popen[Any], name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode} before it listened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)  # polling a child's start-up, bounded by START_TIMEOUT
    raise SystemExit(f"{name} did not listen on port {port} within {START_TIMEOUT:.0f} s")


def _stdio(command: list[str], env: dict[str, str] | None = None) -> Callable[[], Any]:
    def transport() -> Any:
        params = StdioServerParameters(command=command[0], args=command[1:], env=env)
        return stdio_client(params, errlog=open(os.devnull, "w"))  # open as long as the run

    return transport


def _http(url: str, headers: dict[str, str] | None = None) -> Callable[[], Any]:
    def transport() -> Any:
        client = httpx2.AsyncClient(headers=headers or {}, timeout=60)
        return streamable_http_client(url, http_client=client)

    return transport


@contextlib.asynccontextmanager
async def _session(transport: Callable[[], Any]) -> AsyncIterator[ClientSession]:
    async with transport() as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        yield session


@contextlib.contextmanager
def _mcp_front(transport: Callable[[], Any], tool: str) -> Iterator[McpFront]:
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(_session(transport)) as session,
    ):
        yield McpFront(portal, session, tool)


if __name__ == "__main__":
    main()
