"""The URL rules: origins, loopback hosts, and where a secret may travel.

It stands alone because four modules apply the same rules and none of them owns them:
`config` checks a redirect URI, `storage` keeps tokens to the URL they were issued for,
`auth` refuses discovered endpoints a secret must not go to, and `gateway_auth` decides
which requests may carry a token. `config`, the lowest of them, must not import the
others, so the rules sit below all four. Only the standard library is imported.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

__all__ = [
    "is_https_or_loopback",
    "is_loopback_host",
    "is_loopback_http",
    "is_unambiguous",
    "same_resource",
    "url_origin",
]

# The authority of a URL every parser reads alike: a plain host name or IPv4 address, or an
# IPv6 literal in brackets, and an optional port. No userinfo, no percent-escapes.
_AUTHORITY = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
# Browsers and `requests` (urllib3) end the authority at a backslash; `urllib.parse` does not.
_NEVER_IN_URLS = re.compile(r"[\\\s\x00-\x1f\x7f]")


def is_loopback_host(host: str | None) -> bool:
    """Return whether `host` is `localhost`, in 127.0.0.0/8 or `::1`."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_unambiguous(url: str) -> bool:
    """Return whether every URL parser finds the same host in `url`.

    `urllib.parse` reads `http://evil.example\\@127.0.0.1/` as a URL to 127.0.0.1 with
    userinfo, while `requests` and browsers send it to evil.example. A URL whose host a
    secret's destination is decided on must hold no backslash, whitespace or control
    character, no userinfo and no escapes in its authority.
    """
    if _NEVER_IN_URLS.search(url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return False
    return _AUTHORITY.fullmatch(parts.netloc) is not None


def is_loopback_http(url: str) -> bool:
    """Return whether `url` is plain http to a loopback host (what a redirect URI must be)."""
    parts = urlsplit(url)
    return parts.scheme == "http" and is_unambiguous(url) and is_loopback_host(parts.hostname)


def is_https_or_loopback(url: str) -> bool:
    """Return whether a secret may be sent to `url`: https, or plain http only to a loopback host."""
    parts = urlsplit(url)
    return (parts.scheme == "https" and bool(parts.hostname) and is_unambiguous(url)) or is_loopback_http(url)


def url_origin(url: str) -> str:
    """`scheme://host[:port]` of `url`, lowercased, without a default port: equal for the same origin."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def same_resource(a: str, b: str) -> bool:
    """Return whether two URLs name the same resource (scheme/host case, default port, trailing slash)."""
    return _normalize(a) == _normalize(b)


def _normalize(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    return url_origin(url), parts.path.rstrip("/"), parts.query
