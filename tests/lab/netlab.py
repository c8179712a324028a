"""The seed's picture as Linux network namespaces: a hub in a data center, agents at home and at work behind NAT.

    198.18.0.0/24 "Internet" (bridge br0 in namespace `inet`, which itself is 198.18.0.1)
      |-- db          198.18.0.5                       (a hub cluster's PostgreSQL, `Lab.start_db()`)
      |-- datacenter  198.18.0.10                      (the hub; also called `dc1`)
      |-- dc2         198.18.0.11                      (a second data center: a hub cluster's second hub)
      |-- home-rtr    198.18.0.21 wan0 | lan0 10.77.1.1 -- home       10.77.1.10 (default via 10.77.1.1)
      '-- work-rtr    198.18.0.22 wan0 | lan0 10.77.2.1 -- workplace  10.77.2.10 (default via 10.77.2.1)

The routers forward IPv4, masquerade what leaves `wan0`, and drop new connections from the WAN (forwarded or to
the router itself): home and workplace reach the data centers, nobody reaches them, and they do not reach each
other. The data centers and `db` sit on the Internet without NAT and reach each other (`db` takes PostgreSQL
connections only from the two data centers: its pg_hba.conf).
198.18.0.0/15 is the RFC 2544 benchmarking range, 10.77.0.0/16 exists only inside the lab; nothing is routed
outside the lab's namespaces (the host's own namespace is never touched: veth pairs are created inside them).

That is the default, `Lab(sites={"home": "eim", "workplace": "eim"})`. Each site can be of another kind
(`KINDS`, tests/lab/sites.py has the rules) and a lab can have more sites (site number N: home 1, workplace 2, the
others 3, 4, ... in the order given), and `twins=("home",)` puts a second host on a site's LAN:

      |-- S-rtr   198.18.0.(20+N) wan0 | lan0 10.77.N.1  -- S 10.77.N.10 (and twin S2 10.77.N.11)
      |               eim: masquerade; symmetric: masquerade random,fully-random; new inbound dropped
      |-- S-rtr   198.18.0.(20+N) wan0 | lan0 198.19.N.1 -- S 198.19.N.10 (and twin S2 198.19.N.11)
      |               firewall: no NAT, outbound and replies only; every host on the Internet routes
      |               198.19.N.0/24 via 198.18.0.(20+N)
      '-- S       198.18.0.(40+N)                            public: no router

With a twin, the router's `lan0` is a bridge with ports `l-S` and `l-S2`. `Lab.reboot_router(router)` makes a
router forget its mappings (conntrack -F), `Lab.readdress(host, ip)` gives a host a new address on its LAN.

`Lab.delay_link(host, ms, loss)` splices a user-space wire (tests/lab/delaywire.py, two TAP devices) into a host's
uplink: the lab's stand-in for `tc qdisc ... netem` on kernels without sch_netem.

Every namespace is named `ztmlab-<6 hex>-<host>`. While a lab lives, `/run/ztmlab/<6 hex>.json` names the process that
owns it; `sweep_stale()` removes namespaces whose owner is gone (a crashed or killed test run), killing the processes
still inside them first, and leaves labs of other live test runs alone. `python tests/lab/netlab.py sweep` does the
same by hand.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pgserver
import support
from lab import sites as topo
from support import IP, Proc, wait_until

PREFIX = "ztmlab-"
OWNER_DIR = Path("/run/ztmlab")
_NAME_RX = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})-")

DEFAULT_PLAN = topo.plan()
"""The default lab: home and workplace, each behind an `eim` router."""
KINDS = topo.KINDS
HOSTS = tuple(DEFAULT_PLAN.hosts)
"""The default lab's hosts (`Lab.hosts` has a lab's own)."""
ROUTERS = tuple(DEFAULT_PLAN.routers)
ALIASES = {"dc1": "datacenter"}
"""Other names of hosts: `dc1` is `datacenter` (the first data center of a hub cluster)."""

ADDR = dict(DEFAULT_PLAN.addr)
"""The default lab's main address of each host: WAN side for routers (`Lab.addr` answers for any lab)."""
LAN_ADDR = dict(DEFAULT_PLAN.lan_addr)
"""The default lab's routers' LAN side."""
DELAYWIRE = Path(__file__).with_name("delaywire.py")
DB_CLIENTS = ("datacenter", "dc2")
"""The hosts whose PostgreSQL connections `db` takes (`Lab.start_db`)."""

ROUTER_NFT = topo.router_nft("eim")
"""The ruleset of an `eim` router (the default lab's two); `lab.sites.router_nft(kind)` for the others."""


PEER_ECHO = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
show_port = sys.argv[2:] == ["port"]
print("ready", flush=True)
while True:
    c, peer = s.accept()
    with c:
        c.sendall(f"{peer[0]}:{peer[1]}".encode() if show_port else peer[0].encode())
"""
"""`Lab.serve`'s server: accepts forever on 0.0.0.0:PORT, answers each connection with the peer address it sees
(`IP`, or `IP:PORT` when its second argument is `port`), then closes it first (no TIME_WAIT on the client's side)."""


class LabError(RuntimeError):
    pass


_End = tuple[str, str, str | None, str | None]
"""One end of a cable: (namespace, interface, address/prefix or None for a bridge port, that bridge)."""


_OPEN: list[Lab] = []
"""Labs started and not closed yet (closed by `close_all()` at the end of a test session)."""


def close_all() -> None:
    for lab in list(reversed(_OPEN)):
        lab.close()


def unavailable_reason() -> str | None:
    """Why a lab cannot be built here (for a skip), or None."""
    if os.geteuid() != 0:
        return "network-namespace lab needs root (ip netns, nft)"
    if not Path(IP).exists() and shutil.which("ip") is None:
        return "network-namespace lab needs `ip` (iproute2)"
    if _nft() is None:
        return "network-namespace lab needs `nft` (nftables)"
    return None


def _nft() -> str | None:
    return shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if Path(p).exists()), None)


def _conntrack() -> str | None:
    return shutil.which("conntrack") or next(
        (p for p in ("/usr/sbin/conntrack", "/sbin/conntrack") if Path(p).exists()), None
    )


def _cmd(argv: Sequence[str], *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run(list(argv), input=input, capture_output=True, text=True, errors="replace",
                        stdin=None if input is not None else subprocess.DEVNULL, timeout=30, check=False)  # fmt: skip
    if check and cp.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({cp.returncode}): {cp.stderr.strip() or cp.stdout.strip()}")
    return cp


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (`ip netns list`)."""
    out = _cmd([IP, "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ns_pids(ns: str) -> list[int]:
    cp = _cmd([IP, "netns", "pids", ns], check=False)
    return [int(p) for p in cp.stdout.split() if p.isdigit()]


def _kill_and_delete(namespaces: Sequence[str]) -> None:
    """SIGKILL what still runs inside `namespaces` (only our labs' namespaces are ever passed), then delete them."""
    for ns in namespaces:
        for pid in _ns_pids(ns):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
    for ns in namespaces:
        cp = _cmd([IP, "netns", "del", ns], check=False)
        if cp.returncode != 0 and ns in list_namespaces():
            raise LabError(f"could not delete namespace {ns}: {cp.stderr.strip()}")


def _start_time(pid: int) -> str | None:
    """Start time of a running process `pid` (None when it is gone or a zombie): with the pid, names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # fields 3.. of proc_pid_stat(5): state is [0], starttime [19]
    return None if fields[0] in ("Z", "X") else fields[19]


def _owner_alive(lab_id: str) -> bool:
    try:
        owner = json.loads((OWNER_DIR / f"{lab_id}.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(_start_time(int(owner["pid"])) == owner.get("start"))


def sweep_stale() -> list[str]:
    """Remove `ztmlab-` namespaces whose owning test process is gone; return the names removed."""
    stale = [ns for ns in list_namespaces() if ns.startswith(PREFIX)]
    stale = [ns for ns in stale if not ((m := _NAME_RX.match(ns)) and _owner_alive(m.group(1)))]
    _kill_and_delete(stale)
    with contextlib.suppress(OSError):
        live_ids = {m.group(1) for ns in list_namespaces() if (m := _NAME_RX.match(ns))}
        for path in OWNER_DIR.glob("*.json"):
            if path.stem not in live_ids and not _owner_alive(path.stem):
                path.unlink(missing_ok=True)
    return stale


class Lab:
    """Namespaces, veths, routes and NAT of the seed's picture. Use as a context manager; `close()` is idempotent.

    Hosts: `inet`, `datacenter` (alias `dc1`), `dc2`, `db`, and per site its host and router (by default `home-rtr`,
    `work-rtr`, `home`, `workplace`). `sites` maps site name -> kind (`KINDS`; see `lab.sites` for names and
    addresses); `twins` names sites that get a second host `<site>2` on the same LAN behind the same router.
    A lab that cannot be built as asked raises `LabError` here, before anything is made.
    """

    def __init__(
        self,
        *,
        log_dir: Path | None = None,
        sites: Mapping[str, str] | None = None,
        twins: Sequence[str] = (),
    ) -> None:
        try:
            self.plan = topo.plan(sites, twins)
        except topo.PlanError as exc:
            raise LabError(str(exc)) from None
        existing = set(list_namespaces())
        while True:
            self.id = secrets.token_hex(3)
            self.prefix = f"{PREFIX}{self.id}-"
            if not any(ns.startswith(self.prefix) for ns in existing):
                break
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self._wires: dict[str, Wire] = {}
        self._dbs: list[pgserver.PgServer] = []
        self._created: list[str] = []
        self._owner_file = OWNER_DIR / f"{self.id}.json"
        self._started = False
        self._closed = False

    # lifecycle

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Lab:
        if self._started:
            return self
        self._started = True
        _OPEN.append(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        OWNER_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._owner_file.write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid())}))
        plan = self.plan
        for host in plan.hosts:
            ns = self.ns(host)
            _cmd([IP, "netns", "add", ns])
            self._created.append(ns)
            _cmd([IP, "-n", ns, "link", "set", "lo", "up"])
            sysctls = ["net.ipv6.conf.default.disable_ipv6=1"]  # no IPv6 on the lab's cables; lo keeps ::1
            if host in plan.routers:
                # A router's LAN bridge (twins) only bridges: br_netfilter must not run its frames through the
                # router's own firewall (-e: the key exists only while the br_netfilter module is loaded).
                sysctls += ["net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=0"]
            _cmd([IP, "netns", "exec", ns, "sysctl", "-q", "-e", "-w", *sysctls])
        for host, (bridge, cidr) in plan.bridges.items():
            ns = self.ns(host)
            _cmd([IP, "-n", ns, "link", "add", bridge, "type", "bridge"])
            _cmd([IP, "-n", ns, "addr", "add", cidr, "dev", bridge])
            _cmd([IP, "-n", ns, "link", "set", bridge, "up"])
        for c in plan.cables:
            ns, far_ns = self.ns(c.host), self.ns(c.far)
            _cmd([IP, "-n", ns, "link", "add", c.ifname, "type", "veth", "peer", "name", c.far_if, "netns", far_ns])
            _cmd([IP, "-n", ns, "addr", "add", c.cidr, "dev", c.ifname])
            _cmd([IP, "-n", ns, "link", "set", c.ifname, "up"])
            self._plug(far_ns, c.far_if, c.far_cidr, c.far_bridge)
        for host, gateway in plan.default_route.items():
            _cmd([IP, "-n", self.ns(host), "route", "add", "default", "via", gateway])
        for host, subnet, via in plan.routes:
            _cmd([IP, "-n", self.ns(host), "route", "add", subnet, "via", via])
        nft = _nft()
        assert nft is not None
        for router in plan.routers:
            _cmd([IP, "netns", "exec", self.ns(router), nft, "-f", "-"], input=plan.router_nft[router])

    def close(self) -> None:
        """Stop every process in the lab, delete its namespaces (veths, routes and nft tables go with them)."""
        if self._closed:
            return
        self._closed = True
        mine = set(self._created)
        procs = [p for p in support.registered_procs() if p.netns in mine]
        support.stop_all([*procs, *(p for p in self.procs if p not in procs)])
        for db in reversed(self._dbs):
            with contextlib.suppress(Exception):  # killed with the namespace anyway; this also removes its files
                db.close()
        try:
            _kill_and_delete([ns for ns in self._created if ns in set(list_namespaces())])
        finally:
            self._owner_file.unlink(missing_ok=True)
            if self in _OPEN:
                _OPEN.remove(self)

    def leftovers(self) -> list[str]:
        """Namespaces of this lab that still exist (empty after `close()`)."""
        return [ns for ns in list_namespaces() if ns.startswith(self.prefix)]

    # naming

    def ns(self, host: str) -> str:
        """Full namespace name of `host` (or of the host an alias names)."""
        host = ALIASES.get(host, host)
        if host not in self.plan.hosts:
            raise KeyError(f"no host {host!r} in the lab; hosts: {', '.join(self.plan.hosts)}")
        return f"{self.prefix}{host}"

    @property
    def hosts(self) -> list[str]:
        return list(self.plan.hosts)

    @property
    def routers(self) -> list[str]:
        return list(self.plan.routers)

    @property
    def namespaces(self) -> list[str]:
        return [self.ns(h) for h in self.plan.hosts]

    def addr(self, host: str, side: str = "wan") -> str:
        """`host`'s IPv4 address (its current one, after `readdress`); routers: `side="wan"` (the default) or
        `side="lan"`."""
        host = ALIASES.get(host, host)
        if host not in self.plan.addr:
            raise KeyError(f"no host {host!r} in the lab; hosts: {', '.join(self.plan.hosts)}")
        if side == "lan":
            return self.plan.lan_addr[host]
        return self.plan.addr[host]

    def kind(self, site: str) -> str:
        """The kind of `site` (`KINDS`): how its router maps and filters, or `public`."""
        if site not in self.plan.kinds:
            raise KeyError(f"no site {site!r} in the lab; sites: {', '.join(self.plan.kinds)}")
        return self.plan.kinds[site]

    def router(self, site: str) -> str | None:
        """The router of `site` (None for a public one)."""
        router = topo.router_name(site)
        return router if router in self.plan.routers else None

    # processes and sockets

    def exec(self, host: str, argv: Sequence[str | os.PathLike[str]], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run `argv` to completion inside `host` (keywords of `support.run`: check, timeout, env, cwd, input)."""
        return support.run(argv, netns=self.ns(host), **kw)

    def popen(
        self,
        host: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> Proc:
        """Start a long-running `argv` inside `host`; it is stopped at the latest by `close()`."""
        proc = Proc(argv, env=env, cwd=cwd, netns=self.ns(host), name=name or f"{host}:{Path(str(argv[0])).name}",
                    log_dir=self.log_dir)  # fmt: skip
        self.procs.append(proc)
        return proc

    def connect(self, host: str, addr: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A TCP connection made from inside `host` to `addr:port` (from this test process)."""
        return support.tcp_connect(addr, port, netns=self.ns(host), timeout=timeout)

    def can_connect(self, host: str, addr: str, port: int, timeout: float = 2.0) -> bool:
        return support.tcp_accepts(addr, port, netns=self.ns(host), timeout=timeout)

    def serve(self, host: str, port: int, *, show_port: bool = False) -> Proc:
        """A TCP server on `0.0.0.0:port` inside `host`, reachable wherever the lab lets it be: it answers every
        connection with the peer address it sees (`IP`, or `IP:PORT` with `show_port`: a reflector, telling a
        client behind NAT its mapped address), then closes it. Returns once it listens."""
        argv = [sys.executable, "-c", PEER_ECHO, str(port), *(["port"] if show_port else [])]
        proc = self.popen(host, argv, name=f"peer-echo@{host}")
        proc.wait_for_output("ready", timeout=10)
        return proc

    def mapped(self, host: str, local_port: int, server: str, server_port: int) -> tuple[str, int]:
        """Connect from `host`'s port `local_port` (SO_REUSEADDR + SO_REUSEPORT, as a hole puncher binds it) to a
        `serve(..., show_port=True)` reflector at `server:server_port` (an address); the address and port it saw,
        i.e. how `host`'s router (if any) mapped this connection."""
        with support.netns_socket(self.ns(host)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("0.0.0.0", local_port))
            sock.settimeout(5.0)
            sock.connect((server, server_port))
            data = b""
            while chunk := sock.recv(100):
                data += chunk
        return support.split_hostport(data.decode())

    def assert_unreachable(self, src: str, host: str, port: int, timeout: float = 1.0) -> None:
        """Assert that `src` cannot open a TCP connection to `host`'s lab address at `port`.

        Such a check proves something only if a server there would take the connection but for the lab's routes
        and firewall: a server that listens on loopback only (or no server) makes it pass whatever the lab does. So
        the host on the other end of `host`'s own cable must connect first (a `LabError` if it cannot: listen on
        0.0.0.0 or on `host`'s address)."""
        host = ALIASES.get(host, host)
        target, near = self.addr(host), self.plan.neighbour.get(host, "inet")
        if not self.can_connect(near, target, port):
            raise LabError(
                f"nothing accepts connections on {host}'s address {target}:{port} (tried from {near}), so a check "
                f"that {src} cannot reach it could not fail; make the server listen on 0.0.0.0 or {target}"
            )
        assert not self.can_connect(src, target, port, timeout=timeout), f"{src} reaches {host} at {target}:{port}"

    def start_db(self, host: str = "db") -> pgserver.PgServer:
        """A real PostgreSQL (`pgserver.PgServer`) in `host`, listening on its lab address, port 5432, taking the
        `ztm` role (password) only from the data centers (`DB_CLIENTS`); `create_db()` and `url()` as usual. It
        runs until `close()`, which stops it before the namespaces go (`stop()`/`start()` work meanwhile)."""
        reason = pgserver.unavailable_reason()
        if reason:
            raise LabError(reason)
        clients = [f"{self.addr(h)}/32" for h in DB_CLIENTS]
        server = pgserver.PgServer(netns=self.ns(host), listen=self.addr(host), clients=clients)
        self._dbs.append(server)
        return server

    # faults

    def link_down(self, host: str) -> None:
        """Unplug `host`'s upstream cable: the far end goes down, so `host` sees no carrier and keeps its routes.
        A silent cut: whatever `host` and the others send across it is dropped, nobody gets a reset."""
        far, far_if = self._uplink(host)
        _cmd([IP, "-n", self.ns(far), "link", "set", far_if, "down"])

    def link_up(self, host: str) -> None:
        host = ALIASES.get(host, host)
        far, far_if = self._uplink(host)
        _cmd([IP, "-n", self.ns(far), "link", "set", far_if, "up"])
        if host in self.plan.default_route:  # in case something took the host's own interface down meanwhile
            _cmd([IP, "-n", self.ns(host), "link", "set", "eth0", "up"])
            self._default_route(host)

    def reboot_router(self, router: str) -> None:
        """`router` forgets every NAT mapping and connection it tracks, as a reboot would (`conntrack -F` in its
        namespace); its rules, addresses and routes stay. Packets of connections it knew now count as new: from the
        WAN they are dropped, from the LAN they get a new mapping (a new random port behind a symmetric NAT)."""
        router = ALIASES.get(router, router)
        if router not in self.plan.routers:
            raise KeyError(f"{router!r} is not a router of the lab; routers: {', '.join(self.plan.routers) or 'none'}")
        conntrack = _conntrack()
        if conntrack is None:
            raise LabError("reboot_router needs `conntrack` (Debian package conntrack; scripts/setup.sh installs it)")
        cp = _cmd([IP, "netns", "exec", self.ns(router), conntrack, "-F"], check=False)
        if cp.returncode != 0:
            raise LabError(f"conntrack -F in {router} failed ({cp.returncode}): {cp.stderr.strip()}")

    def conntrack_count(self, router: str) -> int:
        """How many connections `router` tracks now (`conntrack -C`)."""
        conntrack = _conntrack()
        if conntrack is None:
            raise LabError("conntrack_count needs `conntrack` (Debian package conntrack; scripts/setup.sh installs it)")
        return int(_cmd([IP, "netns", "exec", self.ns(router), conntrack, "-C"]).stdout.split()[0])

    def readdress(self, host: str, new_ip: str) -> None:
        """`host` gets a new address on its own network, as a new DHCP lease or a move would give it: the old one is
        removed, `new_ip` added with the same prefix, the default route restored. Connections the host had stay
        bound to the old address, so they stop carrying data (nothing resets them); `addr(host)` is `new_ip` after.
        A `LabError` (and nothing changed) when `new_ip` is not a free address of the host's subnet."""
        host = ALIASES.get(host, host)
        if host not in self.plan.site_of or host in self.plan.routers:
            hosts = [h for h in self.plan.site_of if h not in self.plan.routers]
            raise KeyError(f"{host!r} is not a site's host; those are: {', '.join(hosts)}")
        cable = self.plan.uplink(host)
        try:
            net = ipaddress.ip_interface(cable.cidr).network
            new = ipaddress.ip_address(new_ip)
        except ValueError:
            raise LabError(f"bad address {new_ip!r} for {host}: give an IPv4 address such as 10.77.1.20") from None
        if new not in net or new in (net.network_address, net.broadcast_address):
            raise LabError(f"{new_ip} is not a host address of {host}'s network {net}: pick one inside it")
        taken = {h: a for h, a in [*self.plan.addr.items(), *self.plan.lan_addr.items()] if a == str(new)}
        if taken:
            raise LabError(f"{new_ip} is already {', '.join(taken)}'s address: pick a free one in {net}")
        ns, cidr = self.ns(host), f"{new}/{net.prefixlen}"
        # Old one first: a second address of the same subnet would be a secondary, deleted with the primary.
        _cmd([IP, "-n", ns, "addr", "del", cable.cidr, "dev", cable.ifname])
        _cmd([IP, "-n", ns, "addr", "add", cidr, "dev", cable.ifname])
        cable.cidr = cidr
        self.plan.addr[host] = str(new)
        self._default_route(host)

    def delay_link(self, host: str, delay_ms: float, loss: float = 0.0, *, limit: int = 1000) -> Wire:
        """Run `host`'s uplink through a user-space wire (`delaywire.py`), netem's stand-in: every Ethernet frame
        crosses `delay_ms` later, in both directions (a round trip grows by 2 x `delay_ms`), and a fraction `loss`
        is dropped, each direction on its own; at most `limit` frames wait per direction.

        Two TAP devices take the place of the cable's veth ends, with their names and addresses (so the routers'
        nft rules, `link_down` and `link_up` still apply); the veth ends wait, down, as `<name>-v`. `Wire.undo()`
        (or leaving `with lab.delay_link(...)`) puts the veth ends back; `close()` only stops the wire.
        """
        host = ALIASES.get(host, host)
        if host in self._wires:
            raise LabError(f"{host}'s uplink already runs through a wire")
        near, far = self._ends(host)
        taps = (f"dw{self.id}a", f"dw{self.id}b")  # created in `host`; renamed once in place
        argv = [sys.executable, str(DELAYWIRE), "--delay-ms", str(delay_ms), "--loss", str(loss), "--limit", str(limit)]
        wire = Wire(self, host, self.popen(host, [*argv, *taps], name=f"{host}:delaywire"))
        self._wires[host] = wire
        try:
            wire.proc.wait_for_output(r"ready \S+ \S+", timeout=10)
            _cmd([IP, "-n", near[0], "link", "set", taps[1], "netns", far[0]])
            for (ns, ifname, cidr, bridge), tap in ((far, taps[1]), (near, taps[0])):
                _cmd([IP, "-n", ns, "link", "set", ifname, "down"])
                if cidr is not None:
                    _cmd([IP, "-n", ns, "addr", "del", cidr, "dev", ifname])
                _cmd([IP, "-n", ns, "link", "set", ifname, "name", f"{ifname}-v"])
                _cmd([IP, "-n", ns, "link", "set", tap, "name", ifname])
                self._plug(ns, ifname, cidr, bridge)
            self._default_route(host)
        except BaseException:
            wire.undo()
            raise
        return wire

    def _unsplice(self, wire: Wire) -> None:
        """`Wire.undo()`: stop the wire (its taps go with it), put the veth ends back as they were."""
        if self._closed or self._wires.get(wire.host) is not wire:
            return
        del self._wires[wire.host]
        code = wire.proc.stop()
        for ns, ifname, cidr, bridge in self._ends(wire.host):
            if f"{ifname}-v" not in self._links(ns):
                continue  # the splice failed before it got here
            wait_until(lambda: ifname not in self._links(ns), 10, f"tap {ifname} to go in {ns}")  # noqa: B023
            _cmd([IP, "-n", ns, "link", "set", f"{ifname}-v", "name", ifname])
            self._plug(ns, ifname, cidr, bridge)
        self._default_route(wire.host)
        stats = re.search(r"^stats (.*)$", wire.proc.output(), re.MULTILINE)
        if code != 0 or stats is None:
            raise LabError(f"the wire on {wire.host}'s uplink exited {code}; its output:\n{wire.proc.tail()}")
        wire.stats = json.loads(stats.group(1))

    def _ends(self, host: str) -> tuple[_End, _End]:
        """(namespace, interface, address/prefix or None for a bridge port, bridge) of both ends of `host`'s
        uplink."""
        c = self.plan.uplink(host)
        return (self.ns(c.host), c.ifname, c.cidr, None), (self.ns(c.far), c.far_if, c.far_cidr, c.far_bridge)

    def _plug(self, ns: str, ifname: str, cidr: str | None, bridge: str | None = None) -> None:
        """Give `ifname` its cable end's address (or make it a port of `bridge`), up."""
        if cidr is None:
            assert bridge is not None
            _cmd([IP, "-n", ns, "link", "set", ifname, "master", bridge])
        else:
            _cmd([IP, "-n", ns, "addr", "replace", cidr, "dev", ifname])
        _cmd([IP, "-n", ns, "link", "set", ifname, "up"])

    def _links(self, ns: str) -> set[str]:
        out = _cmd([IP, "-n", ns, "-o", "link", "show"]).stdout
        return {line.split(":")[1].strip().partition("@")[0] for line in out.splitlines() if ":" in line}

    def _default_route(self, host: str) -> None:
        if host in self.plan.default_route:
            _cmd([IP, "-n", self.ns(host), "route", "replace", "default", "via", self.plan.default_route[host]])

    def start_mesh(
        self,
        tmp_path: Path,
        mesh: str,
        joins: Mapping[str, str],
        *,
        hub_extra: Sequence[str] = (),
        agent_extra: Sequence[str] = (),
        ports: Mapping[str, int] | None = None,
    ) -> tuple[support.Hub, dict[str, support.Agent]]:
        """A hub in `datacenter` (listening on 0.0.0.0:8888, named by its lab address) and an agent on each host of
        `joins` (named after the host, API port `ports[host]` or 7777 in its namespace, with `agent_extra`
        arguments), joined to `mesh` as `joins[host]`. The hub and the agents are launched together (their
        start-ups overlap, as `support.start_hub_and_agents`), then the agents join side by side."""
        dc = self.addr("datacenter")
        procs: list[Proc] = []
        try:
            hub = support._launch_hub(tmp_path, netns=self.ns("datacenter"), listen="0.0.0.0:8888",
                                      names=f"{dc}:8888", extra=hub_extra)  # fmt: skip
            procs.append(hub.proc)
            agents: dict[str, support.Agent] = {}
            for host in joins:
                port = (ports or {}).get(host, 7777)
                agents[host] = support._launch_agent(tmp_path, host, netns=self.ns(host), port=port, extra=agent_extra)
                procs.append(agents[host].proc)
            support._wait_hub_ready(hub, 30.0)
            for agent in agents.values():
                support._wait_agent_ready(agent, 30.0)
        except BaseException:
            support.stop_all(procs)
            raise

        def join(host: str) -> None:
            agents[host].join(mesh, joins[host], hub.permit)

        with ThreadPoolExecutor(len(joins)) as pool:
            list(pool.map(join, joins))
        return hub, agents

    def hub_counter(self, host: str, admin_port: int, name: str) -> float:
        """Counter `ztm_hub_NAME_total` of the hub in `host` whose admin port is `127.0.0.1:admin_port` (0 if the
        hub never counted one)."""
        with self.connect(host, "127.0.0.1", admin_port) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        text = b"".join(chunks).decode()
        for line in text.split("\r\n\r\n", 1)[1].splitlines():
            if line.startswith(f"ztm_hub_{name}_total "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def rtt(self, host: str, addr: str, port: int = 9, samples: int = 5) -> float:
        """Seconds of the fastest of `samples` TCP handshakes from `host` to `addr:port`, a port nobody listens on:
        the SYN is answered by a RST, so each sample is one round trip and no server is needed."""
        best = math.inf
        for _ in range(samples):
            with support.netns_socket(self.ns(host)) as sock:
                sock.settimeout(5.0)
                start = time.monotonic()
                try:
                    sock.connect((addr, port))
                except ConnectionRefusedError:
                    best = min(best, time.monotonic() - start)
                    continue
                except OSError:  # lost, timed out
                    continue
            raise LabError(f"{addr}:{port} accepted a connection from {host}: pick a closed port")
        if best == math.inf:
            raise LabError(f"no answer from {addr}:{port} to {host} in {samples} tries")
        return best

    def _uplink(self, host: str) -> tuple[str, str]:
        """host -> the far end of its upstream cable (what `link_down` unplugs)."""
        c = self.plan.uplink(ALIASES.get(host, host))
        return c.far, c.far_if


class Wire:
    """`host`'s uplink running through `delaywire.py` (`Lab.delay_link`); a context manager that undoes it."""

    def __init__(self, lab: Lab, host: str, proc: Proc) -> None:
        self.lab = lab
        self.host = host
        self.proc = proc
        self.stats: dict[str, dict[str, int]] = {}
        """After `undo()`: frames passed, lost, overflow, failed; `a_to_b` is from `host`, `b_to_a` towards it."""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

    def undo(self) -> dict[str, dict[str, int]]:
        """Stop the wire and put the veth ends back (names, addresses, default route); idempotent. Its `stats`."""
        self.lab._unsplice(self)
        return self.stats


def main(argv: Sequence[str]) -> int:
    if list(argv) == ["sweep"]:
        removed = sweep_stale()
        print("removed: " + (" ".join(removed) if removed else "nothing"))
        return 0
    if list(argv) == ["list"]:
        print("\n".join(ns for ns in list_namespaces() if ns.startswith(PREFIX)))
        return 0
    print("usage: netlab.py sweep|list", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
