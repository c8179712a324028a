"""Network mode's pure parts (issue 17): IP packets and the virtio-net header (`packet`), the table of which peer
an address or routed prefix goes to and what a peer may send from (`table`), and the check of every packet a peer
sends before it reaches the TUN (`filter`), the mesh's DNS answers (`dns`). No I/O, no asyncio: the `net` app
(`ztm.apps.net`) does the I/O.
"""

from __future__ import annotations

from ztm.net.filter import Allow, InboundFilter, detail_of
from ztm.net.packet import NO_VNET, VNET_HDR_LEN, BadPacket, PacketInfo, VnetHdr, pack_vnet, parse, parse_vnet
from ztm.net.table import PeerAddrs, RouteTable

__all__ = [
    "NO_VNET",
    "VNET_HDR_LEN",
    "Allow",
    "BadPacket",
    "InboundFilter",
    "PacketInfo",
    "PeerAddrs",
    "RouteTable",
    "VnetHdr",
    "detail_of",
    "pack_vnet",
    "parse",
    "parse_vnet",
]
