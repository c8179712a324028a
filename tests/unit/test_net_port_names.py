"""The port streams' names: `port/tcp/PORT` and `port/udp/PORT` services (`ztm.apps.net.ports.parse_service`) and
the tunnel's `--target EP:PORT` (`ztm.apps.tunnel.spec.PortTarget`, `Inbound.parse`): every malformed form a one-line
BadInput."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.apps.net.ports import parse_service, service
from ztm.apps.tunnel.spec import Inbound, PortTarget
from ztm.errors import BadInput

BAD_SERVICES = (
    "port/tcp/0", "port/tcp/65536", "port/tcp/99999", "port/tcp/022", "port/tcp/22/../x", "port/tcp/", "port/sctp/53",
    "port/tcp/+1", "port/tcp/1 ", "port/tcp/\uff12\uff12", "ports/tcp/22", "port/tcp/1e3", "port/udp/0",
    "port/udp/065535", "port/udp/70000", "port/UDP/53", "port/udp/53/", "port//udp/53", "port/icmp/1", "port/udp/",
)  # fmt: skip


def test_services() -> None:
    assert parse_service("port/tcp/22") == ("tcp", 22)
    assert parse_service("port/tcp/65535") == ("tcp", 65535)
    assert parse_service("port/udp/53") == ("udp", 53)
    assert parse_service("port/udp/1") == ("udp", 1)
    assert service(5432) == "port/tcp/5432"
    assert service(53, "udp") == "port/udp/53"
    for bad in BAD_SERVICES:
        with pytest.raises(BadInput, match="expected port/tcp/PORT or port/udp/PORT"):
            parse_service(bad)
    with pytest.raises(BadInput, match="from 1 to 65535"):
        service(0)
    with pytest.raises(BadInput, match="tcp or udp"):
        service(1, "sctp")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_fuzz_services(text: str) -> None:
    try:
        protocol, port = parse_service(text)
    except BadInput as exc:
        assert "\n" not in exc.message
        return
    assert text == f"port/{protocol}/{port}" and protocol in ("tcp", "udp") and 1 <= port <= 65535


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["tcp", "udp", "sctp", "UDP", ""]), st.text("0123456789+-/ ", max_size=7))
def test_fuzz_services_near_the_accepted_form(protocol: str, port: str) -> None:
    """Strings close to `port/udp/N`, where a lenient parser would slip: exactly the canonical ones pass."""
    text = f"port/{protocol}/{port}"
    canonical = protocol in ("tcp", "udp") and port.isdigit() and port == str(int(port)) and 1 <= int(port) <= 65535
    try:
        assert parse_service(text) == (protocol, int(port)) and canonical
    except BadInput as exc:
        assert not canonical and "\n" not in exc.message


def test_port_targets() -> None:
    assert PortTarget.parse("db:5432") == PortTarget("db", 5432)
    assert str(PortTarget.parse("db.office:22")) == "db.office:22"
    for bad in ("db", "db:0", "db:65536", "db:022", ":22", "db:", "db:x", "bad name:22", 22, None):
        with pytest.raises(BadInput):
            PortTarget.parse(bad)


def test_inbound_with_a_target() -> None:
    spec = Inbound.parse({"tunnel": "tcp/pg", "listen": ["15432"], "target": "db:5432"})
    assert spec.target == PortTarget("db", 5432)
    assert spec.to_json()["target"] == "db:5432"
    assert "target" not in Inbound.parse({"tunnel": "tcp/pg", "listen": ["15432"]}).to_json()
    udp = Inbound.parse({"tunnel": "udp/dns", "listen": ["5353"], "target": "db:53"})  # a UDP port flow per client
    assert udp.target == PortTarget("db", 53) and udp.to_json()["target"] == "db:53"
    with pytest.raises(BadInput, match="not both"):
        Inbound.parse({"tunnel": "tcp/pg", "listen": ["15432"], "target": "db:5432", "exits": ["db"]})
