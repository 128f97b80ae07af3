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
        client=ClientInfo(client_id="cid", client_secret="csecret", registration_source="dynamic",
                          issuer="https://auth.example.com", redirect_uri="http://127.0.0.1:5555/callback",
                          registered_at=1700000000.0, token_endpoint_auth_method="client_secret_post"),
        tokens=Tokens(access_token="at-1", refresh_token="rt-1", scope="read write", expires_at=1800000000.0),
        metadata=Metadata(server_url=URL, issuer="https://auth.example.com",
                          token_endpoint="https://auth.example.com/token", resource=URL),
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
    with pytest.raises(OSError):
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
        subprocess.Popen([sys.executable, "-c", COUNTER_SCRIPT, root, str(rounds)],
                         env={**os.environ, "TOOLSCRIPT_HOME": str(isolated_env)}, stderr=subprocess.PIPE, text=True)
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
        (b"[client]\nclient_id = 'x'\nregistration_source = 'stolen'\n",
         "client.registration_source 'stolen' is not one of ('dynamic', 'config', 'metadata_url')"),
    ],
)
def test_corrupt_record_is_one_clear_error_and_is_not_overwritten(isolated_env: Path, content: bytes, reason: str) -> None:
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
    body = {"access_token": "at-answer-1", "token_type": "bearer", "expires_in": 3600, "scope": "a b",
            "refresh_token": "rt-answer-1", "id_token": "idt-answer-1"}
    tokens = Tokens.from_response(body, now=1000.0)
    assert tokens == Tokens(access_token="at-answer-1", token_type="Bearer", refresh_token="rt-answer-1",
                            scope="a b", expires_at=4600.0)
    assert Tokens.from_response(json.dumps(body).encode(), now=1000.0) == tokens  # the raw body reads the same
    # Every token of the answer is a secret from then on, the unused id_token too.
    assert redact("at-answer-1 rt-answer-1 idt-answer-1") == "[REDACTED] [REDACTED] [REDACTED]"


def test_token_answer_falls_back_to_what_it_leaves_out() -> None:
    tokens = Tokens.from_response({"access_token": "at-2", "token_type": "Bearer"}, now=1000.0,
                                  scope="asked", refresh_token="rt-used")
    assert (tokens.scope, tokens.refresh_token, tokens.expires_at) == ("asked", "rt-used", None)
    tokens = Tokens.from_response({"access_token": "at-2", "token_type": "Bearer", "scope": "", "refresh_token": "",
                                   "expires_in": "soon"}, now=1000.0, scope="asked")
    assert (tokens.scope, tokens.refresh_token, tokens.expires_at) == ("asked", None, None)
    assert Tokens.from_response({"access_token": "at-2", "token_type": "Bearer", "expires_in": "60"},
                                now=1000.0).expires_at == 1060.0


@pytest.mark.parametrize(("body", "problem"), [
    (b"<html>busy</html>", "the answer is not a JSON object"),
    (b"[1, 2]", "the answer is not a JSON object"),
    ({"token_type": "Bearer"}, "the answer has no access_token"),
    ({"access_token": "", "token_type": "Bearer"}, "the answer has no access_token"),
    ({"access_token": "at-3"}, "token_type is None, not Bearer"),
    ({"access_token": "at-3", "token_type": "mac"}, "token_type is 'mac', not Bearer"),
])
def test_unusable_token_answer_says_why(body: object, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        Tokens.from_response(body, now=0.0)  # type: ignore[arg-type]
    assert str(caught.value) == problem


def test_keys_from_a_newer_version_survive_an_update(isolated_env: Path) -> None:
    store = Store()
    store.save("github", sample_record())
    path = isolated_env / "oauth" / "github.toml"
    text = path.read_text().replace("[tokens]\n", "[tokens]\nbound_to = \"dpop\"\n")
    path.write_text(text + "\n[future]\nflag = true\n")

    def rotate(record: Record | None) -> Record:
        assert record is not None and record.tokens is not None
        record.tokens.access_token = "at-2"
        return record

    store.update("github", rotate)
    data = tomllib.loads(path.read_text())
    assert data["future"] == {"flag": True}
    assert data["tokens"]["bound_to"] == "dpop" and data["tokens"]["access_token"] == "at-2"
