"""The URL rules: loopback hosts, where a secret may be sent, origins and resources."""

from __future__ import annotations

import pytest

from urls import is_https_or_loopback, is_loopback_host, is_loopback_http, same_resource, url_origin


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("128.0.0.1", False),
        ("localhost.example.com", False),
        ("10.0.0.1", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_hosts(host: str | None, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("url", "https_or_loopback", "loopback_http"),
    [
        ("https://auth.example.com/token", True, False),
        ("HTTPS://Auth.Example.com", True, False),
        ("http://auth.example.com/token", False, False),
        ("http://127.0.0.1:8765/callback", True, True),
        ("http://localhost/callback", True, True),
        ("http://[::1]:9/x", True, True),
        ("https://127.0.0.1/x", True, False),
        ("ftp://127.0.0.1/x", False, False),
        ("https:///no-host", False, False),
        ("auth.example.com/token", False, False),
        # Parsers disagree on these (urllib.parse finds 127.0.0.1; requests and browsers do not).
        ("http://evil.example\\@127.0.0.1/token", False, False),
        ("http://user@127.0.0.1/token", False, False),
        ("http://127.0.0.1%2f@evil.example/", False, False),
        ("http://127.0.0.1\t/x", False, False),
        ("https://auth.example.com/a\\b", False, False),
    ],
)
def test_where_a_secret_may_go(url: str, https_or_loopback: bool, loopback_http: bool) -> None:
    assert is_https_or_loopback(url) is https_or_loopback
    assert is_loopback_http(url) is loopback_http


def test_origins_and_resources() -> None:
    assert url_origin("HTTPS://MCP.Example.com:443/mcp?x=1") == "https://mcp.example.com"
    assert url_origin("http://[::1]:8080/") == "http://[::1]:8080"
    assert url_origin("http://example.com:80") == "http://example.com"
    assert url_origin("http://example.com:99999/") == "http://example.com"  # an invalid port is not kept
    assert same_resource("https://mcp.example.com/mcp/", "HTTPS://mcp.example.com:443/mcp")
    assert not same_resource("https://mcp.example.com/mcp", "https://mcp.example.com/mcp?tenant=2")
    assert not same_resource("https://mcp.example.com/mcp", "http://mcp.example.com/mcp")
