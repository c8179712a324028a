"""`ztm.hub.storeurl`: the `--store` URL and `--store-password-file`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztm.errors import BadInput
from ztm.hub.storeurl import PASSWORD_ADVICE, StoreUrl, parse_store_url, read_password_file


def test_plain_url() -> None:
    url = parse_store_url("postgresql://ztm@db.example.net:6543/mesh")
    assert url == StoreUrl("ztm", "db.example.net", 6543, "mesh", {})
    assert url.redacted() == "postgresql://ztm@db.example.net:6543/mesh"
    assert url.connect_kwargs() == {"host": "db.example.net", "port": "6543", "user": "ztm", "dbname": "mesh"}
    assert url.conninfo() == "host='db.example.net' port='6543' user='ztm' dbname='mesh'"


def test_short_scheme_default_port_ipv6_params_and_escapes() -> None:
    url = parse_store_url("postgres://o%27brien@[::1]/my%20db?sslmode=verify-full&application_name=hub-1")
    assert url.host == "::1" and url.port == 5432 and url.user == "o'brien" and url.dbname == "my db"
    assert url.params == {"sslmode": "verify-full", "application_name": "hub-1"}
    assert url.redacted() == "postgresql://o'brien@[::1]:5432/my db?application_name=hub-1&sslmode=verify-full"
    assert "user='o\\'brien'" in url.conninfo()
    assert parse_store_url("POSTGRESQL://u@10.0.0.1:1/d").host == "10.0.0.1"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("mysql://u@h/d", "must start with postgresql://"),
        ("postgresql://h/d", "names no user"),
        ("postgresql://@h/d", "names no user"),
        ("postgresql://u@/d", "names no host"),
        ("postgresql://u@h", "names no database"),
        ("postgresql://u@h/", "names no database"),
        ("postgresql://u@h/a/b", "one path segment"),
        ("postgresql://u@h:0/d", "port '0'"),
        ("postgresql://u@h:70000/d", "port '70000'"),
        ("postgresql://u@h:x/d", "port 'x'"),
        ("postgresql://u@[::1/d", "closing ']'"),
        ("postgresql://u@[zz]/d", "not an IPv6 address"),
        ("postgresql://u@[::1]x/d", "only ':PORT'"),
        ("postgresql://u@h1,h2/d", "one host"),
        ("postgresql://u@h%/d", "not a host name"),
        ("postgresql://u@h/d?sslmode", "NAME=VALUE"),
        ("postgresql://u@h/d?bogus=1", "unknown parameter 'bogus'"),
        ("postgresql://u@h/d?host=x", "belongs in the URL"),
        ("postgresql://u@h/d?sslmode=a&sslmode=b", "given twice"),
        ("postgresql://u@h/d#frag", "fragment"),
        ("postgresql://u@h/d b", "space"),
        ("postgresql://u@h/%ff", "not UTF-8"),
        ("postgresql://u@h/%0a", "control character"),
    ],
)
def test_malformed_urls_are_one_line_errors_with_an_example(text: str, words: str) -> None:
    with pytest.raises(BadInput) as err:
        parse_store_url(text)
    msg = err.value.message
    assert words in msg and "\n" not in msg
    assert "example: --store postgresql://" in msg


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://ztm:hunter2@h/d",
        "postgresql://ztm:@h/d",
        "postgres://ztm:hunter2@[::1]:5432/d",
        "postgresql://ztm@h/d?password=hunter2",
        "postgresql://ztm@h/d?sslmode=require&sslpassword=hunter2",
    ],
)
def test_a_password_in_the_url_is_refused_and_never_repeated(text: str) -> None:
    with pytest.raises(BadInput) as err:
        parse_store_url(text)
    assert PASSWORD_ADVICE in err.value.message
    assert "hunter2" not in err.value.message


@given(st.text(max_size=120))
def test_any_text_parses_or_is_bad_input(text: str) -> None:
    try:
        url = parse_store_url(text)
    except BadInput as exc:
        assert "\n" not in exc.message
    else:
        assert url.redacted().startswith("postgresql://")
        assert parse_store_url(url.redacted().replace(" ", "%20")).host == url.host


_USER = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":/@?#[]%,"), min_size=1)


@given(_USER, st.text(min_size=1, alphabet="abcdefghijklmnopqrstuvwxyz0123456789"), st.sampled_from(["h", "[::1]"]))
def test_fuzzed_passwords_never_appear_in_errors(user: str, secret: str, host: str) -> None:
    secret = f"QX{secret}QX"  # a marker no message contains by chance
    with pytest.raises(BadInput) as err:
        parse_store_url(f"postgresql://{user}:{secret}@{host}/d")
    assert secret not in err.value.message


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-._", min_size=1, max_size=30), st.integers(1, 65535))
def test_round_trip(db: str, port: int) -> None:
    url = parse_store_url(f"postgresql://ztm@db-1.example:{port}/{db}")
    assert (url.dbname, url.port) == (db, port)
    assert parse_store_url(url.redacted()) == url


def test_password_file(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("  s3cret with spaces \nsecond line\n")
    assert read_password_file(f) == "s3cret with spaces"


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("missing", "does not exist"),
        ("empty", "empty first line"),
        ("blank", "empty first line"),
        ("dir", "is a directory"),
        ("binary", "not UTF-8"),
    ],
)
def test_bad_password_files(tmp_path: Path, setup: str, words: str) -> None:
    f = tmp_path / "pw"
    if setup == "empty":
        f.write_text("")
    elif setup == "blank":
        f.write_text("   \nsecret\n")
    elif setup == "dir":
        f.mkdir()
    elif setup == "binary":
        f.write_bytes(b"\xff\xfe\n")
    with pytest.raises(BadInput) as err:
        read_password_file(f)
    assert words in err.value.message and str(f) in err.value.message and "\n" not in err.value.message


def test_unreadable_password_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pw"
    f.write_text("x\n")
    f.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the open fail as it does for everyone else (CI runs as root)

        def refuse(self: Path, *args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(BadInput, match="permission denied"):
        read_password_file(f)
