"""The exception tree: next commands as attributes, and reading an OAuth error answer."""

from __future__ import annotations

import pytest

from errors import (
    AuthError,
    AuthRequiredError,
    OAuthErrorResponse,
    StorageError,
    ToolscriptError,
    auth_command,
    run_hint,
)
from redact import register_secret


def test_next_command_is_an_attribute_and_ends_the_message() -> None:
    assert auth_command("github") == "toolscript auth github"
    assert auth_command("github", "--logout", "--forget-client") == "toolscript auth github --logout --forget-client"
    assert run_hint("toolscript tools") == "Run: toolscript tools"
    error = StorageError("Record x is broken.", next_command=auth_command("x"))
    assert error.next_command == "toolscript auth x"
    assert str(error) == error.message == "Record x is broken. Run: toolscript auth x"
    assert str(AuthError("It failed", next_command="toolscript auth y")) == "It failed. Run: toolscript auth y"
    plain = ToolscriptError("Nothing to do.")
    assert plain.next_command is None and str(plain) == "Nothing to do."


def test_auth_required_names_its_server_command() -> None:
    error = AuthRequiredError("Server 'h' is not authenticated.", server="h", scope="repo")
    assert error.next_command == "toolscript auth h" and error.exit_code == 3
    assert str(error) == "Server 'h' is not authenticated. Run: toolscript auth h"
    assert AuthRequiredError("Somebody must log in.").next_command is None


def test_gateway_adds_the_command_by_attribute() -> None:
    from upstream import _auth_error

    named = AuthRequiredError("Server 'h' is not authenticated.", server="h")
    assert _auth_error(named, "h") is named
    anonymous = AuthRequiredError("The token was refused.", error="invalid_token", scope="s")
    fixed = _auth_error(anonymous, "h")
    assert (fixed.server, fixed.error, fixed.scope) == ("h", "invalid_token", "s")
    assert fixed.next_command == "toolscript auth h"
    assert fixed.message == "The token was refused. Run: toolscript auth h"


@pytest.mark.parametrize(
    ("status", "body", "error", "description", "text"),
    [
        (
            400,
            b'{"error": "invalid_grant", "error_description": "code expired"}',
            "invalid_grant",
            "code expired",
            "400 invalid_grant: code expired",
        ),
        (401, b'{"error": "invalid_client", "error_description": ""}', "invalid_client", None, "401 invalid_client"),
        (400, b'{"error": 7, "error_description": "x"}', None, "x", "400 Bad Request"),
        (503, b"<html>down</html>", None, None, "503 Service Unavailable"),
        (502, b"", None, None, "502 Bad Gateway"),
        (400, b'["invalid_grant"]', None, None, "400 Bad Request"),
        (400, b"\xff\xfe{", None, None, "400 Bad Request"),
        (599, b"", None, None, "599"),
    ],
)
def test_oauth_error_answers(status: int, body: bytes, error: str | None, description: str | None, text: str) -> None:
    answer = OAuthErrorResponse.parse(status, body)
    assert (answer.status, answer.error, answer.description) == (status, error, description)
    assert str(answer) == text


def test_oauth_error_text_never_carries_a_secret() -> None:
    register_secret("rt-echoed-by-the-server")
    answer = OAuthErrorResponse.parse(
        400, b'{"error": "invalid_grant", "error_description": "refresh token rt-echoed-by-the-server is revoked"}'
    )
    assert str(answer) == "400 invalid_grant: refresh token [REDACTED] is revoked"
