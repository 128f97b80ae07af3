"""OAuth in the gateway, against the real OAuth-protected test server.

Tokens come from a real `toolscript auth` flow; the tests then age, spoil or move them
and check what the gateway (in this process, or `toolscript call` in others) does, counting
at the server what went over the wire.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from browser import visit
from conftest import (
    ROOT,
    cli,
    explain,
    finish_within,
    gateway_variables,
    lock_racer,
    run_cli,
    run_threads,
    start_gateway_process,
    write_config,
)

import auth
from config import load_config
from errors import AuthError, AuthRequiredError
from gateway import Gateway
from gateway_http import RemoteGateway
from redact import MASK
from storage import ClientInfo, Metadata, Record, Store, Tokens

NAME = "demo"


def setup_server(oauth_server: Any, **options: Any) -> Any:
    """Start the test server, configure it as `demo` and authenticate with the real flow."""
    server = oauth_server(**options)
    write_config(f'[servers.{NAME}]\ntype = "{server.transport}"\nurl = "{server.url}"\n')
    authenticate()
    return server


def authenticate() -> None:
    record = auth.authenticate(
        load_config().server(NAME), Store(), open_browser=visit, show_url=lambda url: None, timeout=30
    )
    assert record is not None and record.tokens is not None


def age_tokens(**changes: Any) -> Any:
    """Make the stored access token expired (and apply `changes` to the metadata); return the record."""
    store = Store()
    record = store.load(NAME)
    assert record is not None and record.tokens is not None
    record.tokens.expires_at = time.time() - 60
    for key, value in changes.items():
        setattr(record.metadata, key, value)
    store.save(NAME, record)
    return record


def refreshes(server: Any) -> list[Any]:
    return [seen for seen in server.requests_to("/token", "POST") if seen.form.get("grant_type") == "refresh_token"]


def row(gateway: Gateway) -> dict[str, Any]:
    return next(r for r in gateway.servers() if r["name"] == NAME)


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_restart_with_expired_token_refreshes_once_at_the_recorded_endpoint(oauth_server: Any, transport: str) -> None:
    server = setup_server(oauth_server, transport=transport)
    old = age_tokens(token_endpoint=server.origin + "/token?from=record")
    proc = run_cli("call", f"{NAME}__echo", '{"text": "after restart"}')
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == "after restart\n"
    [refresh] = refreshes(server)
    assert refresh.query == {"from": "record"}
    assert refresh.form["refresh_token"] == old.tokens.refresh_token
    assert refresh.form["resource"] == server.url  # RFC 8707 on refresh too
    new = Store().load(NAME)
    assert new.tokens.access_token != old.tokens.access_token
    assert new.tokens.refresh_token != old.tokens.refresh_token  # rotated, and the new one is stored
    assert new.tokens.refresh_token in server.provider.refresh_tokens
    assert new.tokens.expires_at > time.time() + 3000
    assert new.client == old.client


def test_refresh_response_without_refresh_token_keeps_the_old_one(oauth_server: Any) -> None:
    server = setup_server(oauth_server, rotate_refresh_tokens=False)
    old = age_tokens()
    with Gateway(load_config()) as gateway:
        assert gateway.call(f"{NAME}__add", {"a": 1, "b": 2})["structuredContent"] == {"result": 3}
    assert len(refreshes(server)) == 1
    new = Store().load(NAME)
    assert new.tokens.access_token != old.tokens.access_token
    assert new.tokens.refresh_token == old.tokens.refresh_token


def test_token_is_refreshed_a_little_before_expiry_not_after_a_failure(oauth_server: Any) -> None:
    server = setup_server(oauth_server)
    store = Store()
    record = store.load(NAME)
    record.tokens.expires_at = time.time() + 5  # still valid at the server, but about to expire
    record.tokens.issued_at = record.tokens.expires_at - 3600  # a 60-minute token
    store.save(NAME, record)
    first = len(server.tap.seen)
    with Gateway(load_config()) as gateway:
        gateway.call(f"{NAME}__echo", {"text": "x"})
    assert len(refreshes(server)) == 1
    used = [seen for seen in server.tap.seen[first:] if seen.path == "/mcp"]
    assert used, "the MCP endpoint was used"
    # No request went out with the old token first: every MCP request carried the new one.
    new = store.load(NAME).tokens.access_token
    assert {s.headers.get("authorization") for s in used} == {f"Bearer {new}"}


def test_a_sixty_minute_token_is_refreshed_shortly_before_expiry_not_minutes_early(oauth_server: Any) -> None:
    server = setup_server(oauth_server)
    store = Store()
    for remaining, expected in ((120, 0), (20, 1)):
        record = store.load(NAME)
        record.tokens.expires_at = time.time() + remaining
        record.tokens.issued_at = record.tokens.expires_at - 3600
        store.save(NAME, record)
        with Gateway(load_config()) as gateway:
            gateway.call(f"{NAME}__echo", {"text": "x"})
        assert len(refreshes(server)) == expected, f"{remaining} s before expiry"


def test_a_four_second_token_costs_one_call_at_most_one_refresh(oauth_server: Any) -> None:
    server = setup_server(oauth_server, token_lifetime=4)
    age_tokens()
    proc = run_cli("call", f"{NAME}__echo", '{"text": "short-lived"}')
    assert proc.returncode == 0, explain(proc)
    assert len(refreshes(server)) == 1  # a fresh 4 s token is not taken for an expired one
    assert Store().load(NAME).tokens.access_token in server.provider.access_tokens


def test_an_unusable_expires_in_on_refresh_keeps_the_new_tokens(oauth_server: Any) -> None:
    server = setup_server(oauth_server)
    old = age_tokens()
    server.send_expires_in("Infinity")
    proc = run_cli("call", f"{NAME}__echo", '{"text": "refreshed"}')
    assert proc.returncode == 0, explain(proc)
    assert "not a usable lifetime; treating the token's expiry as unknown" in proc.stderr
    new = Store().load(NAME).tokens
    assert new.expires_at is None
    assert new.refresh_token != old.tokens.refresh_token and new.refresh_token in server.provider.refresh_tokens
    assert len(refreshes(server)) == 1


def test_twenty_concurrent_calls_with_an_expired_token_cause_one_refresh(oauth_server: Any) -> None:
    server = setup_server(oauth_server)
    with Gateway(load_config()) as gateway:
        age_tokens()
        results: dict[int, Any] = {}

        def call(i: int) -> None:
            results[i] = gateway.call(f"{NAME}__echo", {"text": f"call {i}"})

        run_threads(call, 20)
        assert {i: r["content"][0]["text"] for i, r in results.items()} == {i: f"call {i}" for i in range(20)}
    assert len(refreshes(server)) == 1


RACER = lock_racer('["-v", "call", "demo__echo", \'{"text": "racer"}\']')


def test_two_processes_racing_to_refresh_cause_one_refresh(oauth_server: Any, tmp_path: Path) -> None:
    server = setup_server(oauth_server)
    age_tokens()
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(ROOT), str(barrier)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=90) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"{out}\n{err}"
        assert out == "racer\n"
    assert len(list(barrier.iterdir())) == 2
    # They overlapped: the one that took the lock second had read the expired token too, and
    # found under the lock the tokens the other had just refreshed.
    logs = sorted(err for _, err in outputs)
    refreshed = [err for err in logs if "refreshing the access token" in err]
    reused = [err for err in logs if "using tokens refreshed by another process" in err]
    assert len(refreshed) == 1 and len(reused) == 1 and refreshed != reused, "\n---\n".join(logs)
    assert len(refreshes(server)) == 1


def test_rejected_refresh_requires_auth_and_a_new_auth_recovers_the_running_gateway(oauth_server: Any) -> None:
    server = setup_server(oauth_server)
    with Gateway(load_config()) as gateway:
        assert row(gateway)["oauth_status"] == "authenticated"
        record = age_tokens()
        server.provider.refresh_tokens.clear()  # the server forgot the grant: invalid_grant
        with pytest.raises(AuthRequiredError) as caught:
            gateway.call(f"{NAME}__echo", {"text": "x"})
        assert str(caught.value) == (
            "Server 'demo' requires OAuth2 authorization (the refresh token was rejected: invalid_grant). "
            "Run: toolscript auth demo"
        )
        status = row(gateway)
        assert status["status"] == "auth_required"
        assert status["oauth_status"] == "authentication_failed"
        assert status["oauth_error"] == "the refresh token was rejected: invalid_grant"
        stored = Store().load(NAME)
        assert stored.tokens is None and stored.client == record.client  # tokens gone, registration kept

        authenticate()  # the user runs `toolscript auth demo` while the gateway runs
        assert gateway.call(f"{NAME}__echo", {"text": "back"})["content"][0]["text"] == "back"
        assert row(gateway)["status"] == "connected" and row(gateway)["oauth_status"] == "authenticated"
    assert len(server.requests_to("/register")) == 1  # the registration was reused


def test_rejected_refresh_keeps_a_newer_token_written_by_another_process(oauth_server: Any) -> None:
    from gateway_auth import StoredTokenAuth

    server = setup_server(oauth_server)
    age_tokens()
    server.provider.refresh_tokens.clear()
    store = Store()

    class Interleaved(StoredTokenAuth):
        # Another process writes fresh tokens just before this one's refusal is stored.
        async def _store_refresh(self, response: Any, used: Any) -> None:
            newer = store.load(NAME)
            newer.tokens.access_token = "written-by-another-process"
            store.save(NAME, newer)
            await super()._store_refresh(response, used)

    with Gateway(load_config(), auth=lambda cfg: Interleaved(store, cfg), store=store) as gateway:
        assert row(gateway)["status"] == "auth_required"
    assert store.load(NAME).tokens.access_token == "written-by-another-process"


def test_no_credentials_is_auth_required_with_the_command_and_others_unaffected(
    oauth_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = oauth_server()
    write_config(
        {
            NAME: {"url": server.url},
            "open": {"command": sys.executable, "args": [str(ROOT / "tests" / "servers" / "stdio_server.py")]},
        }
    )
    with caplog.at_level("WARNING"), Gateway(load_config()) as gateway:
        rows = {r["name"]: r for r in gateway.servers()}
        assert rows["open"]["status"] == "connected"
        assert rows[NAME]["status"] == "auth_required"
        assert rows[NAME]["error"] == "Server 'demo' requires OAuth2 authorization. Run: toolscript auth demo"
        assert "oauth_status" not in rows["open"] and "oauth_status" not in rows[NAME]  # not an OAuth server yet
        with pytest.raises(AuthRequiredError):
            gateway.call(f"{NAME}__echo", {"text": "x"})
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings.count("Server 'demo' requires OAuth2 authorization. Run: toolscript auth demo") == 1
    proc = run_cli("call", f"{NAME}__echo", '{"text": "x"}')
    assert proc.returncode == 3, explain(proc)
    assert proc.stderr.endswith("error: Server 'demo' requires OAuth2 authorization. Run: toolscript auth demo\n")


def test_pending_authorization_status_for_a_configured_oauth_server(oauth_server: Any) -> None:
    server = oauth_server()
    write_config(f'[servers.{NAME}]\nurl = "{server.url}"\n[servers.{NAME}.oauth]\nscopes = ["mcp:tools"]\n')
    with Gateway(load_config()) as gateway:
        assert row(gateway)["oauth_status"] == "pending_authorization"
    proc = run_cli("servers", "--json")
    assert json.loads(proc.stdout)[0]["oauth_status"] == "pending_authorization"


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_step_up_names_the_scope_and_the_next_auth_asks_for_the_union(oauth_server: Any, transport: str) -> None:
    server = setup_server(oauth_server, transport=transport, extra_scopes=("mcp:admin",))
    server.tap.step_up["whoami"] = "mcp:admin"
    proc = run_cli("call", f"{NAME}__whoami")
    assert proc.returncode == 3, explain(proc)
    assert proc.stderr.endswith(
        "error: Server 'demo' needs scope 'mcp:tools offline_access mcp:admin' for this request "
        "(insufficient_scope). Run: toolscript auth demo\n"
    )
    assert set(Store().load(NAME).metadata.step_up_scope.split()) == {"mcp:tools", "offline_access", "mcp:admin"}

    authenticate()
    last = server.requests_to("/authorize")[-1]
    assert set(last.query["scope"].split()) == {"mcp:tools", "offline_access", "mcp:admin"}
    proc = run_cli("call", f"{NAME}__whoami")
    assert proc.returncode == 0, explain(proc)
    assert "mcp:admin" in proc.stdout


def test_step_up_for_a_scope_already_granted_does_not_ask_for_auth(oauth_server: Any) -> None:
    server = setup_server(oauth_server)
    server.tap.step_up["whoami"] = "mcp:tools"
    server.tap.scopes_of = lambda token: set()  # the server claims the token lacks what it was granted
    with Gateway(load_config()) as gateway:
        with pytest.raises(AuthError) as caught:
            gateway.call(f"{NAME}__whoami")
        assert not isinstance(caught.value, AuthRequiredError)
        assert "which was already granted; authorizing again will not help" in str(caught.value)
        # Only that call failed: the session goes on.
        assert gateway.call(f"{NAME}__echo", {"text": "still here"})["content"][0]["text"] == "still here"


def test_tokens_stored_for_an_old_url_are_not_sent(oauth_server: Any) -> None:
    old_server = setup_server(oauth_server)
    token = Store().load(NAME).tokens.access_token
    new_server = oauth_server()
    write_config(f'[servers.{NAME}]\nurl = "{new_server.url}"\n')
    proc = run_cli("call", f"{NAME}__echo", '{"text": "x"}')
    assert proc.returncode == 3, explain(proc)
    assert proc.stderr.endswith(
        "error: Server 'demo' requires OAuth2 authorization (the stored tokens were issued for another URL). "
        "Run: toolscript auth demo\n"
    )
    sent = [seen.headers.get("authorization", "") for seen in new_server.tap.seen]
    assert sent and not any(token in value for value in sent)
    assert old_server.requests_to("/token") and not refreshes(old_server)


def test_no_secret_in_gateway_logs(oauth_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = setup_server(oauth_server)
    old = age_tokens()
    proc = run_cli("-v", "call", f"{NAME}__echo", '{"text": "x"}')
    assert proc.returncode == 0, explain(proc)
    new = Store().load(NAME)
    secrets = [
        old.tokens.access_token,
        old.tokens.refresh_token,
        new.tokens.access_token,
        new.tokens.refresh_token,
        new.client.client_secret,
    ]
    assert "refreshing the access token" in proc.stderr
    for secret in filter(None, secrets):
        assert secret not in proc.stderr and secret not in proc.stdout
    assert len(refreshes(server)) == 1


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_token_endpoint_failure_fails_the_call_promptly_and_releases_the_lock(
    oauth_server: Any, transport: str
) -> None:
    from errors import ConnectError

    server = setup_server(oauth_server, transport=transport)
    server.tap.documents["/broken-token"] = (503, {"error": "temporarily_unavailable"})
    old = age_tokens(token_endpoint=server.origin + "/broken-token")
    # Promptly: long before the call timeout (an hour) or the lock timeout (a StorageError).
    with Gateway(load_config(), call_timeout=3600) as gateway:
        with pytest.raises(ConnectError) as caught:
            finish_within(60, lambda: gateway.call(f"{NAME}__echo", {"text": "x"}))
        assert str(caught.value) == "Token refresh for server 'demo' failed: 503 temporarily_unavailable."
    record = Store().load(NAME)
    assert record.tokens == old.tokens  # kept for the next try
    assert record.metadata.last_error == "token refresh failed: 503 temporarily_unavailable"
    Store().release_lock(Store().acquire_lock(NAME, timeout=1))  # nobody holds it


def test_refused_dynamic_client_is_forgotten_so_auth_registers_again(oauth_server: Any) -> None:
    server = setup_server(oauth_server)
    age_tokens()
    server.provider.clients.clear()  # the server dropped the registration: invalid_client
    proc = run_cli("call", f"{NAME}__echo", '{"text": "x"}')
    assert proc.returncode == 3, explain(proc)
    assert "the refresh token was rejected: invalid_client" in proc.stderr
    assert Store().load(NAME).client is None
    authenticate()
    assert len(server.requests_to("/register")) == 2
    assert run_cli("call", f"{NAME}__echo", '{"text": "x"}').returncode == 0


def test_a_working_call_clears_the_last_error(oauth_server: Any) -> None:
    setup_server(oauth_server)
    store = Store()
    record = store.load(NAME)
    record.metadata.last_error = "token refresh failed: 503 temporarily_unavailable"
    store.save(NAME, record)
    assert json.loads(run_cli("servers", "--json").stdout)[0]["oauth_status"] == "authentication_failed"
    with Gateway(load_config()) as gateway:
        gateway.call(f"{NAME}__echo", {"text": "x"})
        assert row(gateway)["oauth_status"] == "authenticated"
    assert store.load(NAME).metadata.last_error is None


def test_a_step_up_fails_its_own_call_only_among_concurrent_calls(oauth_server: Any) -> None:
    server = setup_server(oauth_server, extra_scopes=("mcp:admin",))
    server.tap.step_up["whoami"] = "mcp:admin"
    with Gateway(load_config()) as gateway:
        outcomes: dict[int, Any] = {}

        def call(i: int) -> None:
            try:
                if i % 5 == 0:
                    gateway.call(f"{NAME}__whoami")
                    outcomes[i] = "no error"
                else:
                    outcomes[i] = gateway.call(f"{NAME}__echo", {"text": str(i)})["content"][0]["text"]
            except Exception as exc:  # recorded, then compared below
                outcomes[i] = exc

        run_threads(call, 30)
    for i, outcome in outcomes.items():
        if i % 5 == 0:
            assert isinstance(outcome, AuthRequiredError) and outcome.scope == "mcp:tools offline_access mcp:admin", i
        else:
            assert outcome == str(i)
    assert len(outcomes) == 30


def test_toolscript_gateway_warns_once_and_answers_401(oauth_server: Any) -> None:
    import signal
    import urllib.error
    import urllib.request

    server = oauth_server()
    write_config({NAME: {"url": server.url}})
    proc, first = start_gateway_process()
    try:
        url, token = gateway_variables(first).values()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        request = urllib.request.Request(f"{url}/tools/{NAME}__echo", data=b'{"text": "x"}', headers=headers)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == 401
        assert json.loads(caught.value.read()) == {
            "error": "Server 'demo' requires OAuth2 authorization. Run: toolscript auth demo",
            "kind": "auth_required",
            "server": "demo",
            "next_command": "toolscript auth demo",
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert err.count("Server 'demo' requires OAuth2 authorization. Run: toolscript auth demo") == 1, err


def test_unusable_refresh_answer_is_named_like_the_token_exchange_does(oauth_server: Any) -> None:
    from errors import ConnectError

    server = setup_server(oauth_server)
    server.tap.documents["/odd-token"] = (200, {"access_token": "at-odd", "token_type": "mac"})
    old = age_tokens(token_endpoint=server.origin + "/odd-token")
    with Gateway(load_config()) as gateway, pytest.raises(ConnectError) as caught:
        gateway.call(f"{NAME}__echo", {"text": "x"})
    assert str(caught.value) == "Token refresh for server 'demo' failed: token_type is 'mac', not Bearer."
    assert Store().load(NAME).tokens == old.tokens  # nothing half-usable is stored


ECHO_ROWS = """
import json, sys
sys.path.insert(0, sys.argv[1])
from config import load_config
from errors import ToolscriptError
from gateway import Gateway
with Gateway(load_config()) as gateway:
    try:
        gateway.call("demo__echo", {"text": "x"})
    except ToolscriptError as exc:
        print(json.dumps({"call": str(exc), "servers": gateway.servers()}))
"""


def test_credentials_echoed_by_the_token_endpoint_are_masked_everywhere(oauth_server: Any) -> None:
    server = setup_server(oauth_server)
    record = age_tokens()
    credentials = {"refresh token": record.tokens.refresh_token, "client secret": record.client.client_secret}
    server.echo_credentials()  # 400 invalid_request, every credential received in error_description
    # A fresh process: nothing is registered with `redact` before the gateway reads the record.
    proc = subprocess.run([sys.executable, "-c", ECHO_ROWS, str(ROOT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout, f"{proc.stdout}\n{proc.stderr}"
    answer = json.loads(proc.stdout)
    [sent] = refreshes(server)
    assert sent.form["refresh_token"] == record.tokens.refresh_token  # ... and echoed back
    assert sent.form["client_secret"] == record.client.client_secret
    stored = Store().load(NAME).metadata.last_error
    assert stored == (
        f"token refresh failed: 400 invalid_request: cannot use refresh_token is {MASK}; "
        f"client_id is {record.client.client_id}; client_secret is {MASK}"
    )
    shown = {
        "the record's last_error": stored,
        "the call's error": answer["call"],
        "the servers answer (GET /servers)": json.dumps(answer["servers"]),
    }
    for args in (("servers",), ("servers", "--json"), ("call", f"{NAME}__echo")):
        proc = run_cli(*args)
        shown[f"toolscript {' '.join(args)}"] = proc.stdout + proc.stderr
    assert MASK in shown["toolscript servers"] and MASK in shown["toolscript servers --json"]
    for where, text in shown.items():
        for what, value in credentials.items():
            assert value not in text, f"the {what} is in {where}: {text}"


def test_a_secret_stored_in_last_error_by_an_older_version_is_masked_when_shown() -> None:
    write_config(f'[servers.{NAME}]\nurl = "https://mcp.example.com/mcp"\n')
    refresh_token, client_secret = "rt-0123456789abcdef", "cs-0123456789abcdef"
    Store().save(
        NAME,
        Record(
            client=ClientInfo("cid", client_secret=client_secret),
            tokens=Tokens("at-0123456789abcdef", refresh_token=refresh_token),
            metadata=Metadata(
                server_url="https://mcp.example.com/mcp",
                last_error=f"token refresh failed: 400 invalid_request: {refresh_token}, {client_secret}",
            ),
        ),
    )
    for args in (("servers",), ("servers", "--json")):
        proc = run_cli(*args)
        assert proc.returncode == 0, explain(proc)
        assert f"400 invalid_request: {MASK}, {MASK}" in proc.stdout, explain(proc)
        assert refresh_token not in proc.stdout and client_secret not in proc.stdout


def _auth_list(capsys: pytest.CaptureFixture[str]) -> list[str]:
    code, out, _ = cli(capsys, "auth")
    assert code == 0
    return out.splitlines()


def test_a_server_whose_registrations_were_forgotten_is_listed_as_failed_and_auth_registers_anew(
    oauth_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = setup_server(oauth_server)
    # The authorization server restarted and forgot its registrations and the tokens it issued.
    for issued in (server.provider.clients, server.provider.access_tokens, server.provider.refresh_tokens):
        issued.clear()
    with Gateway(load_config()) as gateway, pytest.raises(AuthRequiredError) as caught:
        gateway.call(f"{NAME}__echo", {"text": "x"})  # 401, then a refresh answered invalid_client
    assert str(caught.value) == (
        "Server 'demo' requires OAuth2 authorization (the refresh token was rejected: invalid_client). "
        "Run: toolscript auth demo"
    )
    stored = Store().load(NAME)
    assert stored.client is None and stored.tokens is None  # forgotten at once, with the dead tokens
    [line, _, hint] = _auth_list(capsys)
    assert re.fullmatch(
        r"demo  failed \(the refresh token was rejected: invalid_client; \d{4}-\d\d-\d\d \d\d:\d\d, \d+ s ago\)", line
    ), line
    assert hint == "Run: toolscript auth demo"
    authenticate()  # what the hint says: no --forget-client needed
    assert len(server.requests_to("/register")) == 2
    assert _auth_list(capsys)[0].startswith("demo  authenticated (")


def test_a_rejected_token_is_listed_as_failed_never_as_authenticated(
    oauth_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = setup_server(oauth_server, refresh_tokens=False)
    assert _auth_list(capsys)[0].startswith("demo  authenticated (")
    server.provider.access_tokens.clear()  # the token still looks valid here
    with Gateway(load_config()) as gateway, pytest.raises(AuthRequiredError):
        gateway.call(f"{NAME}__echo", {"text": "x"})
    assert Store().load(NAME).tokens is not None
    line = _auth_list(capsys)[0]
    assert line.startswith("demo  failed (the server rejected the access token and there is no refresh token; "), line


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux)")
def test_refreshed_tokens_that_cannot_be_saved_are_kept_and_saved_when_the_disk_lets_them(oauth_server: Any) -> None:
    server = setup_server(oauth_server)  # it rotates refresh tokens: the spent one is dead at once
    old = age_tokens()
    path = Store().path(NAME)
    limit = 512  # bytes a file of the gateway may grow to: its token file fits, the record does not
    assert path.stat().st_size > limit
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "toolscript.py"), "gateway", "--wait", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A full disk, as far as this process can tell: writing past the limit fails with EFBIG.
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard)),
    )
    try:
        assert proc.stdout is not None
        url, token = (proc.stdout.readline().rstrip("\n").split("=", 1)[1] for _ in range(2))
        gateway = RemoteGateway(url, token)
        assert gateway.call(f"{NAME}__echo", {"text": "a"})["content"][0]["text"] == "a"
        assert len(refreshes(server)) == 1
        assert Store().load(NAME).tokens.access_token == old.tokens.access_token  # not saved
        # The next call uses the new tokens from memory: the spent refresh token is not sent again.
        assert gateway.call(f"{NAME}__echo", {"text": "b"})["content"][0]["text"] == "b"
        assert len(refreshes(server)) == 1
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (hard, hard))  # space again
        assert gateway.call(f"{NAME}__echo", {"text": "c"})["content"][0]["text"] == "c"
        saved = Store().load(NAME).tokens
        assert saved.refresh_token in server.provider.refresh_tokens  # the live, rotated one
        assert saved.access_token in server.provider.access_tokens
        assert len(refreshes(server)) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert (
        "Server 'demo': the refreshed tokens could not be saved (Cannot write " in err
        and "This process keeps them in memory and retries the write; if it ends first, the next use may need: "
        "toolscript auth demo"
        in err
    ), err
    assert "Server 'demo': the refreshed tokens are saved now." in err
