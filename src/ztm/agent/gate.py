"""`PolicyGate`: the mesh's access policy (`ztm.policy`) applied where this endpoint serves, one gate per mesh.

Every app asks the gate at its exit with the caller of the stream (`check`): the subject is the caller's user (from
its verified certificate), its endpoint name and the tags of its labels (as the hub's endpoint list, which this
session keeps, knows them: never the name a `stream` event claims); the place is this endpoint (its name and its own
labels' tags). With no policy set (`policy` None) the gate allows everything and the apps' own lists decide, as before
the policy existed; once one is set, what no rule allows is refused (`Forbidden("policy: ...")`), with one log line
naming the rule or "no rule allows it". Per-app lists still apply on top: both must allow.

What a check allowed and that stays open (a tunnel or proxy connection, a terminal session, an installed app's
stream) is tracked (`track`) with a function that closes it; a new policy (`set_policy`) re-checks each one at once,
in the same event-loop turn, and closes those it no longer allows, logged and counted. Network mode's packets ask
`allow_ip` (a reason instead of an exception, a denial logged once per caller and detail per policy version: packets
are many, and the inbound filter memoises the answers until the policy or the peers change). Counters (`counters`, keys
`allowed:APP`, `denied:APP`, `closed:APP` with APP the target's kind) are exported by `ztm.agent.metrics` as
`ztm_agent_policy_{allowed,denied,closed}_total{mesh,app}`.

The gate does no I/O: the session feeds it the policy, the peers' labels and its own (`ztm.agent.mesh`).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ztm.agent.apps import Caller
from ztm.errors import Forbidden
from ztm.policy import AppTarget, Decision, Place, Policy, Subject

log = logging.getLogger("ztm.agent")

NO_POLICY = Decision(True, 0, "")
"""What `check` returns while no policy is set: allowed (the apps' own lists decide)."""
IP_LOGGED_SIZE = 4096
"""(caller, detail) pairs whose denial `allow_ip` logged under the current policy version (then emptied)."""


@dataclass(eq=False)
class Tracked:
    """A live connection or session a check allowed: re-checked on every new policy, `close(reason)` if denied."""

    caller: Caller
    what: AppTarget
    close: Callable[[str], None]
    closed: bool = field(default=False)


class PolicyGate:
    def __init__(
        self,
        mesh: str,
        *,
        place: Callable[[], Place],
        peer: Callable[[str], tuple[str, frozenset[str]] | None],
    ) -> None:
        """`place()`: this endpoint now; `peer(ep_id)`: that endpoint's (name, tags) as the session knows them, or
        None when it does not know it."""
        self.mesh = mesh
        self._place = place
        self._peer = peer
        self.policy: Policy | None = None
        """The mesh's policy as the hub last sent it (None: none is set)."""
        self.counters: collections.Counter[str] = collections.Counter()
        self._tracked: set[Tracked] = set()
        self._ip_logged: set[tuple[str, str, str]] = set()
        self._ip_logged_version = 0

    @property
    def version(self) -> int:
        return self.policy.version if self.policy is not None else 0

    @property
    def tracked(self) -> int:
        """How many live connections and sessions the gate watches."""
        return len(self._tracked)

    def subject(self, caller: Caller) -> Subject:
        """The caller as the policy sees it: its certificate's user, and its endpoint's name and tags from the hub's
        endpoint list (the name the stream's opening claimed only while the list does not know the endpoint)."""
        known = self._peer(caller.ep_id)
        if known is None:
            return Subject(caller.user, caller.name if caller.name != caller.ep_id else "", frozenset())
        name, tags = known
        return Subject(caller.user, name, tags)

    def decide(self, caller: Caller, what: AppTarget) -> Decision:
        """The decision for `caller` asking `what` here, with no side effect (NO_POLICY when none is set)."""
        policy = self.policy
        if policy is None:
            return NO_POLICY
        return policy.decide(self.subject(caller), self._place(), what)

    def check(self, caller: Caller, what: AppTarget) -> Decision:
        """`decide`, counted; a denial is logged (naming the rule, or that none allows it) and raised as
        `Forbidden("policy: " + why)`."""
        if self.policy is None:
            return NO_POLICY
        decision = self.decide(caller, what)
        if decision.allowed:
            self.counters[f"allowed:{what.kind}"] += 1
            return decision
        self.counters[f"denied:{what.kind}"] += 1
        why = decision.why()
        log.warning(
            "mesh %s: policy: refused %s to user %s from endpoint %s (%s): %s",
            self.mesh, what, caller.user, caller.name, caller.ep_id, why,
        )  # fmt: skip
        raise Forbidden(f"policy: {why}")

    def allow_ip(self, caller: Caller, detail: str) -> str | None:
        """None if the policy allows `caller` the network-mode packet or port `detail` here ("tcp:22", "icmp",
        "10.20.1.5/udp:53": `ztm.net.filter.detail_of`), else the policy's why. Counted as `allowed:ip` and
        `denied:ip`; a denial is logged at most once per (caller, detail) per policy version. No policy: allowed
        (network mode is opt-in by the receiving endpoint)."""
        policy = self.policy
        if policy is None:
            return None
        decision = policy.decide(self.subject(caller), self._place(), AppTarget("ip", detail))
        if decision.allowed:
            self.counters["allowed:ip"] += 1
            return None
        self.counters["denied:ip"] += 1
        why = decision.why()
        if self._ip_logged_version != policy.version or len(self._ip_logged) >= IP_LOGGED_SIZE:
            self._ip_logged = set()
            self._ip_logged_version = policy.version
        key = (caller.ep_id, caller.user, detail)
        if key not in self._ip_logged:
            self._ip_logged.add(key)
            log.warning(
                "mesh %s: policy: dropping ip/%s from user %s at endpoint %s (%s): %s (logged once per policy "
                "version)", self.mesh, detail, caller.user, caller.name, caller.ep_id, why,
            )  # fmt: skip
        return why

    def track(self, caller: Caller, what: AppTarget, close: Callable[[str], None]) -> Callable[[], None]:
        """Watch a live connection or session that `check` allowed; returns the function that stops watching it
        (call it when it ends; calling it twice is harmless)."""
        entry = Tracked(caller, what, close)
        self._tracked.add(entry)
        if self.policy is not None:  # a policy that came between the check and now (the target was connecting)
            self._recheck(entry)
        return lambda: self._tracked.discard(entry)

    def set_policy(self, policy: Policy | None) -> int:
        """Enforce `policy` from now on (None: no policy) and close, at once, every tracked connection or session it
        does not allow; returns how many were closed."""
        self.policy = policy
        return self.recheck()

    def recheck(self) -> int:
        """Check every tracked connection and session again (a new policy, or tags that changed); close the denied
        ones. Returns how many were closed."""
        if self.policy is None:
            return 0
        return sum(self._recheck(entry) for entry in list(self._tracked))

    def _recheck(self, entry: Tracked) -> bool:
        """Close `entry` if the policy does not allow it now; True if it was closed."""
        decision = self.decide(entry.caller, entry.what)
        if decision.allowed or entry.closed:
            return False
        entry.closed = True
        self._tracked.discard(entry)
        self.counters[f"closed:{entry.what.kind}"] += 1
        why = decision.why()
        caller = entry.caller
        log.warning(
            "mesh %s: policy: closed %s of user %s from endpoint %s (%s): %s",
            self.mesh, entry.what, caller.user, caller.name, caller.ep_id, why,
        )  # fmt: skip
        try:
            entry.close(f"policy: {why}")
        except Exception as exc:  # one app's failure to close must not keep the others open
            log.error("mesh %s: policy: closing %s failed: %s: %s", self.mesh, entry.what, type(exc).__name__, exc)
        return True

    def rules_for_me(self) -> list[tuple[int, str]]:
        """(line, rule) of the policy's rules that can match this endpoint ("who may reach me"); [] with none."""
        if self.policy is None:
            return []
        return self.policy.rules_for(self._place())
