"""The port streams' names: `port/tcp/PORT` services (`ztm.apps.net.ports.parse_service`) and the tunnel's
`--target EP:PORT` (`ztm.apps.tunnel.spec.PortTarget`, `Inbound.parse`): every malformed form a one-line BadInput."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.apps.net.ports import parse_service, service
from ztm.apps.tunnel.spec import Inbound, PortTarget
from ztm.errors import BadInput

BAD_SERVICES = (
    "port/tcp/0", "port/tcp/65536", "port/tcp/99999", "port/tcp/022", "port/tcp/22/../x", "port/tcp/", "port/udp/53",
    "port/tcp/+1", "port/tcp/1 ", "port/tcp/\uff12\uff12", "ports/tcp/22", "port/tcp/1e3",
)  # fmt: skip


def test_services() -> None:
    assert parse_service("port/tcp/22") == 22
    assert parse_service("port/tcp/65535") == 65535
    assert service(5432) == "port/tcp/5432"
    for bad in BAD_SERVICES:
        with pytest.raises(BadInput, match="expected port/tcp/PORT"):
            parse_service(bad)
    with pytest.raises(BadInput, match="from 1 to 65535"):
        service(0)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_fuzz_services(text: str) -> None:
    try:
        port = parse_service(text)
    except BadInput as exc:
        assert "\n" not in exc.message
        return
    assert text == f"port/tcp/{port}" and 1 <= port <= 65535


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
    with pytest.raises(BadInput, match="TCP only"):
        Inbound.parse({"tunnel": "udp/dns", "listen": ["5353"], "target": "db:53"})
    with pytest.raises(BadInput, match="not both"):
        Inbound.parse({"tunnel": "tcp/pg", "listen": ["15432"], "target": "db:5432", "exits": ["db"]})
