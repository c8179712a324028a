"""The mesh's DNS answers, sans-IO: A/AAAA for `NAME.MESH.SUFFIX` from the endpoints' mesh addresses.

`answer(query, names, mesh, suffix)` takes one DNS message as it came off the wire (UDP datagram, or a TCP message
without its length prefix) and returns what to send back, `None` when the question is not under the mesh's zone
(the caller forwards it to the system's resolvers), or `DROP` (b"") when nothing may be answered (shorter than a
DNS header, or a response rather than a query: answering responses would let two servers bounce packets forever).
`Zone` is the same thing with the names indexed once, for a server that answers many queries between changes.

Parsing is dnspython's (`dns.message.from_wire`, which bounds names to 255 bytes and detects compression loops);
what this module adds is the decision, and every odd shape gets a DNS answer, never an exception:

- a header but a message that does not parse (truncated, a compression loop, a name over 255 bytes, trailing
  garbage, a bad EDNS option): FORMERR, carrying the query's id and opcode;
- an opcode other than QUERY (NOTIFY, UPDATE, ...): NOTIMP;
- not exactly one question: FORMERR (the question decides whose the query is);
- an EDNS version above 0: BADVERS (RFC 6891);
- under the zone: class other than IN (or ANY): NOTIMP; AXFR/IXFR/MAILA/MAILB: NOTIMP (the zone is not
  transferred: the endpoints' list is the hub's, for members only);
- `NAME.MESH.SUFFIX` (case-insensitive; NAME may have dots, as endpoint names may): A and AAAA (ANY: both), other
  types NOERROR with no answer (NODATA); an unknown NAME: NXDOMAIN; the zone's apex: its SOA and NS, else NODATA.

Answers are authoritative (AA), carry RA (the server forwards other names), and have a 1 s TTL, negative ones too
(the SOA's minimum), so a resolver's cache does not hide a join, rename or leave for longer than the agent's own
1 s. A UDP answer that does not fit the client's size (512 bytes, or its EDNS payload up to 1232) goes out empty
with TC set, so the client asks again over TCP.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 1
"""Seconds a resolver may keep an answer (or, as the SOA minimum, a negative one)."""
UDP_PAYLOAD = 1232
"""The largest UDP answer this server sends to an EDNS client (the DNS flag day 2020 figure: no fragmentation)."""
TCP_MAX = 65535
DROP = b""
"""`answer`'s result when nothing may be sent back."""
HEADER = 12

_NOT_SERVED = {dns.rdatatype.AXFR, dns.rdatatype.IXFR, dns.rdatatype.MAILA, dns.rdatatype.MAILB}
_QR = 0x8000
_RD = 0x0100


class ZoneError(ValueError):
    """The mesh name and suffix do not make a DNS zone (a label over 63 bytes, an empty label...)."""


@functools.lru_cache(maxsize=64)
def zone_name(mesh: str, suffix: str) -> dns.name.Name:
    """`MESH.SUFFIX.` as a DNS name; ZoneError with the reason if it is not one."""
    text = f"{mesh}.{suffix.strip('.')}."
    try:
        name = dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise ZoneError(f"{text.rstrip('.')} is not a DNS name: {str(exc).rstrip('.')}") from None
    return name


class Zone:
    """The names of one mesh under `MESH.SUFFIX`, indexed for `answer`."""

    def __init__(self, names: Mapping[str, tuple[str | None, str | None]], mesh: str, suffix: str) -> None:
        self.origin = zone_name(mesh, suffix)
        self.soa, self.ns = _apex(self.origin)
        room = 255 - len(self.origin.to_wire() or b"")  # a whole name is at most 255 bytes on the wire
        self.records: dict[tuple[bytes, ...], tuple[str | None, str | None]] = {}
        """The endpoints' names relative to the zone, as lowercase labels -> their addresses (text, checked once
        they are first asked for)."""
        for name in sorted(names):  # sorted: of two names equal but for case, the same one wins every time
            key = tuple(label.lower().encode() for label in name.split("."))
            if key in self.records or not all(0 < len(k) < 64 for k in key) or sum(map(len, key)) + len(key) > room:
                continue  # not a DNS name (an empty label, too long)
            self.records[key] = names[name]
        self._rdatas: dict[tuple[str, int], dns.rdata.Rdata | None] = {}

    def _rdata(self, address: str | None, rdtype: int) -> dns.rdata.Rdata | None:
        """The A or AAAA rdata of `address`, None if it is not an address of that family (a record the hub sent
        wrong is left out); made once per zone."""
        if address is None:
            return None
        key = (address, rdtype)
        if key not in self._rdatas:
            valid = _valid(address, 4 if rdtype == dns.rdatatype.A else 6)
            made = (
                None
                if valid is None
                else dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.RdataType(rdtype), valid)
            )
            self._rdatas[key] = made
        return self._rdatas[key]

    def answer(self, query: bytes, *, tcp: bool = False) -> bytes | None:
        """The reply to `query`; None: not under this zone (forward it); `DROP`: send nothing."""
        if len(query) < HEADER:
            return DROP
        ident, flags = struct.unpack_from("!HH", query)
        if flags & _QR:
            return DROP
        opcode = dns.opcode.from_flags(flags)
        if opcode != dns.opcode.QUERY:
            return _bare(ident, flags, dns.rcode.NOTIMP)
        try:
            message = dns.message.from_wire(query)
        except Exception:  # dnspython raises many kinds (FormError, BadPointer, NameTooLong, ...)
            return _bare(ident, flags, dns.rcode.FORMERR)
        if len(message.question) != 1:
            return _bare(ident, flags, dns.rcode.FORMERR)
        question = message.question[0]
        qname = question.name
        if not qname.is_subdomain(self.origin):
            return None
        try:
            response = dns.message.make_response(message, recursion_available=True, our_payload=UDP_PAYLOAD)
            response.flags |= dns.flags.AA
            if message.edns > 0:
                response.set_rcode(dns.rcode.BADVERS)
            elif question.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY) or question.rdtype in _NOT_SERVED:
                response.flags &= ~dns.flags.AA
                response.set_rcode(dns.rcode.NOTIMP)
            else:
                self._fill(response, qname, question.rdtype)
            return _wire(response, _limit(message, tcp))
        except dns.exception.DNSException:  # a query dnspython parsed but cannot answer as it is: say so
            return _bare(ident, flags, dns.rcode.SERVFAIL)

    def _fill(self, response: dns.message.Message, qname: dns.name.Name, rdtype: int) -> None:
        any_type = rdtype == dns.rdatatype.ANY
        if qname == self.origin:
            if rdtype == dns.rdatatype.SOA or any_type:
                response.answer.append(self.soa)
            if rdtype == dns.rdatatype.NS or any_type:
                response.answer.append(self.ns)
            if not response.answer:
                response.authority.append(self.soa)
            return
        relative = qname.labels[: len(qname.labels) - len(self.origin.labels)]
        found = self.records.get(tuple(label.lower() for label in relative))
        if found is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self.soa)
            return
        for address, wanted in zip(found, (dns.rdatatype.A, dns.rdatatype.AAAA), strict=True):
            rdata = self._rdata(address, wanted) if rdtype in (wanted, dns.rdatatype.ANY) else None
            if rdata is not None:
                rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, wanted)
                rrset.add(rdata, TTL)
                response.answer.append(rrset)
        if not response.answer:
            response.authority.append(self.soa)


@functools.lru_cache(maxsize=64)
def _apex(origin: dns.name.Name) -> tuple[dns.rrset.RRset, dns.rrset.RRset]:
    """The zone's SOA (its minimum, the negative TTL, is `TTL`) and NS records."""
    soa = f"ns.{origin} hostmaster.{origin} 1 {TTL} {TTL} {TTL} {TTL}"
    return (
        dns.rrset.from_text(origin, TTL, dns.rdataclass.IN, dns.rdatatype.SOA, soa),
        dns.rrset.from_text(origin, TTL, dns.rdataclass.IN, dns.rdatatype.NS, f"ns.{origin}"),
    )


def answer(
    query: bytes, names: Mapping[str, tuple[str | None, str | None]], mesh: str, suffix: str, *, tcp: bool = False
) -> bytes | None:
    """The reply to `query` for the mesh `mesh` under `suffix` (None: not ours, forward it; `DROP`: send nothing).
    `names`: endpoint name -> (IPv4 mesh address, IPv6 mesh address). Builds a `Zone` per call: a server keeps one."""
    return Zone(names, mesh, suffix).answer(query, tcp=tcp)


def _valid(address: str | None, version: int) -> str | None:
    """`address` if it is an IP address of that version, else None (a record the hub sent wrong is left out)."""
    if address is None:
        return None
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    return str(parsed) if parsed.version == version else None


def _bare(ident: int, flags: int, rcode: int) -> bytes:
    """A header-only reply: the query's id, opcode and RD, with QR and `rcode` (RFC 1035 4.1.1)."""
    out = _QR | (flags & (0x7800 | _RD)) | (rcode & 0xF)
    return struct.pack("!HHHHHH", ident, out, 0, 0, 0, 0)


def _limit(message: dns.message.Message, tcp: bool) -> int:
    if tcp:
        return TCP_MAX
    if message.edns >= 0:
        return max(512, min(message.payload, UDP_PAYLOAD))
    return 512


def _wire(response: dns.message.Message, limit: int) -> bytes:
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


__all__ = ["DROP", "TTL", "UDP_PAYLOAD", "Zone", "ZoneError", "answer", "zone_name"]
