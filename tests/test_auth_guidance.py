"""What `toolscript auth` says when it cannot finish, and what it then stores: a client
registration the authorization server forgot, a server named by another loopback name, a
pasted line that is not the redirect, a server that cannot revoke or needs no OAuth."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from conftest import explain, run_cli, write_config

from storage import Store


def _config(server: Any, url: str | None = None) -> None:
    write_config(f'[servers.demo]\ntype = "{server.transport}"\nurl = "{url or server.url}"\n')


def test_a_forgotten_registration_is_found_by_rfc_7592_and_replaced(oauth_server: Any, browser: dict[str, str]) -> None:
    server = oauth_server()
    server.tap.registration_management = True
    _config(server)
    assert run_cli("auth", "demo", env=browser).returncode == 0
    [first] = server.provider.registrations
    client = Store().load("demo").client
    assert client.registration_client_uri == f"{server.origin}/register/{first.client_id}"
    server.provider.clients.clear()  # the authorization server forgets every client (a restart, say)
    proc = run_cli("auth", "demo", "--timeout", "60", env=browser)
    assert proc.returncode == 0, explain(proc)
    assert (
        f"no longer knows the stored client registration (client_id {first.client_id}); registering anew" in proc.stderr
    )
    [check] = server.requests_to(f"/register/{first.client_id}", "GET")
    assert check.headers["authorization"] == f"Bearer {client.registration_access_token}"
    assert len(server.provider.registrations) == 2
    assert client.registration_access_token not in proc.stderr + proc.stdout
    # A registration the server still knows is reused after the same check.
    proc = run_cli("auth", "demo", env=browser)
    assert proc.returncode == 0 and len(server.provider.registrations) == 2, explain(proc)


def test_a_timeout_with_a_stored_registration_says_the_next_auth_registers_anew(
    oauth_server: Any, browser: dict[str, str]
) -> None:
    server = oauth_server()
    _config(server)
    assert run_cli("auth", "demo", env=browser).returncode == 0
    server.provider.clients.clear()  # the browser now gets the server's invalid client page, no redirect
    proc = run_cli("auth", "demo", "--timeout", "2", env=browser)
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.splitlines()[-1] == (
        "error: Timed out after 2 s waiting for the authorization of 'demo'. If the browser showed an error such as "
        "invalid_client, the authorization server has forgotten the client registration toolscript stored; "
        "the next authorization registers anew. Run: toolscript auth demo"
    )
    proc = run_cli("auth", "demo", env=browser)  # no --forget-client needed
    assert proc.returncode == 0, explain(proc)
    assert len(server.provider.registrations) == 2
    assert Store().load("demo").client.client_id == server.provider.registrations[1].client_id


def test_localhost_versus_127_0_0_1_says_which_url_to_configure(oauth_server: Any) -> None:
    server = oauth_server()
    localhost = server.url.replace("127.0.0.1", "localhost")
    _config(server, localhost)
    proc = run_cli("auth", "demo")
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.splitlines()[-1] == (
        f"error: Protected resource metadata at {server.origin}{server.resource_metadata_path} names resource "
        f"'{server.url}', which does not match server 'demo' at {localhost} (RFC 8707); refusing to authenticate. "
        f'The server calls itself 127.0.0.1, not localhost: configure url = "{server.url}" in [servers.demo].'
    )


def test_logout_says_when_the_server_cannot_revoke(oauth_server: Any, browser: dict[str, str]) -> None:
    server = oauth_server(revocation=False)
    _config(server)
    assert run_cli("auth", "demo", env=browser).returncode == 0
    proc = run_cli("auth", "demo", "--logout")
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == "Deleted the tokens of 'demo'.\n"
    assert proc.stderr == (
        "Server 'demo' offers no token revocation: the deleted tokens stay valid at the server "
        "until they expire; the access token expires in 59 min.\n"
    )


def test_the_paste_hint_shows_a_placeholder_not_masked_values(oauth_server: Any) -> None:
    from test_auth_cli import _Interactive

    server = oauth_server()
    _config(server)
    cli = _Interactive("auth", "demo", "--no-browser", "--timeout", "60")
    url = cli.authorization_url()
    redirect_uri = parse_qs(urlsplit(url).query)["redirect_uri"][0]
    assert cli.proc.stdin is not None
    cli.proc.stdin.write("not a url\n")
    cli.proc.stdin.flush()
    hint = ""
    while not hint.startswith("That URL holds"):
        hint = cli.lines.get(timeout=30)
    cli.proc.stdin.write(requests.get(url, allow_redirects=False, timeout=10).headers["Location"] + "\n")
    code, _, stderr = cli.finish()
    assert code == 0, stderr
    assert hint == (
        f"That URL holds no query, no code or error: it is not the redirected URL (it looks like "
        f"{redirect_uri}?code=<code>&state=<state>); paste the whole address from the browser's address bar.\n"
    )


def test_a_server_the_gateway_reached_without_a_token_is_listed_as_needing_no_auth(http_server: Any) -> None:
    write_config({"open": {"url": http_server.url}})
    before = run_cli("auth")
    assert "open  not authenticated" in before.stdout and "Run: toolscript auth open" in before.stdout, explain(before)
    called = run_cli("tools", "--server", "open")
    assert called.returncode == 0, explain(called)
    after = run_cli("auth")
    assert after.stdout.startswith("open  no auth needed"), explain(after)
    assert "Run:" not in after.stdout
