"""sandbox.py: a confined Python reaches its working directory and one TCP port, and nothing else.

Each escape attempt runs in one confined script beside a legitimate connection to the
allowed port; the same script run without the sandbox shows that every attempt would have
worked, so each assertion can fail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandbox

pytestmark = pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason=str(sandbox.unavailable_reason()))

ATTEMPTS = r"""
import json, os, signal, socket, subprocess, sys
spec = json.loads(sys.argv[1])
results = {}

def attempt(name, action):
    try:
        action()
        results[name] = "allowed"
    except BaseException as exc:
        results[name] = type(exc).__name__

def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"hello")
        if conn.recv(5) != b"hello":
            raise RuntimeError("no echo")

def fork_once():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

def write(path):
    with open(path, "w") as f:
        f.write("x")

attempt("connect_allowed_port", lambda: connect(spec["allowed_port"]))
attempt("write_work_dir", lambda: write(os.path.join(spec["work"], "out.txt")))
attempt("read_secret", lambda: open(spec["secret"]).read())
attempt("read_home", lambda: os.listdir(spec["home"]))
attempt("write_home", lambda: write(os.path.join(spec["home"], "planted")))
attempt("connect_other_port", lambda: connect(spec["other_port"]))
attempt("bind", lambda: socket.socket().bind(("127.0.0.1", 0)))
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", spec["other_port"])))
attempt("unix_socket", lambda: socket.socket(socket.AF_UNIX))
attempt("spawn_cat", lambda: subprocess.run(["/bin/cat", spec["secret"]], check=True, capture_output=True))
attempt("fork", fork_once)
attempt("proc_environ", lambda: open(f"/proc/{spec['parent_pid']}/environ", "rb").read())
attempt("signal_outside", lambda: os.kill(spec["victim_pid"], signal.SIGTERM))
attempt("thread", lambda: __import__("threading").Thread(target=lambda: None).start())
print(json.dumps(results))
"""

DENIED = [
    "read_secret",
    "read_home",
    "write_home",
    "connect_other_port",
    "bind",
    "udp",
    "unix_socket",
    "spawn_cat",
    "fork",
    "proc_environ",
    "signal_outside",
]


@pytest.fixture
def echo_ports() -> Iterator[tuple[int, int]]:
    """Two loopback echo servers: the port a script may reach, and one it may not."""
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    stop = threading.Event()

    def serve(server: socket.socket) -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                conn.sendall(conn.recv(5))

    threads = [threading.Thread(target=serve, args=(server,), daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    yield servers[0].getsockname()[1], servers[1].getsockname()[1]
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    for server in servers:
        server.close()


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def _run(tmp_path: Path, ports: tuple[int, int], victim_pid: int, *, confined: bool) -> dict[str, str]:
    home, work, secrets = tmp_path / "home", tmp_path / "work-dir", tmp_path / "secrets"
    for directory in (home, work, secrets):
        directory.mkdir(exist_ok=True)
    (home / "notes.txt").write_text("private")
    secret = secrets / "token.json"
    secret.write_text('{"access_token": "secret"}')
    script = tmp_path / "script" / "attempts.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(ATTEMPTS)
    spec = {
        "allowed_port": ports[0],
        "other_port": ports[1],
        "work": str(work),
        "home": str(home),
        "secret": str(secret),
        "parent_pid": os.getpid(),
        "victim_pid": victim_pid,
    }
    argv = [sys.executable, "-I", str(script), json.dumps(spec)]
    if confined:
        policy = sandbox.Policy(
            read=[*sandbox.python_read_paths(), str(script.parent)],
            write=[str(work)],
            connect_ports=[ports[0]],
            memory_bytes=1 << 30,
            cpu_seconds=60,
        )
        argv = sandbox.launcher(policy, argv)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=work, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_confined_script_reaches_its_port_and_work_dir_and_nothing_else(
    tmp_path: Path, echo_ports: tuple[int, int], victim: subprocess.Popen[bytes]
) -> None:
    results = _run(tmp_path, echo_ports, victim.pid, confined=True)
    assert results["connect_allowed_port"] == "allowed"
    assert results["write_work_dir"] == "allowed"
    assert results["thread"] == "allowed"
    escaped = {name: results[name] for name in DENIED if results[name] == "allowed"}
    assert escaped == {}, results
    assert victim.poll() is None, "the confined script signalled a process outside its sandbox"
    assert not (tmp_path / "home" / "planted").exists()


def test_the_same_attempts_succeed_unconfined(
    tmp_path: Path, echo_ports: tuple[int, int], victim: subprocess.Popen[bytes]
) -> None:
    """Without the sandbox every attempt works: the confined test's denials are the sandbox's doing."""
    results = _run(tmp_path, echo_ports, victim.pid, confined=False)
    assert {name: results[name] for name in DENIED} == dict.fromkeys(DENIED, "allowed")


def _confined(tmp_path: Path, code: str, **limits: int) -> subprocess.CompletedProcess[str]:
    policy = sandbox.Policy(read=sandbox.python_read_paths(), write=[str(tmp_path)], **limits)
    return subprocess.run(
        sandbox.launcher(policy, [sys.executable, "-I", "-c", code]),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={},
    )


def test_a_fork_bomb_ends_the_script_not_the_machine(tmp_path: Path) -> None:
    proc = _confined(tmp_path, "import os\nwhile True: os.fork()")
    assert proc.returncode == 1
    assert "PermissionError" in proc.stderr


def test_a_memory_bomb_hits_the_limit(tmp_path: Path) -> None:
    proc = _confined(tmp_path, "x = bytearray(1 << 31)", memory_bytes=1 << 30)
    assert proc.returncode == 1
    assert "MemoryError" in proc.stderr


def test_an_endless_loop_is_stopped_by_its_cpu_limit(tmp_path: Path) -> None:
    proc = _confined(tmp_path, "while True: pass", cpu_seconds=1)
    assert proc.returncode == -signal.SIGXCPU or proc.returncode == -signal.SIGKILL


def test_a_policy_naming_a_missing_path_fails_in_one_line(tmp_path: Path) -> None:
    policy = sandbox.Policy(read=[str(tmp_path / "missing")])
    proc = subprocess.run(sandbox.launcher(policy, ["/bin/true"]), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 126
    assert proc.stderr.startswith("error: cannot start the sandbox:")
    assert proc.stderr.count("\n") == 1


def test_the_seccomp_program_jumps_stay_inside_it() -> None:
    program = sandbox._seccomp_filter()
    words = program.program()
    for index, word in enumerate(words):
        op, jt, jf = word & 0xFFFF, (word >> 16) & 0xFF, (word >> 24) & 0xFF
        if op & 0x07 == 0x05:  # BPF_JMP
            assert index + 1 + max(jt, jf) < len(words)
    assert words[len(words) - 1] & 0xFFFF == 0x06  # ends in a return
