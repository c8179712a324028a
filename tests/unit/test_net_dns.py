"""ztm.net.dns: the mesh's DNS answers, each odd shape of query, and a fuzz: any bytes give DROP, None or a reply
that parses, with the query's id, and never an exception."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.net.dns import DROP, TTL, Zone, ZoneError, answer, zone_name

NAMES = {
    "web": ("100.64.0.5", "fd12:3456:789a::6440:5"),
    "db.office": ("100.64.0.6", None),
    "v6only": (None, "fd12:3456:789a::6440:7"),
    "Mixed": ("100.64.0.8", None),
    "mixed": ("100.64.0.9", None),
    "bad..name": ("100.64.0.10", None),
    "liar": ("not an ip", "100.64.0.11"),
}
FUZZ = settings(max_examples=400, deadline=None)


def ask(qname: str, rdtype: str = "A", *, names: dict[str, tuple[str | None, str | None]] = NAMES, **kw: object):  # type: ignore[no-untyped-def]
    query = dns.message.make_query(qname, rdtype, **kw)  # type: ignore[arg-type]
    wire = answer(query.to_wire(), names, "lab", "ztm")
    assert wire is not None and wire != DROP
    reply = dns.message.from_wire(wire)
    assert reply.id == query.id and reply.flags & dns.flags.QR
    return reply


def records(reply: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset)


def test_a_and_aaaa_case_insensitive() -> None:
    reply = ask("web.lab.ztm")
    assert reply.rcode() == dns.rcode.NOERROR and records(reply) == ["100.64.0.5"]
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.RA
    assert reply.answer[0].ttl == TTL
    assert records(ask("WEB.Lab.ZTM", "AAAA")) == ["fd12:3456:789a::6440:5"]
    assert records(ask("web.lab.ztm.", "ANY")) == ["100.64.0.5", "fd12:3456:789a::6440:5"]


def test_dotted_endpoint_names_and_missing_families() -> None:
    assert records(ask("db.office.lab.ztm")) == ["100.64.0.6"]
    nodata = ask("db.office.lab.ztm", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority  # SOA for negative caching
    assert records(ask("v6only.lab.ztm", "AAAA")) == ["fd12:3456:789a::6440:7"]
    assert not ask("v6only.lab.ztm").answer
    mx = ask("web.lab.ztm", "MX")
    assert mx.rcode() == dns.rcode.NOERROR and not mx.answer


def test_names_equal_but_for_case_answer_one_address() -> None:
    assert records(ask("MIXED.lab.ztm")) == ["100.64.0.8"]  # "Mixed" sorts first: the same every time


def test_unknown_names_are_nxdomain_with_soa() -> None:
    for qname in ("nobody.lab.ztm", "a.web.lab.ztm", "bad..name.lab.ztm".replace("..", ".")):
        reply = ask(qname)
        assert reply.rcode() == dns.rcode.NXDOMAIN, qname
        assert reply.authority[0].rdtype == dns.rdatatype.SOA
        assert reply.authority[0][0].minimum == TTL


def test_a_wrong_address_from_the_hub_is_left_out() -> None:
    assert not ask("liar.lab.ztm").answer
    assert not ask("liar.lab.ztm", "AAAA").answer  # an IPv4 address given as the IPv6 one


def test_apex() -> None:
    soa = ask("lab.ztm", "SOA")
    assert soa.answer and soa.answer[0].rdtype == dns.rdatatype.SOA
    assert ask("lab.ztm", "NS").answer[0].rdtype == dns.rdatatype.NS
    empty = ask("lab.ztm")
    assert empty.rcode() == dns.rcode.NOERROR and not empty.answer


def test_other_names_are_forwarded() -> None:
    for qname in ("example.com", "ztm", "other.ztm", "web.other.ztm", "lab.ztm.example"):
        query = dns.message.make_query(qname, "A")
        assert answer(query.to_wire(), NAMES, "lab", "ztm") is None, qname


def test_other_classes_and_transfers_are_not_implemented() -> None:
    assert ask("web.lab.ztm", "A", rdclass=dns.rdataclass.CH).rcode() == dns.rcode.NOTIMP
    for rdtype in ("AXFR", "IXFR", "MAILB"):
        reply = ask("lab.ztm", rdtype)
        assert reply.rcode() == dns.rcode.NOTIMP and not reply.answer, rdtype
    query = dns.message.make_query("example.com", "A", rdclass=dns.rdataclass.CH)
    assert answer(query.to_wire(), NAMES, "lab", "ztm") is None  # not ours: the upstream decides


def test_edns() -> None:
    reply = ask("web.lab.ztm", use_edns=0, payload=4096)
    assert reply.edns == 0 and reply.payload == 1232 and records(reply) == ["100.64.0.5"]
    assert ask("web.lab.ztm", use_edns=1).rcode() == dns.rcode.BADVERS
    assert ask("web.lab.ztm").edns == -1


def raw(ident: int, flags: int, counts: tuple[int, int, int, int], body: bytes = b"") -> bytes:
    return struct.pack("!HHHHHH", ident, flags, *counts) + body


QUESTION = dns.name.from_text("web.lab.ztm").to_wire() + struct.pack("!HH", 1, 1)


def bare_rcode(wire: bytes | None, ident: int) -> int:
    assert wire is not None and len(wire) == 12
    got, flags, *counts = struct.unpack("!HHHHHH", wire)
    assert got == ident and flags & 0x8000 and counts == [0, 0, 0, 0]
    return int(flags & 0xF)


def test_odd_shapes() -> None:
    assert answer(b"", NAMES, "lab", "ztm") == DROP
    assert answer(b"\x00" * 11, NAMES, "lab", "ztm") == DROP
    response = raw(7, 0x8000, (1, 0, 0, 0), QUESTION)
    assert answer(response, NAMES, "lab", "ztm") == DROP  # never answer an answer (two servers would ping-pong)
    assert bare_rcode(answer(raw(7, 0, (1, 0, 0, 0), QUESTION[:5]), NAMES, "lab", "ztm"), 7) == dns.rcode.FORMERR
    assert bare_rcode(answer(raw(8, 0, (0, 0, 0, 0)), NAMES, "lab", "ztm"), 8) == dns.rcode.FORMERR
    many = raw(9, 0x0100, (2, 0, 0, 0), QUESTION * 2)
    wire = answer(many, NAMES, "lab", "ztm")
    assert bare_rcode(wire, 9) == dns.rcode.FORMERR
    assert wire is not None and struct.unpack("!H", wire[2:4])[0] & 0x0100  # RD echoed
    loop = raw(10, 0, (1, 0, 0, 0), b"\xc0\x0c" + struct.pack("!HH", 1, 1))  # a pointer to itself
    assert bare_rcode(answer(loop, NAMES, "lab", "ztm"), 10) == dns.rcode.FORMERR
    trailing = raw(11, 0, (1, 0, 0, 0), QUESTION + b"junk")
    assert bare_rcode(answer(trailing, NAMES, "lab", "ztm"), 11) == dns.rcode.FORMERR
    notify = raw(12, dns.opcode.to_flags(dns.opcode.NOTIFY), (1, 0, 0, 0), QUESTION)
    assert bare_rcode(answer(notify, NAMES, "lab", "ztm"), 12) == dns.rcode.NOTIMP
    update = raw(13, dns.opcode.to_flags(dns.opcode.UPDATE), (1, 0, 0, 0), QUESTION)
    assert bare_rcode(answer(update, NAMES, "lab", "ztm"), 13) == dns.rcode.NOTIMP
    two_opts = dns.message.make_query("web.lab.ztm", "A", use_edns=0).to_wire()
    opt = two_opts[len(raw(0, 0, (0, 0, 0, 0), QUESTION)) :]
    doubled = two_opts[:10] + struct.pack("!H", 2) + two_opts[12:] + opt
    assert bare_rcode(answer(doubled, NAMES, "lab", "ztm"), struct.unpack("!H", doubled[:2])[0]) == dns.rcode.FORMERR


def test_huge_names() -> None:
    labels = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"  # 257 bytes: over the 255 limit
    wire = answer(raw(14, 0, (1, 0, 0, 0), labels + struct.pack("!HH", 1, 1)), NAMES, "lab", "ztm")
    assert bare_rcode(wire, 14) == dns.rcode.FORMERR
    long_name = ".".join(["a" * 60] * 3) + ".lab.ztm"  # a legal, long name under the zone
    assert ask(long_name).rcode() == dns.rcode.NXDOMAIN
    huge_endpoint = {"x" * 63: ("100.64.0.20", None), ".".join(["y" * 63] * 4): ("100.64.0.21", None)}
    assert records(ask("x" * 63 + ".lab.ztm", names=huge_endpoint)) == ["100.64.0.20"]


def test_answers_fit_the_client() -> None:
    many = {f"n{i}": (f"100.64.{i // 256}.{i % 256}", None) for i in range(2, 400)}
    reply = ask("n7.lab.ztm", names=many)
    assert records(reply) == ["100.64.0.7"]
    assert not reply.flags & dns.flags.TC


def test_zone_names() -> None:
    assert zone_name("lab", "ztm") == dns.name.from_text("lab.ztm.")
    assert zone_name("corp.eu", "mesh.example.") == dns.name.from_text("corp.eu.mesh.example.")
    with pytest.raises(ZoneError, match="not a DNS name"):
        zone_name("a" * 64, "ztm")
    with pytest.raises(ZoneError, match="label is empty"):
        zone_name("a..b", "ztm")
    zone = Zone(NAMES, "lab", "ztm")
    assert zone.answer(dns.message.make_query("web.lab.ztm", "A").to_wire()) is not None


def check_reply(query: bytes, wire: bytes | None) -> None:
    """Whatever came in: DROP, None (forward: only a parsable query not under the zone), or a reply that parses,
    fits in 512 bytes for a query without EDNS, and carries the query's id."""
    if wire is None:
        message = dns.message.from_wire(query)
        assert len(message.question) == 1
        assert not message.question[0].name.is_subdomain(dns.name.from_text("lab.ztm."))
        return
    if wire == DROP:
        assert len(query) < 12 or query[2] & 0x80
        return
    assert wire[:2] == query[:2] and wire[2] & 0x80
    assert len(wire) <= 1232
    dns.message.from_wire(wire)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_bytes(query: bytes) -> None:
    check_reply(query, answer(query, NAMES, "lab", "ztm"))


labels = st.sampled_from(["web", "WEB", "lab", "ztm", "db", "office", "x" * 63, "", "\x00", "*", "a.b", "é"])


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    """Queries close to valid ones: real names, types and classes, several questions, EDNS, then mutations."""
    names = draw(st.lists(st.lists(labels, min_size=0, max_size=6), min_size=0, max_size=3))
    body = b""
    for parts in names:
        wire_name = b"".join(bytes([len(p.encode()) & 0xFF]) + p.encode()[:63] for p in parts if p) + b"\x00"
        body += wire_name + struct.pack("!HH", draw(st.sampled_from([1, 28, 255, 252, 251, 6, 2, 15, 16, 0, 65535])),
                                         draw(st.sampled_from([1, 3, 4, 254, 255, 0])))  # fmt: skip
    edns = draw(st.booleans())
    if edns:
        version = draw(st.sampled_from([0, 0, 1, 255]))
        rdlen = draw(st.integers(0, 8))
        body += b"\x00" + struct.pack("!HHBBHH", 41, draw(st.integers(0, 65535)), 0, version, 0, rdlen)
        body += draw(st.binary(min_size=0, max_size=8))
    flags = draw(st.integers(0, 0xFFFF)) & ~draw(st.sampled_from([0, 0x8000]))
    counts = (len(names), 0, 0, int(edns))
    wire = raw(draw(st.integers(0, 0xFFFF)), flags, counts, body)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(wire)))
        wire = wire[:cut]
    if draw(st.booleans()):
        at = draw(st.integers(0, max(0, len(wire) - 1)))
        wire = wire[:at] + draw(st.binary(min_size=1, max_size=3)) + wire[at + 1 :]
    return wire


@FUZZ
@given(queries())
def test_fuzz_query_shapes(query: bytes) -> None:
    check_reply(query, answer(query, NAMES, "lab", "ztm"))
    if len(query) >= 12:
        check_reply(query, answer(query, NAMES, "lab", "ztm", tcp=True))


@FUZZ
@given(st.dictionaries(st.text(max_size=70), st.tuples(st.none() | st.text(max_size=20),
                                                       st.none() | st.text(max_size=40)), max_size=8),
       st.sampled_from(["web.lab.ztm", "lab.ztm", "x.lab.ztm"]))  # fmt: skip
def test_fuzz_names(names: dict[str, tuple[str | None, str | None]], qname: str) -> None:
    """Whatever the hub's records say, the zone builds and answers."""
    query = dns.message.make_query(qname, "ANY").to_wire()
    wire = answer(query, names, "lab", "ztm")
    assert wire is not None and wire[:2] == query[:2]
    dns.message.from_wire(wire)
