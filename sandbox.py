"""Run a program confined by the kernel: Landlock for files and TCP ports, seccomp for the rest.

It stands alone because it is both a library and a launcher. `toolscript exec` builds a
`Policy` and runs `launcher(policy, argv)`: a fresh Python (`-I -S`, this file only, the
standard library only) that sets resource limits, enters a Landlock domain, installs a
seccomp filter and then `execve`s the program. Confining a fresh single-threaded process
before `execve` avoids `preexec_fn`, which is unsafe in a process that runs a gateway's
threads, and the confinement survives `execve` and every thread and child after it.

What the confined program can do (Linux, Landlock ABI 4 or newer):
- files: read (and execute) beneath `Policy.read`, anything beneath `Policy.write`, and
  nothing else, root included;
- network: TCP connect to the ports in `Policy.connect_ports` only (Landlock rules name
  ports, not addresses), no TCP bind; the seccomp filter refuses every socket that is not
  TCP over IPv4 or IPv6 (so no UDP, no Unix sockets, no netlink, no raw sockets) and
  io_uring, whose operations would go around that filter;
- processes: no new process (`fork`, `vfork`, a `clone` that is not a thread), so a fork
  bomb or a `subprocess.run(["curl", ...])` fails with EPERM; with ABI 6 or newer it
  cannot signal processes outside its domain or reach abstract Unix sockets either; no
  ptrace, namespaces, mounts, BPF, keyrings or another process's memory;
- limits: CPU seconds, address space and open files (setrlimit).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import resource
import sys
from dataclasses import asdict, dataclass, field

__all__ = [
    "Policy",
    "SandboxUnavailable",
    "confine",
    "landlock_abi",
    "launcher",
    "python_read_paths",
    "unavailable_reason",
]

# The Landlock ABI this module needs: 4 brought the TCP port rules.
MIN_ABI = 4
# Without the sandbox, the processes the user may have (RLIMIT_NPROC counts all of theirs).
_UNCONFINED_PROCESSES = 4096


class SandboxUnavailable(Exception):
    """The kernel (or the operating system) cannot confine a program as `Policy` asks."""


@dataclass
class Policy:
    """What a confined program may use; paths must exist and be absolute."""

    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    connect_ports: list[int] = field(default_factory=list)
    memory_bytes: int | None = None
    cpu_seconds: int | None = None
    open_files: int = 256
    # False: the limits only, without Landlock and seccomp (`toolscript exec --no-sandbox`).
    confined: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Policy:
        return cls(**json.loads(text))


def launcher(policy: Policy, argv: list[str]) -> list[str]:
    """Return the command that runs `argv` (its first item an absolute path) under `policy`."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), policy.to_json(), "--", *argv]


def python_read_paths(executable: str = sys.executable) -> list[str]:
    """The paths a Python interpreter (this one, by default) reads to start and import its packages."""
    import sysconfig

    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    candidates.update(path for path in sysconfig.get_paths().values())
    candidates.add(os.path.dirname(os.path.realpath(executable)))
    if executable != sys.executable:
        candidates.add(os.path.dirname(os.path.abspath(executable)))
    # The shared libraries the interpreter and compiled extensions load, and the files the C
    # library reads for them; none holds a secret.
    candidates.update(
        ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache",
         "/etc/localtime", "/usr/share/zoneinfo", "/dev/null", "/dev/urandom", "/dev/zero")
    )  # fmt: skip
    return sorted(path for path in candidates if path and os.path.exists(path))


# == Landlock ==========================================================================

_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on x86_64 and aarch64
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2

_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
# Every filesystem right each ABI knows: handling all of them is what denies them.
_FS_ALL = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FS_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_NET_BIND_TCP = 1 << 0
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPortAttr(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


def _syscall(number: int, *args: object) -> int:
    result = _libc.syscall(number, *args)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(result)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where there is none (or it is disabled)."""
    if sys.platform != "linux":
        return 0
    try:
        return _syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except OSError:
        return 0


def unavailable_reason() -> str | None:
    """Why this machine cannot run the sandbox, or None when it can."""
    if sys.platform != "linux":
        return f"the sandbox needs Linux with Landlock; this is {platform.system()}"
    if _audit_arch() is None:
        return f"the sandbox's seccomp filter does not know this processor ({platform.machine()})"
    abi = landlock_abi()
    if abi == 0:
        return "this kernel has no Landlock (Linux 5.13 or newer, with landlock among its LSMs)"
    if abi < MIN_ABI:
        return f"this kernel's Landlock (ABI {abi}) cannot restrict network ports (ABI {MIN_ABI}, Linux 6.7, is needed)"
    return None


def _fs_all(abi: int) -> int:
    return _FS_ALL[max(key for key in _FS_ALL if key <= abi)]


def _enter_landlock(policy: Policy, abi: int) -> None:
    everything = _fs_all(abi)
    attr = _RulesetAttr(everything, _NET_BIND_TCP | _NET_CONNECT_TCP, 0)
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
    size = ctypes.sizeof(attr) if abi >= 6 else 16
    ruleset = _syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for paths, access in ((policy.read, _FS_READ), (policy.write, everything)):
            for path in paths:
                _allow_path(ruleset, path, access)
        for port in policy.connect_ports:
            rule = _NetPortAttr(_NET_CONNECT_TCP, port)
            _syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _RULE_NET_PORT, ctypes.byref(rule), ctypes.c_uint32(0))
        _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0))
    finally:
        os.close(ruleset)


def _allow_path(ruleset: int, path: str, access: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not os.path.isdir(path):
            # A file's rule may name only the rights a file has.
            access &= _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | (1 << 14) | (1 << 15)
        rule = _PathBeneathAttr(access, fd)
        _syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0))
    finally:
        os.close(fd)


# == seccomp ===========================================================================

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_CLONE_THREAD = 0x00010000
_SOCK_TYPE_MASK = 0xF
_X32_SYSCALL_BIT = 0x40000000

_ARCHES = {
    # machine: (AUDIT_ARCH, syscall numbers)
    "x86_64": (
        0xC000003E,
        {
            "socket": 41, "socketpair": 53, "clone": 56, "fork": 57, "vfork": 58, "clone3": 435,
            "ptrace": 101, "unshare": 272, "setns": 308, "mount": 165, "pivot_root": 155, "chroot": 161,
            "bpf": 321, "userfaultfd": 323, "perf_event_open": 298, "keyctl": 250, "add_key": 248,
            "request_key": 249, "process_vm_readv": 310, "process_vm_writev": 311,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "socket": 198, "socketpair": 199, "clone": 220, "clone3": 435,
            "ptrace": 117, "unshare": 97, "setns": 268, "mount": 40, "pivot_root": 41, "chroot": 51,
            "bpf": 280, "userfaultfd": 282, "perf_event_open": 241, "keyctl": 219, "add_key": 217,
            "request_key": 218, "process_vm_readv": 270, "process_vm_writev": 271,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        },
    ),
}  # fmt: skip
_REFUSED = (
    "socketpair", "fork", "vfork", "ptrace", "unshare", "setns", "mount", "pivot_root", "chroot", "bpf",
    "userfaultfd", "perf_event_open", "keyctl", "add_key", "request_key", "process_vm_readv",
    "process_vm_writev", "io_uring_setup", "io_uring_enter", "io_uring_register",
)  # fmt: skip


def _audit_arch() -> tuple[int, dict[str, int]] | None:
    return _ARCHES.get(platform.machine())


class _Filter:
    """A seccomp BPF program, written with labels instead of jump offsets."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def load(self, offset: int) -> None:
        self.code.append((0x20, 0, 0, offset))  # BPF_LD | BPF_W | BPF_ABS

    def jump_if(self, op: int, value: int, true: str | int, false: str | int = 0) -> None:
        self.code.append((op, true, false, value))

    def ret(self, value: int) -> None:
        self.code.append((0x06, 0, 0, value))  # BPF_RET | BPF_K

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def program(self) -> ctypes.Array[ctypes.c_uint64]:
        words = []
        for index, (op, true, false, value) in enumerate(self.code):
            jt = self.labels[true] - index - 1 if isinstance(true, str) else true
            jf = self.labels[false] - index - 1 if isinstance(false, str) else false
            assert 0 <= jt < 256 and 0 <= jf < 256
            words.append(op | jt << 16 | jf << 24 | value << 32)
        return (ctypes.c_uint64 * len(words))(*words)


_JEQ, _JGE, _JSET = 0x15, 0x35, 0x45  # BPF_JMP | BPF_K with JEQ, JGE, JSET
_NR, _ARCH, _ARG0, _ARG1 = 0, 4, 16, 24  # offsets in struct seccomp_data (low words, little-endian)


def _seccomp_filter() -> _Filter:
    arch, numbers = _audit_arch() or (0, {})
    f = _Filter()
    f.load(_ARCH)
    f.jump_if(_JEQ, arch, 1, 0)
    f.ret(_RET_KILL_PROCESS)
    f.load(_NR)
    if platform.machine() == "x86_64":
        f.jump_if(_JGE, _X32_SYSCALL_BIT, "enosys")
    # clone3 passes its flags in memory a filter cannot read: make the C library fall back to clone.
    f.jump_if(_JEQ, numbers["clone3"], "enosys")
    f.jump_if(_JEQ, numbers["clone"], "clone")
    f.jump_if(_JEQ, numbers["socket"], "socket")
    for name in _REFUSED:
        if name in numbers:
            f.jump_if(_JEQ, numbers[name], "eperm")
    f.ret(_RET_ALLOW)
    f.label("clone")
    f.load(_ARG0)
    f.jump_if(_JSET, _CLONE_THREAD, "allow", "eperm")
    f.label("socket")
    f.load(_ARG0)
    f.jump_if(_JEQ, 2, "socket_type")  # AF_INET
    f.jump_if(_JEQ, 10, "socket_type", "eperm")  # AF_INET6
    f.label("socket_type")
    f.load(_ARG1)
    f.code.append((0x54, 0, 0, _SOCK_TYPE_MASK))  # BPF_ALU | BPF_AND | BPF_K
    f.jump_if(_JEQ, 1, "allow", "eperm")  # SOCK_STREAM
    f.label("allow")
    f.ret(_RET_ALLOW)
    f.label("eperm")
    f.ret(_RET_ERRNO | errno.EPERM)
    f.label("enosys")
    f.ret(_RET_ERRNO | errno.ENOSYS)
    return f


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _install_seccomp() -> None:
    program = _seccomp_filter().program()
    fprog = _SockFprog(len(program), ctypes.cast(program, ctypes.c_void_p))
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


# == the launcher ======================================================================


def confine(policy: Policy) -> None:
    """Confine this process (and whatever it `execve`s) as `policy` says; raise if it cannot."""
    reason = unavailable_reason() if policy.confined else None
    if reason:
        raise SandboxUnavailable(reason)
    if policy.memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (policy.memory_bytes, policy.memory_bytes))
    if policy.cpu_seconds is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (policy.cpu_seconds, policy.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_NOFILE, (policy.open_files, policy.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    if not policy.confined:
        if os.getuid() != 0:  # root is exempt from RLIMIT_NPROC; for others it stops a fork bomb
            resource.setrlimit(resource.RLIMIT_NPROC, (_UNCONFINED_PROCESSES, _UNCONFINED_PROCESSES))
        return
    _enter_landlock(policy, landlock_abi())
    _install_seccomp()


def _main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        print("usage: sandbox.py POLICY_JSON -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    try:
        confine(Policy.from_json(args[0]))
        os.execv(args[2], args[2:])
    except (OSError, SandboxUnavailable, ValueError, TypeError) as exc:
        print(f"error: cannot start the sandbox: {exc}", file=sys.stderr)
    return 126


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
