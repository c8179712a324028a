"""`ztm gui`: ask the agent for a one-time sign-in code and print the link that opens the GUI signed in.

`ztm start agent` prints the same link through `announce`, so the GUI is one click away right after the start.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ztm.addr import Address
from ztm.cli.client import AgentClient
from ztm.cli.context import Context, UnexpectedAnswer, expect_obj
from ztm.errors import ZtmError
from ztm.gui.links import CODES_PATH, signin_url

DESCRIPTION = (
    "Print a sign-in link for the agent's web GUI. The link works once, within 10 minutes, from a browser on a\n"
    "machine that reaches the agent's address; it opens a session (kept by the GUI in its origin's storage, never a\n"
    "cookie) that lasts until the agent restarts or the GUI's 'Sign out'. Anyone who can read the agent's API token\n"
    "can make such a link."
)


def configure_gui(p: argparse.ArgumentParser) -> None:
    del p


def mint_link(client: AgentClient) -> tuple[str, int]:
    """A fresh sign-in link for the agent `client` talks to, and how many seconds it stays valid."""
    answer = expect_obj(client.post(CODES_PATH, {}), f"POST {CODES_PATH}")
    code, ttl = answer.get("code"), answer.get("expires_in")
    if not isinstance(code, str) or not code.replace("-", "").replace("_", "").isalnum() or not isinstance(ttl, int):
        raise UnexpectedAnswer(f"unexpected answer to POST {CODES_PATH}: no sign-in code; see 'ztm version'")
    return signin_url(client.address, code), ttl


def cmd_gui(ctx: Context) -> int:
    link, ttl = mint_link(ctx.client())
    if ctx.json:
        ctx.print_json({"url": link, "expires_in": ttl})
        return 0
    ctx.print(f"Open this link in a browser within {ttl // 60} minutes (it works once):")
    ctx.print(f"  {link}")
    return 0


def announce(address: Address, timeout: float, say: Callable[[str], None]) -> None:
    """After `ztm start agent`: print a sign-in link, or how to get one if the agent cannot make it now."""
    try:
        link, ttl = mint_link(AgentClient(address, timeout))
    except ZtmError:
        say(f"GUI: http://{address}/ (run 'ztm gui' for a sign-in link)")
        return
    say(f"GUI: {link}  (sign-in link: works once, for {ttl // 60} minutes; 'ztm gui' makes another)")
