"""`toolscript auth` end to end: the real CLI in a subprocess, a real OAuth MCP server from
the SDK, and `$BROWSER` set to a stand-in browser that follows the authorization redirect."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from conftest import ROOT, explain, run_cli, write_config
from oauth_server import pkce_challenge, with_query


def _config(server, name: str = "demo", oauth: str = "") -> None:
    write_config(f'[servers.{name}]\ntype = "{server.transport}"\nurl = "{server.url}"\n{oauth}')


def _record(home: Path, name: str = "demo") -> dict:
    return tomllib.loads((home / "oauth" / f"{name}.toml").read_text())


def test_flow_stores_record_with_private_modes(oauth_server, browser, isolated_env):
    server = oauth_server()
    _config(server)
    before = time.time()
    proc = run_cli("auth", "demo", env=browser)
    after = time.time()
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.startswith(
        "✓ Authenticated 'demo' (scopes: mcp:tools offline_access; expires in 59 min; refresh token: yes)"
    ), explain(proc)
    for step in (
        "Probing",
        "protected resource metadata",
        "authorization server metadata",
        "Registering a client",
        "Open this URL",
        "Waiting for the authorization",
        "Exchanging the authorization code",
    ):
        assert step in proc.stderr, explain(proc)

    path = isolated_env / "oauth" / "demo.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    record = _record(isolated_env)
    provider = server.provider
    [registered] = provider.registrations
    client, tokens, meta = record["client"], record["tokens"], record["metadata"]
    assert client["client_id"] == registered.client_id
    assert client["client_secret"] == registered.client_secret
    assert client["registration_source"] == "dynamic"
    assert client["token_endpoint_auth_method"] == registered.token_endpoint_auth_method == "client_secret_post"
    assert client["issuer"] == server.origin
    assert client["redirect_uri"].startswith("http://127.0.0.1:") and client["redirect_uri"].endswith("/callback")
    assert tokens["access_token"] in provider.access_tokens
    assert tokens["refresh_token"] in provider.refresh_tokens
    assert tokens["scope"] == "mcp:tools offline_access"
    assert before + 3600 <= tokens["expires_at"] <= after + 3600  # absolute: received at + expires_in
    assert meta == {
        "server_url": server.url,
        "issuer": server.origin,
        "token_endpoint": server.origin + "/token",
        "authorization_endpoint": server.origin + "/authorize",
        "revocation_endpoint": server.origin + "/revoke",
        "resource": server.url,
        "discovery": meta["discovery"],
        "scope_requested": "mcp:tools offline_access",
    }


def test_pkce_verifier_and_resource_reach_the_server(oauth_server, browser):
    server = oauth_server()
    _config(server)
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 0, explain(proc)
    [authorize] = server.requests_to("/authorize")
    [token] = server.requests_to("/token")
    assert authorize.query["code_challenge_method"] == "S256"
    assert authorize.query["resource"] == token.form["resource"] == server.url
    assert authorize.query["response_type"] == "code"
    assert len(authorize.query["state"]) >= 32
    form = token.form
    assert form["grant_type"] == "authorization_code"
    assert pkce_challenge(form["code_verifier"]) == authorize.query["code_challenge"]
    assert form["redirect_uri"] == authorize.query["redirect_uri"]


def test_second_run_reuses_the_registration_and_redirect_uri(oauth_server, browser, isolated_env):
    server = oauth_server()
    _config(server)
    first = run_cli("auth", "demo", env=browser)
    second = run_cli("auth", "demo", env=browser)
    assert first.returncode == 0 and second.returncode == 0, explain(second)
    assert len(server.provider.registrations) == 1
    assert len(server.requests_to("/register")) == 1
    one, two = server.requests_to("/authorize")
    assert one.query["redirect_uri"] == two.query["redirect_uri"]
    assert one.query["client_id"] == two.query["client_id"]
    assert one.query["state"] != two.query["state"]
    assert "Using the client registration stored" in second.stderr


def _preregistered(oauth_server, method: str):
    server = oauth_server(registration=False)
    server.patch_document(server.metadata_path, token_endpoint_auth_methods_supported=[method])
    redirect = "http://127.0.0.1:{port}/callback"
    import socket

    with socket.socket() as probe:  # a port that is free now, for the configured redirect URI
        probe.bind(("127.0.0.1", 0))
        redirect = redirect.format(port=probe.getsockname()[1])
    server.provider.add_client(
        "pre-client",
        secret="pre-secret-value",
        auth_method=method,
        redirect_uri=redirect,
        scope="mcp:tools offline_access",
    )
    _config(
        server,
        oauth=f'[servers.demo.oauth]\nclient_id = "pre-client"\nclient_secret = "pre-secret-value"\n'
        f'redirect_uri = "{redirect}"\n',
    )
    return server


def test_preregistered_client_secret_basic(oauth_server, browser, isolated_env):
    server = _preregistered(oauth_server, "client_secret_basic")
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 0, explain(proc)
    [token] = server.requests_to("/token")
    assert token.headers["authorization"].startswith("Basic ")
    import base64

    assert base64.b64decode(token.headers["authorization"][6:]).decode() == "pre-client:pre-secret-value"
    assert "client_secret" not in token.form
    assert server.requests_to("/register") == []
    client = _record(isolated_env)["client"]
    assert (client["client_id"], client["registration_source"], client["token_endpoint_auth_method"]) == (
        "pre-client",
        "config",
        "client_secret_basic",
    )


def test_preregistered_client_secret_post(oauth_server, browser):
    server = _preregistered(oauth_server, "client_secret_post")
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 0, explain(proc)
    [token] = server.requests_to("/token")
    assert "authorization" not in token.headers
    assert token.form["client_id"] == "pre-client"
    assert token.form["client_secret"] == "pre-secret-value"


def test_server_without_registration_endpoint(oauth_server, browser, isolated_env):
    server = oauth_server(registration=False)
    _config(server)
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.splitlines()[-1] == (
        "error: Server 'demo' does not support dynamic client registration. "
        'Add [servers.demo.oauth] client_id = "..." to your config.'
    )
    assert server.requests_to("/authorize") == []
    assert not (isolated_env / "oauth" / "demo.toml").exists()


def test_state_mismatch_is_ignored_without_token_request(oauth_server, browser, isolated_env):
    server = oauth_server()
    server.tap.rewrite_redirect = lambda location: with_query(location, state="forged-state-value")
    _config(server)
    proc = run_cli("auth", "demo", "--timeout", "1", env=browser)
    assert proc.returncode == 1, explain(proc)
    assert (
        "Ignored an authorization response whose state does not match the request (it may be forged or from "
        "an older attempt); still waiting for the genuine one."
    ) in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: Timed out after 1 s waiting for the authorization of 'demo'")
    assert server.requests_to("/token") == []
    assert not (isolated_env / "oauth" / "demo.toml").exists()


def test_error_callback_is_reported(oauth_server, browser):
    server = oauth_server()
    server.tap.rewrite_redirect = lambda location: with_query(
        location, code=None, error="access_denied", error_description="The user said no"
    )
    _config(server)
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 1, explain(proc)
    assert (
        proc.stderr.splitlines()[-1] == "error: Authorization was denied by the server: access_denied: The user said no"
    )
    assert server.requests_to("/token") == []


def test_wrong_iss_is_refused(oauth_server, browser):
    server = oauth_server()
    server.tap.rewrite_redirect = lambda location: with_query(location, iss="https://evil.example.com")
    _config(server)
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 1, explain(proc)
    assert (
        f"error: The authorization response came from issuer 'https://evil.example.com', not "
        f"'{server.origin}'; refusing it (RFC 9207 mix-up defence)."
    ) in proc.stderr
    assert server.requests_to("/token") == []


def test_iss_required_when_advertised(oauth_server, browser):
    server = oauth_server()
    server.patch_document(server.metadata_path, authorization_response_iss_parameter_supported=True)
    _config(server)
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 1, explain(proc)
    assert "has no iss parameter although" in proc.stderr
    assert server.requests_to("/token") == []
    # ...and accepted when present and right.
    server.tap.rewrite_redirect = lambda location: with_query(location, iss=server.origin)
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 0, explain(proc)


def test_issuer_mismatch_in_metadata_is_refused(oauth_server, browser):
    server = oauth_server()
    server.patch_document(server.metadata_path, issuer="https://evil.example.com")
    _config(server)
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.splitlines()[-1] == (
        f"error: Authorization server metadata names issuer 'https://evil.example.com', but '{server.origin}' "
        "was expected; refusing to use it (possible mix-up attack)."
    )
    assert server.requests_to("/register") == [] and server.requests_to("/authorize") == []


def test_non_loopback_http_endpoint_is_refused(oauth_server, browser):
    server = oauth_server()
    server.patch_document(server.metadata_path, token_endpoint="http://tokens.example.com/token")
    _config(server)
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.splitlines()[-1] == (
        "error: The token endpoint http://tokens.example.com/token is not an https URL; refusing to use it "
        "(plain http is allowed only for localhost, 127.0.0.0/8 and ::1)."
    )


def test_timeout_expiry(oauth_server, isolated_env):
    server = oauth_server()
    _config(server)
    proc = run_cli("auth", "demo", "--no-browser", "--timeout", "0.5", input="")
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.splitlines()[-1] == (
        "error: Timed out after 0 s waiting for the authorization of 'demo' (--timeout SECONDS waits longer; "
        "--no-browser lets you paste the redirected URL). Run: toolscript auth demo"
    )
    assert not (isolated_env / "oauth" / "demo.toml").exists()


class _Interactive:
    """The CLI in a subprocess with stdin open, and its stderr read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "toolscript.py"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def authorization_url(self) -> str:
        while True:
            line = self.lines.get(timeout=30).strip()
            if line.startswith("http://") and "/authorize?" in line:
                return line

    def finish(self, timeout: float = 30, close_stdin: bool = True) -> tuple[int, str, str]:
        """Wait (bounded) for the exit, after closing stdin or before; a process still running then is killed."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if close_stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"still running {timeout} s later:\n{''.join(self.stderr)}") from None
        finally:
            self.proc.stdin.close()
        stdout = self.proc.stdout.read()  # small: cannot have blocked the process
        self._reader.join(10)
        return self.proc.returncode, stdout, "".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_no_browser_accepts_the_pasted_url(oauth_server, isolated_env):
    server = oauth_server()
    _config(server)
    cli = _Interactive("auth", "demo", "--no-browser")
    url = cli.authorization_url()
    location = requests.get(url, allow_redirects=False, timeout=10).headers["Location"]
    assert cli.proc.stdin is not None
    state = dict(parse_qsl(urlsplit(url).query))["state"]
    mistakes = ["not a url", url, location.split("?")[0] + f"?state={state}&iss=x"]  # the last: its code cut off
    cli.proc.stdin.write("".join(line + "\n" for line in [*mistakes, location]))
    cli.proc.stdin.flush()
    code, stdout, stderr = cli.finish()
    assert code == 0, stderr
    assert stdout.startswith("✓ Authenticated 'demo'")
    # Each mistake is explained, by what the pasted line held, and the wait goes on.
    assert "That URL holds no query, no code or error: it is not the redirected URL" in stderr
    assert "That is the authorization URL toolscript printed; open it in a browser" in stderr
    assert "That URL holds only iss, state, no code or error: it is not the redirected URL" in stderr
    assert "Opening the authorization URL" not in stderr
    assert _record(isolated_env)["tokens"]["access_token"] in server.provider.access_tokens


def test_ctrl_c_cancels_and_keeps_stored_data(oauth_server, browser, isolated_env):
    server = oauth_server()
    _config(server)
    assert run_cli("auth", "demo", env=browser).returncode == 0
    before = (isolated_env / "oauth" / "demo.toml").read_bytes()
    cli = _Interactive("auth", "demo", "--no-browser")
    cli.authorization_url()
    cli.proc.send_signal(signal.SIGINT)
    code, _, stderr = cli.finish()
    assert code == 130, stderr
    assert "error: Authorization of 'demo' cancelled; stored data unchanged." in stderr
    assert (isolated_env / "oauth" / "demo.toml").read_bytes() == before


def _callback_address(authorization_url: str) -> tuple[str, int]:
    redirect = urlsplit(dict(parse_qsl(urlsplit(authorization_url).query))["redirect_uri"])
    return redirect.hostname, redirect.port


def test_timeout_ends_the_command_despite_a_silent_connection(oauth_server, isolated_env):
    server = oauth_server()
    _config(server)
    cli = _Interactive("auth", "demo", "--no-browser", "--timeout", "2")
    try:
        with socket.create_connection(_callback_address(cli.authorization_url()), timeout=10):
            code, _, stderr = cli.finish()
    finally:
        cli.kill()
    assert code == 1, stderr
    assert stderr.splitlines()[-1].startswith("error: Timed out after 2 s waiting for the authorization of 'demo'")
    assert "Traceback" not in stderr


def test_ctrl_c_ends_the_command_despite_silent_connections(oauth_server, isolated_env):
    server = oauth_server()
    _config(server)
    cli = _Interactive("auth", "demo", "--no-browser")
    try:
        address = _callback_address(cli.authorization_url())
        assert requests.get(f"http://{address[0]}:{address[1]}/favicon.ico", timeout=10).status_code == 404
        with contextlib.ExitStack() as stack:
            # Each gets a thread of its own in the callback server, none of which may take the SIGINT.
            for _ in range(10):
                stack.enter_context(socket.create_connection(address, timeout=10))
            cli.proc.send_signal(signal.SIGINT)
            code, _, stderr = cli.finish(close_stdin=False)  # as at a terminal: the paste prompt stays open
    finally:
        cli.kill()
    assert code == 130, stderr
    assert "error: Authorization of 'demo' cancelled; stored data unchanged." in stderr
    assert "Traceback" not in stderr


def test_no_refresh_token_is_explained(oauth_server, browser):
    server = oauth_server(refresh_tokens=False)
    _config(server)
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.splitlines() == [
        "✓ Authenticated 'demo' (scopes: mcp:tools offline_access; expires in 59 min; refresh token: no)",
        "The server issued no refresh token: authorize again when the access token expires. Run: toolscript auth demo",
    ]


def test_server_without_auth_is_remembered_as_needing_none(oauth_server):
    server = oauth_server(require_auth=False)
    _config(server)
    assert run_cli("auth").stdout == "demo  not authenticated\n\nRun: toolscript auth demo\n"
    proc = run_cli("auth", "demo")
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == "Server 'demo' does not require authentication.\n"
    # The listing (no network) no longer asks to authenticate it, and it is no OAuth server.
    assert run_cli("auth").stdout == (
        "demo  no auth needed (it answered toolscript auth without asking for authorization)\n"
    )
    assert "oauth_status" not in json.loads(run_cli("servers", "--json").stdout)[0]
    assert "[oauth" not in run_cli("servers").stdout


def test_sse_server(oauth_server, browser, isolated_env):
    server = oauth_server(transport="sse")
    _config(server)
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 0, explain(proc)
    assert _record(isolated_env)["metadata"]["resource"] == server.url
    assert server.requests_to("/sse", "GET")


def test_logout_revokes_at_the_server(oauth_server, browser, isolated_env):
    server = oauth_server()
    _config(server)
    assert run_cli("auth", "demo", env=browser).returncode == 0
    tokens = _record(isolated_env)["tokens"]
    proc = run_cli("auth", "demo", "--logout")
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.splitlines() == [
        "Revoked the refresh token and the access token at the server.",
        "Deleted the tokens of 'demo'.",
    ]
    assert server.provider.revoked == [tokens["refresh_token"], tokens["access_token"]]
    record = _record(isolated_env)
    assert "tokens" not in record and record["client"]["client_id"]
    proc = run_cli("auth", "demo", "--logout", "--forget-client")
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == "Deleted the client registration of 'demo'.\n"
    assert not (isolated_env / "oauth" / "demo.toml").exists()


def test_logout_survives_a_revocation_failure(oauth_server, browser, isolated_env):
    server = oauth_server()
    _config(server)
    assert run_cli("auth", "demo", env=browser).returncode == 0
    server.hide("/revoke")
    proc = run_cli("auth", "demo", "--logout")
    assert proc.returncode == 0, explain(proc)
    assert "Revoking the refresh token failed: 404" in proc.stderr and "deleting it locally anyway" in proc.stderr
    assert proc.stdout == "Deleted the tokens of 'demo'.\n"
    assert "tokens" not in _record(isolated_env)


def test_debug_log_of_a_whole_flow_holds_no_secret(oauth_server, browser, isolated_env):
    server = oauth_server()
    _config(server)
    proc = run_cli("-v", "auth", "demo", env=browser)
    assert proc.returncode == 0, explain(proc)
    assert "DEBUG toolscript.auth: POST " + server.origin + "/token" in proc.stderr
    assert "DEBUG toolscript.auth: callback server:" in proc.stderr
    [authorize] = server.requests_to("/authorize")
    [token] = server.requests_to("/token")
    record = _record(isolated_env)
    secrets = {
        "access token": record["tokens"]["access_token"],
        "refresh token": record["tokens"]["refresh_token"],
        "client secret": record["client"]["client_secret"],
        "code": token.form["code"],
        "state": authorize.query["state"],
        "verifier": token.form["code_verifier"],
    }
    # The authorization URL is shown to the user (it must be); every other line is checked.
    lines = [line for line in proc.stderr.splitlines() if "/authorize?" not in line]
    assert sum("/authorize?" in line for line in proc.stderr.splitlines()) == 1
    for name, value in secrets.items():
        assert not any(value in line for line in lines), f"{name} leaked:\n{proc.stderr}"
        assert value not in proc.stdout


def test_a_stored_expiry_that_is_not_usable_breaks_nothing(oauth_server, browser, isolated_env):
    server = oauth_server()
    _config(server)
    assert run_cli("auth", "demo", env=browser).returncode == 0
    path = isolated_env / "oauth" / "demo.toml"
    written = path.read_text()
    for value in ("inf", "nan", "-inf", "1e300"):  # as an older version may have stored them
        path.write_text(re.sub(r"(?m)^expires_at = .*$", f"expires_at = {value}", written))
        for command in (["auth"], ["auth", "demo", "--status"], ["call", "demo__echo", '{"text": "still works"}']):
            proc = run_cli(*command)
            assert proc.returncode == 0, explain(proc)
            assert "Traceback" not in proc.stderr, explain(proc)
            assert "tokens.expires_at" in proc.stderr and "treating it as unknown" in proc.stderr, explain(proc)
        assert proc.stdout == "still works\n"


def test_keys_from_a_newer_version_survive_auth_and_logout(oauth_server, browser, isolated_env):
    server = oauth_server()
    _config(server)
    assert run_cli("auth", "demo", env=browser).returncode == 0
    path = isolated_env / "oauth" / "demo.toml"
    text = path.read_text().replace("[client]\n", '[client]\njwks_uri = "https://client.example/jwks"\n')
    path.write_text(text + "\n[future]\nflag = true\n\n[future.nested]\nlevel = 2\n")

    proc = run_cli("auth", "demo", env=browser)  # reuses the stored registration
    assert proc.returncode == 0, explain(proc)
    assert len(server.provider.registrations) == 1
    record = _record(isolated_env)
    assert record["client"]["jwks_uri"] == "https://client.example/jwks"
    assert record["future"] == {"flag": True, "nested": {"level": 2}}

    proc = run_cli("auth", "demo", "--logout")
    assert proc.returncode == 0, explain(proc)
    record = _record(isolated_env)
    assert "tokens" not in record
    assert record["client"]["jwks_uri"] == "https://client.example/jwks"
    assert record["future"] == {"flag": True, "nested": {"level": 2}}


# -- recovery without a manual -----------------------------------------------------------


def _error_redirect(location: str) -> str:
    """The server's error redirect, without state, its description echoing the state (a secret of toolscript's)."""
    state = dict(parse_qsl(urlsplit(location).query))["state"]
    return with_query(
        location, code=None, state=None, error="invalid_client", error_description=f"unknown client (state {state})"
    )


def test_an_error_redirect_without_state_ends_the_flow_at_once(oauth_server, browser):
    server = oauth_server()
    server.tap.rewrite_redirect = _error_redirect
    _config(server)
    proc = run_cli("auth", "demo", "--timeout", "120", env=browser)
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.splitlines()[-1] == (
        "error: Authorization was denied by the server: invalid_client: unknown client (state [REDACTED])"
    )
    assert server.requests_to("/token") == []


def test_a_pasted_error_redirect_ends_the_flow_at_once(oauth_server):
    server = oauth_server()
    _config(server)
    cli = _Interactive("auth", "demo", "--no-browser", "--timeout", "120")
    url = cli.authorization_url()
    location = requests.get(url, allow_redirects=False, timeout=10).headers["Location"]
    assert cli.proc.stdin is not None
    cli.proc.stdin.write(_error_redirect(location) + "\n")
    cli.proc.stdin.flush()
    code, _, stderr = cli.finish(close_stdin=False)  # ended by the paste, not by the end of input
    assert code == 1, stderr
    assert stderr.splitlines()[-1] == (
        "error: Authorization was denied by the server: invalid_client: unknown client (state [REDACTED])"
    )


def test_invalid_client_at_the_token_exchange_forgets_the_registration_and_auth_registers_anew(
    oauth_server, browser, isolated_env
):
    server = oauth_server()
    _config(server)
    assert run_cli("auth", "demo", env=browser).returncode == 0
    secret = _record(isolated_env)["client"]["client_secret"]
    server.echo_credentials(401, "invalid_client")  # the server restarted and forgot its registrations
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 1, explain(proc)
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("error: Token exchange failed: 401 invalid_client: ")
    assert last.endswith(
        "The authorization server no longer knows the client registration of 'demo'; toolscript forgot it, and "
        "the next authorization registers anew. Run: toolscript auth demo"
    )
    assert secret not in proc.stderr  # the stored client secret, echoed by the server, is masked
    record = _record(isolated_env)
    assert "client" not in record and "tokens" not in record
    server.tap.echo_credentials = None
    assert run_cli("auth", "demo", env=browser).returncode == 0
    assert len(server.requests_to("/register")) == 2


def test_a_forgotten_registration_the_browser_cannot_use_is_replaced_by_the_next_auth(
    oauth_server, browser, isolated_env
):
    server = oauth_server()
    _config(server)
    assert run_cli("auth", "demo", env=browser).returncode == 0
    server.provider.clients.clear()  # /authorize now shows the browser an error page, and never redirects
    proc = run_cli("auth", "demo", "--timeout", "1", env=browser)
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.splitlines()[-1] == (
        "error: Timed out after 1 s waiting for the authorization of 'demo'. If the browser showed an error such "
        "as invalid_client, the authorization server has forgotten the client registration toolscript stored; "
        "the next authorization registers anew. Run: toolscript auth demo"
    )
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 0, explain(proc)
    assert len(server.requests_to("/register")) == 2
    assert "suspect_client_id" not in _record(isolated_env)["metadata"]


@pytest.mark.parametrize("arguments", ["--new-window", "--url=%s --new-window"])
def test_browser_variable_with_arguments(oauth_server, tmp_path, arguments):
    server = oauth_server()
    _config(server)
    script = tmp_path / "my browser"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\nsys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from browser import visit\n"
        f"open({str(tmp_path / 'args')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        "visit(next(arg for arg in sys.argv if '/authorize?' in arg).removeprefix('--url='))\n"
    )
    script.chmod(0o755)
    proc = run_cli("auth", "demo", "--timeout", "20", env={"BROWSER": f"'{script}' {arguments}"})
    assert proc.returncode == 0, explain(proc)
    args = json.loads((tmp_path / "args").read_text())
    url = next(arg for arg in args if "/authorize?" in arg).removeprefix("--url=")
    assert args == (["--new-window", url] if arguments == "--new-window" else [f"--url={url}", "--new-window"])
