"""Secure storage: modes, atomicity, locking, corruption, names, and tokens from a token endpoint's answer."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import storage
from errors import StorageError
from redact import redact
from storage import ClientInfo, Metadata, Record, Store, Tokens

URL = "https://mcp.example.com/mcp"


def sample_record() -> Record:
    return Record(
        client=ClientInfo(
            client_id="cid",
            client_secret="csecret",
            registration_source="dynamic",
            issuer="https://auth.example.com",
            redirect_uri="http://127.0.0.1:5555/callback",
            registered_at=1700000000.0,
            token_endpoint_auth_method="client_secret_post",
        ),
        tokens=Tokens(access_token="at-1", refresh_token="rt-1", scope="read write", expires_at=1800000000.0),
        metadata=Metadata(
            server_url=URL,
            issuer="https://auth.example.com",
            token_endpoint="https://auth.example.com/token",
            resource=URL,
        ),
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_round_trip_and_modes(isolated_env: Path) -> None:
    store = Store()
    store.save("github", sample_record())
    path = isolated_env / "oauth" / "github.toml"
    assert mode(path) == 0o600
    assert mode(isolated_env / "oauth") == 0o700
    assert store.load("github") == sample_record()
    text = path.read_text()
    assert "[client]" in text and "[tokens]" in text and "[metadata]" in text
    assert "revocation_endpoint" not in text  # no value: omitted


def test_new_home_directory_is_private(isolated_env: Path) -> None:
    Store().save("a", Record(tokens=Tokens(access_token="x")))
    assert mode(isolated_env) == 0o700


def test_loose_permissions_are_tightened_with_a_warning(isolated_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store()
    store.save("github", sample_record())
    path = isolated_env / "oauth" / "github.toml"
    os.chmod(path, 0o644)
    os.chmod(path.parent, 0o755)
    with caplog.at_level(logging.WARNING, logger="toolscript.storage"):
        assert store.load("github") == sample_record()
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    messages = [r.getMessage() for r in caplog.records]
    assert f"{path} had permissions 644; tightened to 600" in messages
    assert f"{path.parent} had permissions 755; tightened to 700" in messages


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_record_owned_by_another_user_is_refused(isolated_env: Path) -> None:
    store = Store()
    store.save("github", sample_record())
    path = isolated_env / "oauth" / "github.toml"
    os.chown(path, 4242, 4242)
    with pytest.raises(StorageError) as info:
        store.load("github")
    assert str(info.value) == (
        f"{path} is owned by another user (uid 4242); refusing to use it. Fix its ownership or remove it."
    )


def test_failed_replace_leaves_old_record_and_no_temp_file(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store()
    store.save("github", sample_record())
    before = (isolated_env / "oauth" / "github.toml").read_bytes()

    def crash(src: str, dst: str) -> None:
        assert Path(src).read_bytes() != before  # the new content was fully written first
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "replace", crash)
    changed = sample_record()
    changed.tokens = Tokens(access_token="at-2")
    with pytest.raises(StorageError):  # the OSError, as one line naming the file
        store.save("github", changed)
    monkeypatch.undo()
    assert (isolated_env / "oauth" / "github.toml").read_bytes() == before
    assert sorted(p.name for p in (isolated_env / "oauth").iterdir()) == ["github.toml"]


COUNTER_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from storage import Record, Store, Tokens

def bump(record):
    record = record or Record(tokens=Tokens(access_token="0"))
    record.tokens.access_token = str(int(record.tokens.access_token) + 1)
    return record

store = Store()
for _ in range(int(sys.argv[2])):
    store.update("shared", bump)
"""


def test_concurrent_updates_from_two_processes_lose_nothing(isolated_env: Path) -> None:
    rounds = 150
    root = str(Path(storage.__file__).parent)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", COUNTER_SCRIPT, root, str(rounds)],
            env={**os.environ, "TOOLSCRIPT_HOME": str(isolated_env)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    record = Store().load("shared")
    assert record is not None and record.tokens is not None
    assert record.tokens.access_token == str(2 * rounds)


def test_update_returning_none_deletes(isolated_env: Path) -> None:
    store = Store()
    store.save("a", sample_record())
    assert store.update("a", lambda record: None) is None
    assert store.load("a") is None and not store.exists("a")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is = = not toml", "not valid TOML"),
        (b"\xff\xfe", "not valid TOML"),
        (b"[tokens]\ntoken_type = 'Bearer'\n", "tokens.access_token is missing"),
        (b"[tokens]\naccess_token = 5\n", "tokens.access_token has the wrong type"),
        (b"tokens = 'x'\n", "[tokens] is not a table"),
        (
            b"[client]\nclient_id = 'x'\nregistration_source = 'stolen'\n",
            "client.registration_source 'stolen' is not one of ('dynamic', 'config', 'metadata_url')",
        ),
    ],
)
def test_corrupt_record_is_one_clear_error_and_is_not_overwritten(
    isolated_env: Path, content: bytes, reason: str
) -> None:
    store = Store()
    store.save("github", sample_record())
    path = isolated_env / "oauth" / "github.toml"
    path.write_bytes(content)
    with pytest.raises(StorageError) as info:
        store.load("github")
    assert str(info.value) == (
        f"OAuth record {path} is corrupt ({reason}); delete it, or log out and forget the client. "
        "Run: toolscript auth github --logout --forget-client"
    )
    with pytest.raises(StorageError):
        store.update("github", lambda record: record)
    assert path.read_bytes() == content


@pytest.mark.parametrize("name", ["../x", "/abs", "", "a\0b", "a/b", "..", "a__b"])
def test_names_that_could_escape_are_refused(isolated_env: Path, name: str) -> None:
    store = Store()
    for action in (store.load, store.exists, store.delete, lambda n: store.save(n, sample_record())):
        with pytest.raises(StorageError):
            action(name)
    assert not (isolated_env / "x").exists() and not Path("/abs.toml").exists()


def test_tokens_are_not_used_for_another_url(isolated_env: Path) -> None:
    store = Store()
    store.save("github", sample_record())
    record = store.load("github")
    assert record is not None
    assert record.tokens_for(URL) is not None
    assert record.tokens_for(URL + "/") is not None  # same resource
    assert record.tokens_for("HTTPS://MCP.example.com:443/mcp") is not None
    assert record.tokens_for("https://evil.example.com/mcp") is None
    assert record.tokens_for("https://mcp.example.com/other") is None
    assert record.tokens_for("http://mcp.example.com/mcp") is None


def test_token_answer_becomes_tokens_with_an_absolute_expiry() -> None:
    body = {
        "access_token": "at-answer-1",
        "token_type": "bearer",
        "expires_in": 3600,
        "scope": "a b",
        "refresh_token": "rt-answer-1",
        "id_token": "idt-answer-1",
    }
    tokens = Tokens.from_response(body, now=1000.0)
    assert tokens == Tokens(
        access_token="at-answer-1",
        token_type="Bearer",
        refresh_token="rt-answer-1",
        scope="a b",
        expires_at=4600.0,
        issued_at=1000.0,
    )
    assert Tokens.from_response(json.dumps(body).encode(), now=1000.0) == tokens  # the raw body reads the same
    # Every token of the answer is a secret from then on, the unused id_token too.
    assert redact("at-answer-1 rt-answer-1 idt-answer-1") == "[REDACTED] [REDACTED] [REDACTED]"


def test_token_answer_falls_back_to_what_it_leaves_out() -> None:
    tokens = Tokens.from_response(
        {"access_token": "at-2", "token_type": "Bearer"}, now=1000.0, scope="asked", refresh_token="rt-used"
    )
    assert (tokens.scope, tokens.refresh_token, tokens.expires_at) == ("asked", "rt-used", None)
    tokens = Tokens.from_response(
        {"access_token": "at-2", "token_type": "Bearer", "scope": "", "refresh_token": "", "expires_in": "soon"},
        now=1000.0,
        scope="asked",
    )
    assert (tokens.scope, tokens.refresh_token, tokens.expires_at) == ("asked", None, None)
    assert (
        Tokens.from_response(
            {"access_token": "at-2", "token_type": "Bearer", "expires_in": "60"}, now=1000.0
        ).expires_at
        == 1060.0
    )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>busy</html>", "the answer is not a JSON object"),
        (b"[1, 2]", "the answer is not a JSON object"),
        ({"token_type": "Bearer"}, "the answer has no access_token"),
        ({"access_token": "", "token_type": "Bearer"}, "the answer has no access_token"),
        ({"access_token": "at-3"}, "token_type is None, not Bearer"),
        ({"access_token": "at-3", "token_type": "mac"}, "token_type is 'mac', not Bearer"),
    ],
)
def test_unusable_token_answer_says_why(body: object, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        Tokens.from_response(body, now=0.0)  # type: ignore[arg-type]
    assert str(caught.value) == problem


def test_keys_from_a_newer_version_survive_an_update(isolated_env: Path) -> None:
    store = Store()
    store.save("github", sample_record())
    path = isolated_env / "oauth" / "github.toml"
    text = path.read_text().replace("[tokens]\n", '[tokens]\nbound_to = "dpop"\n')
    path.write_text(text + "\n[future]\nflag = true\n")

    def rotate(record: Record | None) -> Record:
        assert record is not None and record.tokens is not None
        record.tokens.access_token = "at-2"
        return record

    store.update("github", rotate)
    data = tomllib.loads(path.read_text())
    assert data["future"] == {"flag": True}
    assert data["tokens"]["bound_to"] == "dpop" and data["tokens"]["access_token"] == "at-2"


# -- hostile and broken files ---------------------------------------------------------

from conftest import explain, run_cli, write_config  # noqa: E402

import toolscript  # noqa: E402


def _plant(path: Path, kind: str) -> None:
    """Put a symbolic link (to a valid record), a directory or a FIFO where `path` should be."""
    path.unlink(missing_ok=True)
    if kind == "symlink":
        target = path.parent.parent / "elsewhere.toml"
        target.write_bytes((path.parent / "github.toml").read_bytes())
        path.symlink_to(target)
    elif kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo"])
@pytest.mark.parametrize("which", ["record", "lock"])
def test_a_planted_record_or_lock_file_is_one_line_and_exit_2(isolated_env: Path, kind: str, which: str) -> None:
    write_config(f'[servers.github]\nurl = "{URL}"\n[servers.demo]\nurl = "{URL}"\n')
    store = Store()
    store.save("github", sample_record())
    store.save("demo", sample_record())
    path = store.path("demo") if which == "record" else store.path("demo").with_suffix(".lock")
    _plant(path, kind)
    commands = [["auth", "demo", "--logout"]]
    if which == "record":
        commands += [["auth", "demo", "--status"], ["call", "demo__echo"]]
    for command in commands:
        proc = run_cli(*command, timeout=30)  # a FIFO opened for reading would block forever
        assert proc.returncode == 2, explain(proc)
        assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, explain(proc)
        assert proc.stderr.startswith("error: ") and str(path) in proc.stderr, explain(proc)
    if which == "record":
        proc = run_cli("auth", timeout=30)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, explain(proc)
        assert "demo    unreadable record: " in proc.stdout and str(path) in proc.stdout, explain(proc)
    else:
        assert store.load("demo") == sample_record()  # untouched


def test_a_full_disk_is_a_storage_error_naming_the_file(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(f'[servers.github]\nurl = "{URL}"\n')
    store = Store()
    store.save("github", sample_record())
    before = store.path("github").read_bytes()

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, os.strerror(28))  # ENOSPC

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError) as caught:
        store.save("github", sample_record())
    assert caught.value.path == str(store.path("github"))
    assert toolscript.main(["auth", "github", "--logout"]) == 2
    assert capsys.readouterr().err == f"error: Cannot write {store.path('github')}: No space left on device.\n"
    assert store.path("github").read_bytes() == before
    assert sorted(p.name for p in store.directory.iterdir()) == ["github.lock", "github.toml"]  # no temp file left


def test_a_read_only_directory_is_a_storage_error_naming_the_file(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Root ignores permission bits, so the read-only file system is played by os.open.
    write_config(f'[servers.github]\nurl = "{URL}"\n')
    store = Store()
    store.save("github", sample_record())
    real_open = os.open

    def read_only(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_CREAT and str(path).endswith(".tmp"):
            raise OSError(30, os.strerror(30), str(path))  # EROFS
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert toolscript.main(["auth", "github", "--logout"]) == 2
    assert capsys.readouterr().err == f"error: Cannot write {store.path('github')}: Read-only file system.\n"
    assert store.load("github") == sample_record()


def test_temporary_files_of_a_crashed_write_are_removed_by_the_next_write_and_by_logout(isolated_env: Path) -> None:
    write_config(f'[servers.github]\nurl = "{URL}"\n')
    store = Store()
    store.save("github", sample_record())

    def crash_leftovers() -> list[Path]:
        leftovers = [store.directory / f".github.toml.{n:012x}.tmp" for n in (1, 2)]
        for leftover in leftovers:
            leftover.write_text('[tokens]\naccess_token = "at-from-a-crash"\n')
        (store.directory / ".other.toml.000000000003.tmp").write_text("not ours")
        return leftovers

    def temporary_files() -> list[str]:
        return sorted(p.name for p in store.directory.iterdir() if p.name.endswith(".tmp"))

    crash_leftovers()
    store.update("github", lambda record: record)
    assert temporary_files() == [".other.toml.000000000003.tmp"]  # another record's are left alone
    crash_leftovers()
    assert toolscript.main(["auth", "github", "--logout"]) == 0
    assert temporary_files() == [".other.toml.000000000003.tmp"]
    store.delete("github")
    crash_leftovers()  # a crash during the very first write: no record at all
    assert toolscript.main(["auth", "github", "--logout"]) == 0
    assert temporary_files() == [".other.toml.000000000003.tmp"]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300", "-1e300"])
def test_a_stored_time_that_is_not_usable_is_read_as_unknown(
    isolated_env: Path, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    store = Store()
    store.save("github", sample_record())
    path = store.path("github")
    text = path.read_text().replace("expires_at = 1800000000.0", f"expires_at = {value}")
    path.write_text(text.replace("registered_at = 1700000000.0", f"registered_at = {value}"))
    with caplog.at_level(logging.WARNING, logger="toolscript.storage"):
        record = store.load("github")
    assert record is not None and record.tokens is not None and record.client is not None
    assert record.tokens.expires_at is None and record.client.registered_at is None
    assert f"{path}: tokens.expires_at = {float(value)!r} is not a usable time; treating it as unknown." in caplog.text
    from gateway_auth import _client_information

    _client_information(record.client)  # the SDK's model takes it: no OverflowError
    store.save("github", record)
    assert "expires_at" not in tomllib.loads(path.read_text())["tokens"]


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300])
def test_an_unusable_time_is_never_written(isolated_env: Path, value: float) -> None:
    record = sample_record()
    assert record.tokens is not None
    record.tokens.expires_at = value
    Store().save("github", record)
    assert "expires_at" not in tomllib.loads(Store().path("github").read_text())["tokens"]


def test_the_last_error_is_stored_with_when_it_happened(isolated_env: Path) -> None:
    store = Store()
    record = sample_record()
    record.metadata.note_error("the refresh token was rejected: invalid_client", now=1_700_000_000.0)
    store.save("github", record)
    loaded = store.load("github").metadata
    assert (loaded.last_error, loaded.last_error_at) == ("the refresh token was rejected: invalid_client", 1.7e9)
    loaded.note_error(None)
    assert (loaded.last_error, loaded.last_error_at) == (None, None)
