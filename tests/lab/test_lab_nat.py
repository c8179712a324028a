"""TCP simultaneous open across every pair of router kinds, with plain sockets (no ztm): what the lab's NATs allow.

One lab with two sites of each kind (`eim`, `symmetric`, `firewall`, `public`) and a twin of home (two hosts behind
one eim router). For each pair, each side first learns its candidate the way an agent would from the hub: it
connects from its punch port P to a reflector in the data center, which answers with the address and port it sees.
Then both sides run tests/lab/punch.py at the same moment, each connecting from P to the other's candidate (and
listening on P too), retrying for 3 s, and exchange a line. The twins use their LAN addresses (no reflector).

The observed matrix (`EXPECTED`, written down in docs/nat-lab.md): direct for every pair where neither side is
behind a symmetric NAT, and for symmetric with public (the symmetric side's SYN reaches the public side's listener);
no direct path between a symmetric NAT and an eim NAT, a firewall or another symmetric NAT.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.netlab import KINDS, Lab
from support import Proc

pytestmark = pytest.mark.lab

LAB_SITES = {
    "home": "eim",
    "workplace": "eim",
    "sym1": "symmetric",
    "sym2": "symmetric",
    "fw1": "firewall",
    "fw2": "firewall",
    "pub1": "public",
    "pub2": "public",
}
LAB_TWINS = ("home",)
BY_KIND = {kind: tuple(s for s, k in LAB_SITES.items() if k == kind) for kind in KINDS}
PUNCH = Path(__file__).with_name("punch.py")
REFLECTOR_PORT = 3478

EXPECTED: dict[tuple[str, str], bool] = {
    ("eim", "eim"): True,
    ("eim", "symmetric"): False,
    ("eim", "firewall"): True,
    ("eim", "public"): True,
    ("symmetric", "symmetric"): False,
    ("symmetric", "firewall"): False,
    ("symmetric", "public"): True,
    ("firewall", "firewall"): True,
    ("firewall", "public"): True,
    ("public", "public"): True,
    ("twins", "twins"): True,
}
"""(kind, kind) -> whether the two reach each other directly by TCP simultaneous open (with a listener on P)."""


@dataclass
class Side:
    host: str
    port: int
    candidate: str
    """Where the other side connects: the address and port the reflector saw (the LAN address for twins)."""


@dataclass
class Outcome:
    pair: tuple[str, str]
    sides: tuple[Side, Side]
    lines: tuple[str, str]

    @property
    def direct(self) -> bool:
        return all(line.startswith("ok ") for line in self.lines)

    def via(self) -> str:
        return "/".join(m.group(1) if (m := re.search(r"via=(\w+)", ln)) else "-" for ln in self.lines)


def reflect(lab: Lab, host: str, port: int) -> str:
    """Connect from `host`'s port `port` to the data center's reflector; the `IP:PORT` it saw."""
    ip, mapped_port = lab.mapped(host, port, lab.addr("datacenter"), REFLECTOR_PORT)
    return f"{ip}:{mapped_port}"


def pairs() -> Iterator[tuple[tuple[str, str], str, str]]:
    """((kind, kind), host, host) for every unordered pair of kinds, on different sites, and the twins."""
    for a, b in itertools.combinations_with_replacement(BY_KIND, 2):
        yield (a, b), BY_KIND[a][0], BY_KIND[b][1]
    yield ("twins", "twins"), "home", "home2"


def punch_all(lab: Lab, workdir: Path, *, listen: bool, base_port: int) -> list[Outcome]:
    """Run every pair at once (each side on its own port), return what each side printed. The sides start when
    all are ready: when the file `workdir/go` appears."""
    setups: list[tuple[tuple[str, str], Side, Side]] = []
    for i, (pair, a, b) in enumerate(pairs()):
        pa, pb = base_port + 10 * i, base_port + 10 * i + 1
        if pair[0] == "twins":
            sa, sb = Side(a, pa, f"{lab.addr(a)}:{pa}"), Side(b, pb, f"{lab.addr(b)}:{pb}")
        else:
            sa, sb = Side(a, pa, reflect(lab, a, pa)), Side(b, pb, reflect(lab, b, pb))
        setups.append((pair, sa, sb))
    go = workdir / "go"
    go.unlink(missing_ok=True)
    running: list[tuple[tuple[str, str], Side, Side, Proc, Proc]] = []
    for pair, sa, sb in setups:
        procs = []
        for me, peer in ((sa, sb), (sb, sa)):
            argv = [sys.executable, str(PUNCH), "--port", str(me.port), "--peer", peer.candidate, "--name", me.host,
                    "--go", str(go), *(["--listen"] if listen else [])]  # fmt: skip
            procs.append(lab.popen(me.host, argv, name=f"punch-{me.host}-{me.port}"))
        running.append((pair, sa, sb, procs[0], procs[1]))
    for _, _, _, pa, pb in running:
        for proc in (pa, pb):
            proc.wait_for_output(r"ready port=", timeout=30)
    go.touch()  # every side starts now
    outcomes = []
    for pair, sa, sb, pa, pb in running:
        for proc in (pa, pb):
            proc.wait(timeout=30)
        lines = tuple(_result(p) for p in (pa, pb))
        outcomes.append(Outcome(pair, (sa, sb), (lines[0], lines[1])))
    return outcomes


def _result(proc: Proc) -> str:
    m = re.search(r"^(ok .*|fail .*)$", proc.output(), re.MULTILINE)
    if m is None:
        raise AssertionError(f"{proc.name} printed no result; its output:\n{proc.tail()}")
    return m.group(1)


def matrix(outcomes: list[Outcome]) -> str:
    rows = []
    for o in outcomes:
        (sa, sb), (la, lb) = o.sides, o.lines
        result = f"direct ({o.via()})" if o.direct else "none"
        rows.append(f"{o.pair[0]:>9} {sa.host:<9} <-> {o.pair[1]:<9} {sb.host:<9} {result}")
        rows.append(f"    {sa.host} -> {sb.candidate}: {la}")
        rows.append(f"    {sb.host} -> {sa.candidate}: {lb}")
    return "\n".join(rows)


@pytest.fixture(scope="module")
def reflector(module_lab: Lab) -> Iterator[Lab]:
    with module_lab.serve("datacenter", REFLECTOR_PORT, show_port=True):
        yield module_lab


def test_candidates_are_what_each_kind_promises(reflector: Lab) -> None:
    """The reflector's answer is the candidate each side gives its peer: the router's address and the local port
    (eim), the router's address and some port (symmetric), the host's own routed address and port (firewall,
    public)."""
    lab = reflector
    assert reflect(lab, "home", 31000) == f"{lab.addr('home-rtr')}:31000"
    assert reflect(lab, "sym1", 31000).startswith(f"{lab.addr('sym1-rtr')}:")
    assert reflect(lab, "fw1", 31000) == f"{lab.addr('fw1')}:31000"
    assert reflect(lab, "pub1", 31000) == f"{lab.addr('pub1')}:31000"


def test_simultaneous_open_matrix(reflector: Lab, tmp_path: Path) -> None:
    lab = reflector
    outcomes = punch_all(lab, tmp_path, listen=True, base_port=20000)
    observed = {o.pair: o.direct for o in outcomes}
    table = matrix(outcomes)
    print(table)
    assert observed == EXPECTED, f"observed matrix differs from EXPECTED:\n{table}"
    for o in outcomes:
        if o.direct:  # each side got the other's line, over one connection
            for side, line in zip(reversed(o.sides), o.lines, strict=True):
                assert f"line=hello from {side.host} " in line, line
