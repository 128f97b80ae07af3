#!/usr/bin/env python3
"""A stand-in browser for tests, used as `$BROWSER`.

It does what a browser does with an auto-approving authorization server: request the
authorization URL (given as the only argument) without following the redirect, then
request the redirect's Location, which is toolscript's loopback callback. Standard
library only, so any `python3` can run it.
"""

import sys
import urllib.error
import urllib.request


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def visit(url: str) -> bool:
    """Request `url`, then the Location it redirects to; return whether there was one."""
    try:
        response = urllib.request.build_opener(_NoRedirect).open(url, timeout=30)
        status, location = response.status, response.headers.get("Location")
    except urllib.error.HTTPError as exc:
        status, location = exc.code, exc.headers.get("Location")
    if not location:
        print(f"browser.py: the authorization URL answered {status} without a redirect", file=sys.stderr)
        return False
    try:
        urllib.request.urlopen(location, timeout=30).read()
    except urllib.error.HTTPError:
        pass  # toolscript's failure page: the callback was still delivered
    return True


if __name__ == "__main__":
    sys.exit(0 if visit(sys.argv[1]) else 1)
