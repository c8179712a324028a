"""`SSLKEYLOGFILE` in the hub and the agent (`ztm.keylog`), with real processes on 127.0.0.1: both log the secrets of
their TLS sessions there (NSS key log format, the file made 0600), the two files name the same sessions, and a
value that cannot be written stops the process at start with one line saying so.

The capture proof that decrypts a hub's traffic with such a file is tests/security/test_e2e_capture.py.
"""

from __future__ import annotations

import re
import ssl
import time
from pathlib import Path

import pytest

from integration.test_bad_input import assert_one_line_error
from support import ZTM, base_env, free_port, run, start_agent, start_hub, wait_until
from ztm import keylog
from ztm.errors import BadInput

SECRET = re.compile(r"^CLIENT_TRAFFIC_SECRET_0 ([0-9a-f]{64}) [0-9a-f]+$", re.MULTILINE)
"""A TLS 1.3 application traffic secret line: label, the session's client random, the secret."""


def sessions(path: Path) -> set[str]:
    """Client randoms of the TLS 1.3 sessions logged in `path`."""
    return set(SECRET.findall(path.read_text())) if path.exists() else set()


def test_hub_and_agent_log_their_tls_secrets(tmp_path: Path) -> None:
    hub_keys, agent_keys = tmp_path / "hub.keys", tmp_path / "agent.keys"
    hub = start_hub(tmp_path, env={"SSLKEYLOGFILE": str(hub_keys)})
    agent = start_agent(tmp_path, "a", env={"SSLKEYLOGFILE": str(agent_keys)})
    agent.join("m", "a", hub.permit)

    # the join's two connections (user certificate to enrol, then endpoint certificate), seen from both ends
    def shared() -> set[str] | None:
        found = sessions(hub_keys) & sessions(agent_keys)
        return found if len(found) >= 2 else None

    wait_until(shared, 10, "the hub's and the agent's key logs to name the same two TLS sessions")
    for path in (hub_keys, agent_keys):
        assert path.stat().st_mode & 0o777 == 0o600, f"{path} is {oct(path.stat().st_mode)}"
        assert "SERVER_TRAFFIC_SECRET_0" in path.read_text()
    for proc in (hub.proc, agent.proc):
        proc.wait_for_output(r"SSLKEYLOGFILE is set: TLS session secrets are written to ")


def test_without_the_variable_nothing_is_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for value in (None, "", "  "):
        if value is None:
            monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
        else:
            monkeypatch.setenv("SSLKEYLOGFILE", value)
        ctx = keylog.apply(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        assert ctx.keylog_filename is None and keylog.check() is None
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "k.log"))
    assert keylog.apply(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)).keylog_filename == str(tmp_path / "k.log")


def test_an_unwritable_key_log_stops_hub_and_agent_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "no-such-dir" / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(bad))
    with pytest.raises(BadInput, match=r"SSLKEYLOGFILE=.*unset it"):
        keylog.check()
    env = base_env({"SSLKEYLOGFILE": str(bad)}, home=tmp_path)
    permit = tmp_path / "root.json"
    for args in (
        ["hub", "--listen", f"127.0.0.1:{free_port()}", "--permit", str(permit), "--data", str(tmp_path / "h")],
        ["agent", "--listen", f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "a")],
    ):
        start = time.monotonic()
        cp = run([*ZTM, "run", *args], env=env, check=False, timeout=20)
        took = time.monotonic() - start
        line = assert_one_line_error(cp, r"SSLKEYLOGFILE=.*no-such-dir.*cannot write TLS secrets")
        assert took < 15, (line, took)
    assert not permit.exists() and not bad.parent.exists()
