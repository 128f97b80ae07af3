"""Run tokens (grants.py) through the gateway's API: minted with the gateway's token, narrower than it."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import serving, stdio_server

from config import parse_config
from errors import UsageError
from gateway import Gateway
from gateway_http import ApiServer, RemoteGateway
from grants import Grants


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    cfg = parse_config({"servers": {"s": stdio_server(timeout=10), "t": stdio_server(timeout=10)}})
    gateway = Gateway(cfg).start()
    try:
        with serving(ApiServer(gateway)) as server:
            yield server
    finally:
        gateway.stop()


def request(api: ApiServer, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


def test_a_run_token_lists_and_calls_only_its_tools(api: ApiServer) -> None:
    grant_id, token = api.mint_run_token(["s__echo", "t__*"], 60)
    status, tools = request(api, "GET", "/tools", token)
    assert status == 200
    names = {tool["name"] for tool in tools}
    assert "s__echo" in names and "t__add" in names
    assert "s__add" not in names
    assert request(api, "POST", "/tools/s__echo", token, {"text": "hi"})[0] == 200
    status, body = request(api, "POST", "/tools/s__add", token, {"a": 1, "b": 2})
    assert status == 403 and "only its run's tools" in body["error"]
    for method, path in (("GET", "/servers"), ("GET", "/resources"), ("GET", "/prompts"), ("POST", "/mcp")):
        assert request(api, method, path, token, {} if method == "POST" else None)[0] == 403, path
    api.grants.revoke(grant_id)


def test_a_run_token_cannot_mint_or_revoke(api: ApiServer) -> None:
    grant_id, token = api.mint_run_token(["*"], 60)
    assert request(api, "POST", "/tokens", token, {"tools": ["*"], "seconds": 60})[0] == 403
    assert request(api, "DELETE", f"/tokens/{grant_id}", token)[0] == 403
    api.grants.revoke(grant_id)


def test_a_revoked_token_is_refused(api: ApiServer) -> None:
    remote = RemoteGateway(api.url, api.token)
    grant_id, token = remote.mint_run_token(["s__*"], 60)
    assert request(api, "POST", "/tools/s__echo", token, {"text": "hi"})[0] == 200
    remote.revoke_run_token(grant_id)
    status, body = request(api, "POST", "/tools/s__echo", token, {"text": "hi"})
    assert status == 403 and "Wrong gateway token" in body["error"]
    with pytest.raises(UsageError):
        remote.revoke_run_token(grant_id)


@pytest.mark.parametrize(
    "body",
    [{"tools": "s__*", "seconds": 60}, {"tools": ["*"], "seconds": 0}, {"tools": ["*"]}, {"tools": [1], "seconds": 5}],
)
def test_malformed_mint_requests_are_400(api: ApiServer, body: dict[str, Any]) -> None:
    assert request(api, "POST", "/tokens", api.token, body)[0] == 400


def test_a_token_expires_at_its_deadline() -> None:
    now = [100.0]
    grants = Grants(clock=lambda: now[0])
    grant, token = grants.mint(["*"], 5)
    assert grants.match(token) == grant
    now[0] = 105.0
    assert grants.match(token) is None


def test_live_tokens_are_bounded() -> None:
    grants = Grants()
    for _ in range(Grants.MAX_LIVE):
        grants.mint(["*"], 60)
    with pytest.raises(OverflowError):
        grants.mint(["*"], 60)


def test_the_gateway_proves_itself_to_a_run_token_holder(api: ApiServer) -> None:
    """A script holds only its run token: the gateway's proof is keyed with that token, not its own."""
    grant_id, token = api.mint_run_token(["s__echo"], 60)
    assert [tool["name"] for tool in RemoteGateway(api.url, token).tools()] == ["s__echo"]
    api.grants.revoke(grant_id)
    with pytest.raises(UsageError, match="did not prove"):
        RemoteGateway(api.url, token).tools()
