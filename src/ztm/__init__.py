"""ztm: a zero-trust mesh network.

Core ideas:

* A **hub** is a mesh's certificate authority, endpoint registry and relay. Agents dial out to it over one long-lived
  HTTP/2 connection on mutually authenticated TLS 1.3 (`ztm.h2` carries the bytes, `ztm.hub` owns the hub).
* An **agent** runs on every machine, keeps its state in SQLite, serves a token-protected local REST API
  (`ztm.agent.api`) and joins meshes with permits (`ztm.permit`, `ztm.pki`). A joined agent is an **endpoint**.
* Every identity decision is made from the verified peer certificate (`ztm.identity`), never from a header.
* The `ztm` command line (`ztm.cli`) is a thin client of the agent API and the process manager for hub and agent.
"""

from ztm.version import __version__

__all__ = ["__version__"]
