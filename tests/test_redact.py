"""The redaction filter on real log records from several loggers."""

from __future__ import annotations

import io
import logging

import pytest

from redact import MASK, RedactingFilter, escape_controls, escape_lines, one_line, redact, register_secret, wrap


@pytest.fixture()
def captured() -> io.StringIO:
    """Install a redacting handler on the root logger, as the CLI does."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    handler.addFilter(RedactingFilter())
    root, ours = logging.getLogger(), logging.getLogger("toolscript")
    levels = root.level, ours.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    ours.setLevel(logging.NOTSET)
    yield stream
    root.removeHandler(handler)
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


def test_registered_secrets_are_masked_at_every_level_and_logger(captured: io.StringIO) -> None:
    register_secret("s3cr3t-registered-value")
    for name in ("toolscript", "httpx2", "mcp.client.auth", "urllib3.connectionpool"):
        logger = logging.getLogger(name)
        logger.debug("debug %s", "s3cr3t-registered-value")
        logger.info("info %s!", "xs3cr3t-registered-valuex")
        logger.warning("in a dict %r", {"k": "s3cr3t-registered-value"})
        logger.error("error s3cr3t-registered-value")
    out = captured.getvalue()
    assert "s3cr3t" not in out
    assert out.count(MASK) == 16
    assert "httpx2 debug [REDACTED]" in out


def test_secret_shapes_are_masked_without_registration(captured: io.StringIO) -> None:
    log = logging.getLogger("urllib3")
    log.debug("POST /token body=grant_type=authorization_code&code=AbC123&code_verifier=vvv&redirect_uri=x")
    log.debug("GET /authorize?response_type=code&state=st4te&client_id=c")
    log.debug("headers {'Authorization': 'Bearer eyJhbGciOi.payload.sig'}")
    log.debug('response {"access_token": "tok1", "refresh_token":"tok2", "token_type": "Bearer"}')
    log.debug("client_secret=hunter22 and access_token='quoted'")
    out = captured.getvalue()
    for secret in ("AbC123", "vvv", "st4te", "eyJhbGciOi", "tok1", "tok2", "hunter22", "quoted"):
        assert secret not in out, secret
    assert "response_type=code" in out and "grant_type=authorization_code" in out and "client_id=c" in out


def test_tracebacks_are_redacted(captured: io.StringIO) -> None:
    register_secret("tb-secret-123456")
    try:
        raise RuntimeError("failed with tb-secret-123456")
    except RuntimeError:
        logging.getLogger("toolscript").exception("boom")
    out = captured.getvalue()
    assert "Traceback" in out and "tb-secret-123456" not in out


def test_longest_secret_wins_and_short_values_are_ignored() -> None:
    register_secret("abcd1234")
    register_secret("abcd1234efgh5678")
    register_secret("ab")  # too short to mask safely
    assert redact("x abcd1234efgh5678 y abcd1234 ab") == f"x {MASK} y {MASK} ab"


def test_escape_controls_shows_every_c0_and_c1_control_but_newline_and_tab() -> None:
    controls = [chr(n) for n in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if chr(n) not in "\n\t"]
    shown = escape_controls("".join(controls))
    assert shown == "".join(f"\\x{ord(c):02x}" for c in controls)
    assert shown.isascii() and shown.isprintable()
    kept = "line\n\ttab ✓ é 中 \\x1b \u00a0"
    assert escape_controls(kept) == kept


def test_escape_controls_shows_invisible_format_characters_that_could_disguise_text() -> None:
    # A right-to-left override makes "https://evil.example/gpj.exe" read as ".../exe.jpg".
    assert escape_controls("https://evil.example/\u202egpj.exe") == "https://evil.example/\\u202egpj.exe"
    assert escape_controls("a\u200bb\u2066c\u00add\ufeff\U000e0041") == "a\\u200bb\\u2066c\\u00add\\ufeff\\U000e0041"
    kept = "مرحبا שלום 😀 ﬁ \u0300"  # right-to-left scripts, emoji, ligatures and combining marks stay
    assert escape_controls(kept) == kept


def test_a_library_error_quoting_a_secret_is_masked_before_it_is_cut() -> None:
    """`describe_exception` keeps 80 characters of a rejected input: a secret cut there must not show half."""
    import pydantic

    from logs import describe_exception

    secret = "s3cr3t-" + "x" * 60
    register_secret(secret)

    class Message(pydantic.BaseModel):
        n: int

    with pytest.raises(pydantic.ValidationError) as invalid:
        Message(n="a" * 50 + secret)  # type: ignore[arg-type]
    described = describe_exception(invalid.value)
    assert "s3cr3t" not in described and MASK in described, described


def test_the_format_characters_escaped_are_every_cf_character_of_this_python() -> None:
    """FORMAT_CHARACTERS is written out (a scan of the Unicode database costs 0.1 s at each start)."""
    import re
    import unicodedata

    from redact import FORMAT_CHARACTERS

    everything = "".join(chr(code) for code in range(0xA0, 0x110000))
    listed = set(re.findall(f"[{FORMAT_CHARACTERS}]", everything))
    assert listed == {char for char in everything if unicodedata.category(char) == "Cf"}
    assert escape_controls("a\u202eb\u200bc\U000e0001 é\xad 日本") == "a\\u202eb\\u200bc\\U000e0001 é\\u00ad 日本"


def test_the_helpers_keep_server_text_off_the_first_column() -> None:
    assert one_line("a\x1b[2J\nb\tc") == "a\\x1b[2J\\nb\\tc"
    assert escape_lines("first\nerror: forged\n    kept\x07") == "first\n    error: forged\n    kept\\x07"
    assert wrap("abcdefgh", "s> ", 7) == ["s> abcd", "s> efgh"]
    assert wrap("日本語", "", 4) == ["日本", "語"]  # wide characters take two columns
    assert wrap("abc", "s> ", None) == ["s> abc"]
