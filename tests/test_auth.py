"""auth.py in-process: discovery orders and variants, client choice, failures, status, logout."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from browser import visit
from conftest import ROOT, write_config
from oauth_server import with_query

import auth
import toolscript
from config import load_config
from errors import AuthError
from storage import ClientInfo, Metadata, Record, Store, Tokens


def _server(test_server, oauth: str = "", name: str = "demo"):
    write_config(f'[servers.{name}]\ntype = "{test_server.transport}"\nurl = "{test_server.url}"\n{oauth}')
    return load_config().server(name)


def _authenticate(server, store: Store | None = None, **options):
    shown: list[str] = []
    options.setdefault("open_browser", visit)
    record = auth.authenticate(server, store or Store(), show_url=shown.append, timeout=30, **options)
    return record, shown


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- discovery -----------------------------------------------------------------------


def test_metadata_urls_follow_the_spec_order():
    assert auth._metadata_urls("https://as.example.com") == [
        "https://as.example.com/.well-known/oauth-authorization-server",
        "https://as.example.com/.well-known/openid-configuration",
    ]
    assert auth._metadata_urls("https://as.example.com/tenant1/") == [
        "https://as.example.com/.well-known/oauth-authorization-server/tenant1",
        "https://as.example.com/.well-known/openid-configuration/tenant1",
        "https://as.example.com/tenant1/.well-known/openid-configuration",
    ]


def test_parse_www_authenticate():
    header = (
        'Bearer error="insufficient_scope", scope="a b", '
        'resource_metadata="https://x.example/.well-known/oauth-protected-resource/mcp", realm=plain'
    )
    assert auth.parse_www_authenticate(header) == {
        "error": "insufficient_scope",
        "scope": "a b",
        "realm": "plain",
        "resource_metadata": "https://x.example/.well-known/oauth-protected-resource/mcp",
    }
    assert auth.parse_www_authenticate('Basic realm="x", Bearer scope="s"')["scope"] == "s"
    assert auth.parse_www_authenticate("Bearer") == {}


def test_resource_metadata_found_at_the_root_well_known_url(oauth_server):
    test_server = oauth_server()
    test_server.tap.www_authenticate = 'Bearer error="invalid_token"'  # no resource_metadata: well-known URLs
    document = test_server.document(test_server.resource_metadata_path)
    test_server.hide(test_server.resource_metadata_path)
    test_server.tap.documents["/.well-known/oauth-protected-resource"] = (200, document)
    record, _ = _authenticate(_server(test_server))
    assert record.metadata.discovery[:3] == [
        f"probe {test_server.url}: 401, WWW-Authenticate without parameters",
        f"{test_server.origin}{test_server.resource_metadata_path}: 404",
        f"{test_server.origin}/.well-known/oauth-protected-resource: 200",
    ]
    assert record.metadata.resource == test_server.url


def test_resource_that_is_a_parent_of_the_server_url_is_accepted(oauth_server):
    test_server = oauth_server(resource_metadata=True)
    test_server.patch_document(test_server.resource_metadata_path, resource=test_server.origin)
    record, _ = _authenticate(_server(test_server))
    assert record.metadata.resource == test_server.origin
    [authorize] = test_server.requests_to("/authorize")
    assert authorize.query["resource"] == test_server.origin


def test_resource_mismatch_is_refused_before_authorization(oauth_server):
    test_server = oauth_server()
    test_server.patch_document(test_server.resource_metadata_path, resource="https://evil.example.com/mcp")
    opened: list[str] = []
    with pytest.raises(AuthError) as caught:
        _authenticate(_server(test_server), open_browser=opened.append)
    assert str(caught.value) == (
        f"Protected resource metadata at {test_server.origin}{test_server.resource_metadata_path} names resource "
        f"'https://evil.example.com/mcp', which does not match server 'demo' at {test_server.url} (RFC 8707); "
        "refusing to authenticate."
    )
    assert opened == [] and test_server.requests_to("/register") == []


def test_legacy_server_without_resource_metadata(oauth_server):
    test_server = oauth_server(resource_metadata=False)
    record, _ = _authenticate(_server(test_server))
    assert record.metadata.issuer == test_server.origin
    assert record.metadata.resource == test_server.url
    assert f"{test_server.origin}/.well-known/oauth-protected-resource/mcp: 404" in record.metadata.discovery
    assert f"{test_server.origin}/.well-known/oauth-authorization-server: 200" in record.metadata.discovery


def test_legacy_server_without_any_metadata_uses_default_endpoints(oauth_server):
    test_server = oauth_server(resource_metadata=False)
    test_server.hide("/.well-known/oauth-authorization-server")
    test_server.hide("/.well-known/openid-configuration")
    record, _ = _authenticate(_server(test_server))
    assert record.metadata.token_endpoint == test_server.origin + "/token"
    assert record.metadata.revocation_endpoint is None
    assert record.metadata.discovery[-1].startswith("no authorization server metadata: default endpoints")
    assert len(test_server.requests_to("/register")) == 1
    assert record.tokens.access_token in test_server.provider.access_tokens


def test_legacy_metadata_with_an_issuer_on_another_origin_is_refused(oauth_server):
    test_server = oauth_server(resource_metadata=False)
    test_server.patch_document(test_server.metadata_path, issuer="https://as.example.com")
    with pytest.raises(AuthError) as caught:
        _authenticate(_server(test_server))
    assert str(caught.value) == (
        f"Authorization server metadata names issuer 'https://as.example.com', but '{test_server.origin}' was "
        "expected; refusing to use it (possible mix-up attack)."
    )
    assert test_server.requests_to("/register") == []


def test_legacy_metadata_with_an_issuer_path_on_the_same_origin_is_used(oauth_server):
    # MCP 2025-03-26 servers publish root metadata for an issuer such as <origin>/oauth.
    test_server = oauth_server(resource_metadata=False)
    test_server.patch_document(test_server.metadata_path, issuer=test_server.origin + "/oauth")
    record, _ = _authenticate(_server(test_server))
    assert record.metadata.issuer == test_server.origin + "/oauth"
    assert record.client.issuer == test_server.origin + "/oauth"
    assert f"legacy issuer {test_server.origin}/oauth on the server's origin accepted" in record.metadata.discovery


def test_issuer_mismatch_after_resource_metadata_stays_strict(oauth_server):
    test_server = oauth_server()
    test_server.patch_document(test_server.metadata_path, issuer=test_server.origin + "/oauth")
    with pytest.raises(AuthError, match=r"names issuer .*/oauth', but .* was expected; refusing to use it"):
        _authenticate(_server(test_server))


def test_metadata_without_s256_is_refused(oauth_server):
    test_server = oauth_server()
    test_server.patch_document(test_server.metadata_path, code_challenge_methods_supported=None)
    with pytest.raises(AuthError, match=r"does not advertise PKCE with S256"):
        _authenticate(_server(test_server))


def test_probe_failure_names_the_step(oauth_server):
    test_server = oauth_server()
    write_config(f'[servers.demo]\nurl = "{test_server.origin}/nothing-here"\n')
    with pytest.raises(AuthError) as caught:
        _authenticate(load_config().server("demo"))
    assert str(caught.value) == (
        f"Probing server 'demo' failed: 404 Not Found from {test_server.origin}/nothing-here "
        "(expected 401 asking for authentication)."
    )


def test_unreachable_server():
    write_config(f'[servers.demo]\nurl = "http://127.0.0.1:{_free_port()}/mcp"\n')
    with pytest.raises(
        AuthError,
        match=r"^Probing server 'demo' failed: cannot reach http://127.0.0.1:\d+ "
        r"\(connection refused\)\.$",
    ) as caught:
        _authenticate(load_config().server("demo"))
    assert caught.value.exit_code == 4  # like any unreachable server


# -- scope ---------------------------------------------------------------------------


def _discovery(**metadata) -> auth._Discovery:
    return auth._Discovery(
        server_url="https://x/mcp",
        resource="https://x/mcp",
        issuer="https://x",
        metadata={"issuer": "https://x", **metadata},
        challenge_scope=None,
        resource_scopes=None,
        chain=[],
    )


def test_scope_choice():
    write_config(
        '[servers.s]\nurl = "https://x/mcp"\n[servers.s.oauth]\nscopes = ["cfg"]\n'
        '[servers.plain]\nurl = "https://x/mcp"\n'
    )
    cfg = load_config()
    plain, configured = cfg.server("plain"), cfg.server("s")
    discovery = _discovery(scopes_supported=["a", "offline_access"])
    assert auth._choose_scope(plain, discovery, None) is None  # nothing anywhere: omitted
    discovery.resource_scopes = ["a", "b"]
    assert auth._choose_scope(plain, discovery, None) == "a b offline_access"
    discovery.challenge_scope = "c"  # WWW-Authenticate scope wins over scopes_supported
    stepped = Record(metadata=Metadata(step_up_scope="d c"))
    assert auth._choose_scope(configured, discovery, stepped) == "c cfg d offline_access"
    assert auth._choose_scope(plain, _discovery(scopes_supported=["a"]), None) is None
    no_offline = _discovery(scopes_supported=["a"])
    no_offline.challenge_scope = "a"
    assert auth._choose_scope(plain, no_offline, None) == "a"


def test_offline_access_not_requested_when_not_supported(oauth_server):
    test_server = oauth_server()
    test_server.patch_document(test_server.metadata_path, scopes_supported=["mcp:tools"])
    record, _ = _authenticate(_server(test_server))
    [authorize] = test_server.requests_to("/authorize")
    assert authorize.query["scope"] == "mcp:tools"
    assert record.metadata.scope_requested == "mcp:tools"


# -- clients -------------------------------------------------------------------------


def test_client_id_metadata_document(oauth_server):
    test_server = oauth_server()
    test_server.patch_document(test_server.metadata_path, client_id_metadata_document_supported=True)
    url, redirect = "https://client.example.com/toolscript.json", f"http://127.0.0.1:{_free_port()}/callback"
    test_server.provider.add_client(
        url, secret=None, auth_method="none", redirect_uri=redirect, scope="mcp:tools offline_access"
    )
    server = _server(test_server, f'[servers.demo.oauth]\nclient_metadata_url = "{url}"\nredirect_uri = "{redirect}"\n')
    record, _ = _authenticate(server)
    [authorize] = test_server.requests_to("/authorize")
    [token] = test_server.requests_to("/token")
    assert authorize.query["client_id"] == token.form["client_id"] == url
    assert "client_secret" not in token.form and "authorization" not in token.headers
    assert record.client.registration_source == "metadata_url"
    assert test_server.requests_to("/register") == []


def test_client_metadata_url_ignored_without_server_support(oauth_server):
    test_server = oauth_server()
    server = _server(test_server, '[servers.demo.oauth]\nclient_metadata_url = "https://client.example.com/c.json"\n')
    record, _ = _authenticate(server)
    assert record.client.registration_source == "dynamic"


def test_registration_honours_the_assigned_public_method(oauth_server):
    test_server = oauth_server()
    test_server.patch_document(test_server.metadata_path, token_endpoint_auth_methods_supported=["none"])
    record, _ = _authenticate(_server(test_server))
    [register] = test_server.requests_to("/register")
    assert register.json["token_endpoint_auth_method"] == "none"
    assert register.json["grant_types"] == ["authorization_code", "refresh_token"]
    assert record.client.token_endpoint_auth_method == "none" and record.client.client_secret is None
    [token] = test_server.requests_to("/token")
    assert "client_secret" not in token.form


def test_taken_port_of_a_dynamic_client_means_a_new_registration(oauth_server):
    test_server = oauth_server()
    server = _server(test_server)
    first, _ = _authenticate(server)
    port = int(first.client.redirect_uri.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old callback's TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        second, _ = _authenticate(server)
    assert second.client.client_id != first.client.client_id
    assert second.client.redirect_uri != first.client.redirect_uri
    assert len(test_server.provider.registrations) == 2


def test_taken_configured_port_is_a_clear_error(oauth_server):
    test_server = oauth_server()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = _server(test_server, f'[servers.demo.oauth]\nredirect_uri = "http://127.0.0.1:{port}/callback"\n')
        with pytest.raises(AuthError) as caught:
            _authenticate(server)
    assert str(caught.value) == (
        f"Port {port} of the redirect URI http://127.0.0.1:{port}/callback is in use by "
        "another program; stop it or set another [servers.demo.oauth] redirect_uri."
    )


def test_token_exchange_failure_carries_the_oauth_error(oauth_server):
    test_server = oauth_server()
    test_server.tap.rewrite_redirect = lambda location: with_query(location, code="not-a-real-code")
    with pytest.raises(AuthError) as caught:
        _authenticate(_server(test_server))
    assert str(caught.value) == "Token exchange failed: 400 invalid_grant: authorization code does not exist"
    assert caught.value.error == "invalid_grant"
    assert not Store().exists("demo")


def test_unusable_token_answer_names_what_is_wrong(oauth_server):
    test_server = oauth_server()
    test_server.patch_document(test_server.metadata_path, token_endpoint=test_server.origin + "/odd-token")
    test_server.tap.documents["/odd-token"] = (200, {"access_token": "at-odd", "token_type": "mac"})
    with pytest.raises(AuthError) as caught:
        _authenticate(_server(test_server))
    assert str(caught.value) == "Token exchange failed: token_type is 'mac', not Bearer."
    assert not Store().exists("demo")


def test_callback_server_answers_other_paths_with_404_and_keeps_waiting(oauth_server):
    import urllib.error
    import urllib.request

    test_server = oauth_server()

    def browser(url: str) -> bool:
        redirect = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["redirect_uri"][0]
        for path in ("/favicon.ico", "/callback"):  # /callback without parameters: 400, still waiting
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(redirect.replace("/callback", path), timeout=10)
            assert caught.value.code == (404 if path != "/callback" else 400)
        return visit(url)

    import urllib.parse

    record, _ = _authenticate(_server(test_server), open_browser=browser)
    assert record.tokens is not None


# -- status and logout ---------------------------------------------------------------


def _status_config() -> None:
    write_config(
        '[servers.local]\ncommand = "true"\n'
        '[servers.keyed]\nurl = "https://keyed.invalid/mcp"\nheaders = { Authorization = "Bearer x" }\n'
        '[servers.fresh]\nurl = "https://fresh.invalid/mcp"\n'
        '[servers.stale]\nurl = "https://stale.invalid/mcp"\n'
        '[servers.dead]\nurl = "https://dead.invalid/mcp"\n'
        '[servers.new]\nurl = "https://new.invalid/mcp"\n'
    )
    store, now = Store(), time.time()
    # `fresh` shows as "expires in 30 min" for almost a minute, however slowly the test runs meanwhile.
    for name, tokens in (
        ("fresh", Tokens("a1", refresh_token="r1", scope="read", expires_at=now + 1859.9)),
        ("stale", Tokens("a2", refresh_token="r2", expires_at=now - 5)),
        ("dead", Tokens("a3", expires_at=now - 5)),
    ):
        store.save(
            name,
            Record(client=ClientInfo("c"), tokens=tokens, metadata=Metadata(server_url=f"https://{name}.invalid/mcp")),
        )


def test_status_listing_without_network(capsys):
    _status_config()
    assert toolscript.main(["auth"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "local  n/a (stdio server)",
        "keyed  n/a (Authorization header configured)",
        "fresh  authenticated (scopes: read; expires in 30 min; refresh token: yes)",
        "stale  expired (refreshable)",
        "dead   expired (not refreshable)",
        "new    not authenticated",
        "",
        "Run: toolscript auth dead",
        "Run: toolscript auth new",
    ]


def test_status_of_one_server_shows_no_secret(oauth_server, capsys):
    test_server = oauth_server()
    record, _ = _authenticate(_server(test_server))
    assert toolscript.main(["auth", "demo", "--status"]) == 0
    out = capsys.readouterr().out
    labels = [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")]
    for label in (
        "Server",
        "State",
        "Record",
        "Discovery",
        "Issuer",
        "Token endpoint",
        "Revocation endpoint",
        "Client",
        "Token auth method",
        "Redirect URI",
        "Scopes requested",
        "Scopes granted",
        "Expires",
        "Refresh token",
    ):
        assert label in labels, out
    assert "(mode 600; directory mode 700)" in out
    assert (
        f"Client:              {record.client.client_id} via dynamic client registration (RFC 7591); "
        "client secret stored" in out
    )
    assert f"1. probe {test_server.url}: 401, WWW-Authenticate resource_metadata=" in out
    for secret in (record.tokens.access_token, record.tokens.refresh_token, record.client.client_secret):
        assert secret not in out


def test_auth_usage_errors(capsys):
    write_config('[servers.local]\ncommand = "true"\n')
    assert toolscript.main(["auth", "--logout"]) == 2
    assert toolscript.main(["auth", "local", "--status", "--forget-client"]) == 2
    assert toolscript.main(["auth", "local"]) == 2
    assert toolscript.main(["auth", "nope"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --status, --logout and --forget-client need a SERVER: toolscript auth SERVER --status",
        "error: --forget-client goes with --logout, or alone: toolscript auth SERVER --forget-client",
        "error: Server 'local' is a stdio server; only http and sse servers use OAuth.",
        f"error: Unknown server 'nope' in {Path('toolscript.toml')} (configured: local).",
    ]


def test_forget_client_removes_a_corrupt_record():
    write_config('[servers.demo]\nurl = "https://demo.invalid/mcp"\n')
    store = Store()
    store.save("demo", Record())
    store.path("demo").write_text("not toml [")
    assert toolscript.main(["auth", "demo", "--logout", "--forget-client"]) == 0
    assert not store.exists("demo")


def test_auth_module_never_imports_the_sdk():
    # The CLI's listings are checked in test_cli; this is about auth.py itself.
    code = "import sys, auth\nassert not {'mcp', 'pydantic'} & set(sys.modules), sorted(sys.modules)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr


def test_plain_http_server_url_off_loopback_is_refused(oauth_server):
    write_config('[servers.demo]\nurl = "http://mcp.example.com/mcp"\n')
    with pytest.raises(AuthError) as caught:
        _authenticate(load_config().server("demo"))
    assert str(caught.value) == (
        "The URL of server 'demo' http://mcp.example.com/mcp is not an https URL; refusing to use it "
        "(plain http is allowed only for localhost, 127.0.0.0/8 and ::1)."
    )


# -- the callback server under stray and hostile requests ------------------------------


def test_callback_server_drops_a_silent_connection():
    with auth._CallbackServer(None) as callback, socket.create_connection(("127.0.0.1", callback.port)) as idle:
        idle.settimeout(auth.CALLBACK_IDLE_TIMEOUT + 25)
        assert idle.recv(1) == b""  # closed by the server, not left hanging


def test_silent_connections_never_delay_the_callback():
    import requests

    with auth._CallbackServer(None) as callback, contextlib.ExitStack() as stack:
        for _ in range(5):  # four say nothing, one sends half a request line
            idle = stack.enter_context(socket.create_connection(("127.0.0.1", callback.port)))
        idle.sendall(b"GET /callback?co")
        callback.expect("demo", "the-expected-state", "https://issuer.example", False)
        response = requests.get(f"{callback.redirect_uri}?code=the-code&state=the-expected-state", timeout=10)
        assert response.status_code == 200, response.text
        assert callback.wait(10) == "the-code"


def test_a_forged_state_is_ignored_and_the_flow_keeps_waiting(oauth_server, caplog):
    import requests

    test_server = oauth_server()
    forged: list[requests.Response] = []

    def browser(url: str) -> bool:
        redirect = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["redirect_uri"][0]
        forged.append(requests.get(redirect + "?code=attacker-code&state=wrong", timeout=10))
        forged.append(requests.get(redirect + "?error=access_denied&state=wrong", timeout=10))
        return visit(url)

    with caplog.at_level("WARNING", logger="toolscript.auth"):
        record, _ = _authenticate(_server(test_server), open_browser=browser)
    assert record.tokens.access_token in test_server.provider.access_tokens
    assert [response.status_code for response in forged] == [400, 400]
    assert "still waiting for the genuine one" in forged[0].text
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "Ignored an authorization response whose state does not match the request (it may be forged or from an "
        "older attempt); still waiting for the genuine one."
    ] * 2
    [token] = test_server.requests_to("/token")
    assert token.form["code"] != "attacker-code"


@pytest.mark.parametrize("host", ["127.0.0.2", "[::1]", "localhost"])
def test_callback_server_listens_on_the_host_the_redirect_uri_names(oauth_server, host):
    family = socket.AF_INET6 if host == "[::1]" else socket.AF_INET
    with socket.socket(family) as probe:  # a port free on that host now
        probe.bind((host.strip("[]").replace("localhost", "127.0.0.1"), 0))
        port = probe.getsockname()[1]
    redirect = f"http://{host}:{port}/callback"
    test_server = oauth_server()
    record, _ = _authenticate(_server(test_server, f'[servers.demo.oauth]\nredirect_uri = "{redirect}"\n'))
    assert record.client.redirect_uri == redirect
    [authorize] = test_server.requests_to("/authorize")
    assert authorize.query["redirect_uri"] == redirect


# -- hostile token responses -----------------------------------------------------------


@pytest.mark.parametrize("expires_in", ["Infinity", "-Infinity", "NaN", "1e400", "-5", "0", "1e10", '"soon"', "true"])
def test_unusable_expires_in_means_expiry_unknown(oauth_server, caplog, expires_in):
    test_server = oauth_server()
    test_server.send_expires_in(expires_in)
    with caplog.at_level("WARNING", logger="toolscript.storage"):
        record, _ = _authenticate(_server(test_server))
    assert record.tokens.expires_at is None
    assert Store().load("demo").tokens.expires_at is None
    assert any(
        "not a usable lifetime; treating the token's expiry as unknown" in r.getMessage() for r in caplog.records
    )


def test_a_plain_expires_in_is_kept(oauth_server):
    test_server = oauth_server()
    test_server.send_expires_in('"120"')  # a string, as some servers send it
    before = time.time()
    record, _ = _authenticate(_server(test_server))
    assert before + 120 <= record.tokens.expires_at <= time.time() + 120
    assert before <= record.tokens.issued_at <= time.time()


# -- a hostile authorization server ----------------------------------------------------


@pytest.mark.parametrize("key", ["token_endpoint", "registration_endpoint", "authorization_endpoint"])
def test_an_endpoint_that_url_parsers_read_differently_is_refused_before_anything_is_sent(oauth_server, key):
    test_server = oauth_server()
    # urllib.parse reads 127.0.0.1 (with userinfo); requests and browsers go to evil.example.
    endpoint = f"http://evil.example\\@{test_server.origin.removeprefix('http://')}/{key}"
    test_server.patch_document(test_server.metadata_path, **{key: endpoint})
    opened: list[str] = []
    with pytest.raises(AuthError) as caught:
        _authenticate(_server(test_server), open_browser=opened.append)
    assert str(caught.value) == (
        f"The {key.replace('_', ' ')} {endpoint!r} holds a backslash, userinfo or characters that URL parsers "
        "read differently; refusing to use it."
    )
    assert opened == [] and test_server.requests_to("/register") == []


def test_a_url_requests_would_send_elsewhere_is_never_requested():
    http = auth._Http(5)
    try:
        with pytest.raises(AuthError) as caught:
            http.request("GET", "http://evil.example\\@127.0.0.1:9/x", step="Fetching")
    finally:
        http.close()
    assert "refusing to send anything to it" in caught.value.message


def test_an_authorization_server_trickling_its_answer_is_cut_off_at_the_deadline(oauth_server):
    test_server = oauth_server()
    test_server.answer_slowly(test_server.metadata_path)  # one byte every 0.2 s: no read ever times out
    with pytest.raises(AuthError) as caught:
        _authenticate(_server(test_server), http_timeout=2)
    assert str(caught.value) == (
        f"Fetching authorization server metadata failed: {test_server.origin} did not answer within 2s."
    )


def test_a_huge_answer_is_refused_without_reading_it_all(oauth_server):
    test_server = oauth_server()
    test_server.answer_hugely(test_server.metadata_path)
    with pytest.raises(AuthError) as caught:
        _authenticate(_server(test_server))
    assert str(caught.value) == (
        f"Fetching authorization server metadata failed: {test_server.origin} sent an answer larger than 4 MiB; "
        "refusing it."
    )
