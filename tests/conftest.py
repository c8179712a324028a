"""Fixtures shared by every test: process bookkeeping, hub/agent factories and the network-namespace lab.

* Every `support.Proc` a test starts (directly or through a function-scoped fixture) is stopped when the test ends;
  fixtures of a wider scope must stop their own (a `Proc` is a context manager). Whatever is left is stopped at the
  end of the session.
* When a test fails, the report gets a "ztm processes" section: the log of every process the test started (and of
  older ones still running) and the CLI calls it made.
* `pg_server` is one real PostgreSQL for the session (`pgserver.PgServer`, skipped without the Debian binaries);
  `pg_url` gives each test a fresh database on it, with the URL, the password and an environment for hub processes.
* `lab` builds `lab.netlab.Lab` (skipped without root, `ip` or `nft`) and always tears it down; the first use in a
  session sweeps namespaces left behind by crashed runs. `make_lab(sites=..., twins=...)` builds labs of other
  router kinds for one test; `module_lab` is one lab for a whole module (its sites from the module's `LAB_SITES`
  and `LAB_TWINS`).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

if str(Path(__file__).resolve().parent) not in sys.path:  # `import support` / `lab.netlab` from any test
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgserver
import support
from lab import netlab
from support import Agent, Hub

_PROC_MARK = pytest.StashKey[int]()
_CLI_MARK = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; registering here keeps --strict-markers happy if that list moves.
    config.addinivalue_line("markers", "lab: needs root and network namespaces (ip netns, nft)")
    config.addinivalue_line("markers", "slow: slower integration tests")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    try:
        netlab.close_all()  # labs a test built by hand and did not close
    finally:
        support.cleanup_session()


@pytest.fixture(autouse=True)
def _ztm_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Remember which processes and CLI calls belong to this test; stop the processes at its end."""
    mark = len(support.registered_procs())
    request.node.stash[_PROC_MARK] = mark
    request.node.stash[_CLI_MARK] = support.cli_log_mark()
    yield
    support.stop_all(support.registered_procs()[mark:])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and _PROC_MARK in item.stash:
        mark = item.stash[_PROC_MARK]
        everything = support.registered_procs()
        procs = [p for i, p in enumerate(everything) if i >= mark or p.returncode is None]
        text = support.failure_report(procs, item.stash[_CLI_MARK])
        if text:
            report.sections.append((f"ztm processes ({report.when})", text))
    return report


# ------------------------------------------------------------------------------------------------- hub and agents


@pytest.fixture
def make_hub(tmp_path: Path) -> Callable[..., Hub]:
    """`make_hub(**kw)` = `support.start_hub(tmp_path, **kw)`."""
    return functools.partial(support.start_hub, tmp_path)


@pytest.fixture
def make_agent(tmp_path: Path) -> Callable[..., Agent]:
    """`make_agent(name, **kw)` = `support.start_agent(tmp_path, name, **kw)`."""
    return functools.partial(support.start_agent, tmp_path)


@pytest.fixture
def make_mesh(tmp_path: Path) -> Callable[..., tuple[Hub, dict[str, Agent]]]:
    """`make_mesh(names, **kw)` = `support.start_hub_and_agents(tmp_path, names, **kw)`: a hub and agents started at
    once (nothing joined)."""
    return functools.partial(support.start_hub_and_agents, tmp_path)


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    """A hub on loopback with a free port, ready (port open, root permit written)."""
    return support.start_hub(tmp_path)


# ----------------------------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgserver.PgServer]:
    """One real PostgreSQL server for the whole run (stopped and removed at the end)."""
    reason = pgserver.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with pgserver.PgServer() as server:
        yield server
    # A test that stopped it (outage tests) must have started it again; the next test needs it.


@dataclass
class PgDb:
    """A fresh database for one test: `url` (no password in it), `password`, and `env` (os.environ plus
    PGPASSWORD) for the hub processes the test starts."""

    server: pgserver.PgServer
    name: str
    url: str
    password: str
    env: dict[str, str]


@pytest.fixture
def pg_url(pg_server: pgserver.PgServer) -> PgDb:
    if not pg_server.running:  # an earlier test stopped it and failed before starting it again
        pg_server.start()
    name = pg_server.create_db()
    env = dict(os.environ, PGPASSWORD=pg_server.password)
    return PgDb(pg_server, name, pg_server.url(name), pg_server.password, env)


@pytest.fixture
def make_cluster(tmp_path: Path, pg_url: PgDb) -> Callable[..., support.Cluster]:
    """`make_cluster(hubs=[("a", "zone-a"), ("b", "zone-b")], **kw)`: hubs of one mesh on a fresh PostgreSQL
    database (`support.start_cluster`)."""
    return functools.partial(support.start_cluster, tmp_path, pg_url.url, pg_url.env)


# ------------------------------------------------------------------------------------------------------------ lab


@pytest.fixture(scope="session")
def _lab_host() -> None:
    reason = netlab.unavailable_reason()
    if reason:
        pytest.skip(reason)
    netlab.sweep_stale()


def _started(the_lab: netlab.Lab) -> Iterator[netlab.Lab]:
    """Start `the_lab`, yield it, close it even if the test fails, and check no namespace was left behind."""
    try:
        the_lab.start()
        yield the_lab
    finally:
        the_lab.close()
    left = the_lab.leftovers()
    assert not left, f"lab teardown left namespaces behind: {left}"


@pytest.fixture
def lab(_lab_host: None, tmp_path: Path) -> Iterator[netlab.Lab]:
    """The seed's picture in network namespaces (see `lab.netlab`), removed after the test even if it fails."""
    yield from _started(netlab.Lab(log_dir=tmp_path / "lab-logs"))


@pytest.fixture
def make_lab(_lab_host: None, tmp_path: Path) -> Iterator[Callable[..., netlab.Lab]]:
    """`make_lab(sites={...}, twins=(...))`: a started `lab.netlab.Lab` of those sites, removed after the test even
    if it fails (for a test that needs router kinds of its own, or a lab it may break)."""
    labs: list[netlab.Lab] = []

    def make(*, sites: Mapping[str, str] | None = None, twins: Sequence[str] = ()) -> netlab.Lab:
        the_lab = netlab.Lab(log_dir=tmp_path / f"lab-logs-{len(labs)}", sites=sites, twins=twins)
        labs.append(the_lab)
        return the_lab.start()

    try:
        yield make
    finally:
        for the_lab in reversed(labs):
            the_lab.close()
    left = [ns for the_lab in labs for ns in the_lab.leftovers()]
    assert not left, f"lab teardown left namespaces behind: {left}"


@pytest.fixture(scope="module")
def module_lab(
    _lab_host: None, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[netlab.Lab]:
    """One lab shared by every test of a module (build it once: the module's tests must not leave changes behind
    that the next test would trip on). The module's `LAB_SITES` (site -> kind) and `LAB_TWINS`, when it defines
    them, choose the lab's sites (`netlab.Lab(sites=..., twins=...)`); otherwise it is the default lab."""
    sites = getattr(request.module, "LAB_SITES", None)
    twins = getattr(request.module, "LAB_TWINS", ())
    log_dir = tmp_path_factory.mktemp(f"lab-{request.module.__name__.rpartition('.')[2]}")
    yield from _started(netlab.Lab(log_dir=log_dir, sites=sites, twins=twins))
