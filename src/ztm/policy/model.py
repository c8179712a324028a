"""`Policy`: a loaded, checked mesh policy and its decisions.

`Policy.load(text)` parses the HuJSON text (`ztm.policy.hujson`), checks and compiles it (`ztm.policy.check`) or
raises `PolicyError` with the line and column of the first problem. `decide(who, where, what)` finds the first rule,
in file order, with a `src` entry matching the caller and a `dst` entry matching the place and the app target: that
rule allows it, and its line is reported; no such rule means denied (default deny). The rules that can decide are
found through a `RuleIndex` (lookups by caller and by place, not a scan of every rule), and decisions are memoised
per policy in a bounded dict, so a repeated decision costs one lookup whatever the number of rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ztm.policy.check import Spec, load_spec
from ztm.policy.errors import PolicyError
from ztm.policy.hujson import parse
from ztm.policy.index import RuleIndex
from ztm.policy.rules import Check, Dst, Rule, Src
from ztm.policy.target import AppTarget
from ztm.policy.who import Place, Subject, parse_subject

MAX_POLICY_BYTES = 1 << 20
"""A policy text longer than this (in UTF-8) is refused."""
MEMO_SIZE = 16384
"""Decisions remembered per policy (the oldest is forgotten first)."""
ROOT = "root"


@dataclass(frozen=True)
class Decision:
    """The answer for one request: `allowed`, and the rule that allowed it (`line` 0 and `rule` "" when no rule
    did: denied by default). `version` is the deciding policy's version."""

    allowed: bool
    line: int
    rule: str
    version: int = 0

    def why(self) -> str:
        if self.allowed:
            return f"allowed by the policy rule at line {self.line} ({self.rule})"
        return f"denied: no rule of policy version {self.version} allows it"


@dataclass(frozen=True)
class TestFailure:
    """A test of the policy that does not hold: the line of the test entry and a one-line message."""

    __test__ = False  # not a pytest test class

    line: int
    message: str


class Policy:
    """A checked policy text. Build with `Policy.load`; immutable but for its decision memo."""

    def __init__(self, text: str, version: int, spec: Spec) -> None:
        self.text = text
        self.version = version
        self.admins: frozenset[str] = spec.admins
        self._spec = spec
        self._rules: tuple[Rule, ...] = spec.rules
        self._index = RuleIndex(spec.rules)
        self._memo: dict[tuple[Subject, Place, AppTarget | str], Decision] = {}
        self._denied = Decision(False, 0, "", version)
        self._allowing: dict[tuple[int, int, int], Decision] = {}  # per (rule, src, dst): at most every entry pair

    @classmethod
    def load(cls, text: str, version: int = 0) -> Policy:
        """The policy of `text`; PolicyError (line, column, what is wrong) on any syntax or semantic error."""
        if not isinstance(text, str):
            raise PolicyError(1, 1, f"the policy must be text, not {type(text).__name__}")
        if len(text) > MAX_POLICY_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
            size = len(text.encode("utf-8", "surrogatepass"))
            raise PolicyError(
                1,
                1,
                f"the policy is {size:,} bytes, over the limit of {MAX_POLICY_BYTES:,} (1 MiB): shorten it with "
                "groups and tags instead of listing users and endpoints rule by rule",
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            line = text.count("\n", 0, exc.start) + 1
            column = exc.start - (text.rfind("\n", 0, exc.start) + 1) + 1
            raise PolicyError(line, column, "the text is not valid Unicode (a lone surrogate character)") from None
        return cls(text, version, load_spec(parse(text)))

    def __repr__(self) -> str:
        return f"Policy(version={self.version}, rules={len(self._rules)}, tests={self._spec.tests})"

    @property
    def tests(self) -> int:
        """The number of tests in the policy's `tests`."""
        return self._spec.tests

    def decide(self, who: Subject, where: Place, what: AppTarget) -> Decision:
        """Allowed by the first rule (file order) whose src matches `who` and a dst matches `where` and `what`;
        denied (line 0) if none does."""
        found = self._memo.get((who, where, what))
        return found if found is not None else self._remember((who, where, what), self._decide(who, where, what))

    def _remember(self, key: tuple[Subject, Place, AppTarget | str], decision: Decision) -> Decision:
        memo = self._memo
        if len(memo) >= MEMO_SIZE:
            try:
                del memo[next(iter(memo))]
            except (StopIteration, KeyError, RuntimeError):  # another thread emptied or changed it: start afresh
                memo.clear()
        memo[key] = decision
        return decision

    def _decide(self, who: Subject, where: Place, what: AppTarget) -> Decision:
        for number in self._index.candidates(who, where, {what.kind}):
            rule = self._rules[number]
            src = next((s for s in rule.srcs if s.matches(who)), None)
            if src is None:
                continue
            dst = next((d for d in rule.dsts if d.matches(where, what)), None)
            if dst is not None:
                return self._allowed(rule, src, dst)
        return self._denied

    def _allowed(self, rule: Rule, src: Src, dst: Dst) -> Decision:
        key = (rule.index, id(src), id(dst))
        found = self._allowing.get(key)
        if found is None:
            found = self._allowing[key] = Decision(True, rule.line, rule.describe([src], [dst]), self.version)
        return found

    def decide_kind(self, who: Subject, where: Place, kind: str) -> Decision:
        """Allowed if some rule would allow `who` something of `kind` at `where` (the hub's coarse first line).
        Kind "files" counts files-write rules too (one files stream carries both). Memoised with `decide` (a kind
        is a plain string, never an `AppTarget`, so the two never share a key)."""
        found = self._memo.get((who, where, kind))
        return found if found is not None else self._remember((who, where, kind), self._decide_kind(who, where, kind))

    def _decide_kind(self, who: Subject, where: Place, kind: str) -> Decision:
        kinds = {kind, "files-write"} if kind == "files" else {kind}
        for number in self._index.candidates(who, where, kinds):
            rule = self._rules[number]
            src = next((s for s in rule.srcs if s.matches(who)), None)
            if src is None:
                continue
            dst = next((d for d in rule.dsts if d.reaches(where) and d.part.kinds & kinds), None)
            if dst is not None:
                return self._allowed(rule, src, dst)
        return self._denied

    def may_tag(self, user: str, tag: str) -> bool:
        """May `user` give an endpoint `tag`? Root always; else users in tagOwners[tag], directly or by group."""
        if user == ROOT:
            return True
        owners = self._spec.tag_owners.get(tag, frozenset())
        if user.startswith("group:"):  # a group is not a user
            return False
        if user in owners:
            return True
        groups = self._spec.groups
        return any(user in groups.get(owner, ()) for owner in owners if owner.startswith("group:"))

    def rules_for(self, where: Place) -> list[tuple[int, str]]:
        """(line, rule text) of the rules with a dst that can match `where` ("who may reach me"); the text names
        only those dst entries."""
        found: list[tuple[int, str]] = []
        for rule in self._rules:
            dsts = [d for d in rule.dsts if d.reaches(where)]
            if dsts:
                found.append((rule.line, rule.describe(rule.srcs, dsts)))
        return found

    def run_tests(self, tags_of: Callable[[str], frozenset[str]]) -> list[TestFailure]:
        """The policy's tests that do not hold; `tags_of(endpoint name)` gives the tags of an endpoint a test names
        (as the caller's `USER@EP` or as the place)."""
        return [failure for check in self._spec.checks if (failure := self._run(check, tags_of)) is not None]

    def _run(self, check: Check, tags_of: Callable[[str], frozenset[str]]) -> TestFailure | None:
        if check.src.startswith("tag:"):
            who = Subject("", "", frozenset({check.src}))
        else:
            who = parse_subject(check.src)
            if who.ep:
                who = Subject(who.user, who.ep, frozenset(tags_of(who.ep)))
        if check.place.startswith("tag:"):
            where = Place("", frozenset({check.place}))
        else:
            where = Place(check.place, frozenset(tags_of(check.place)))
        decision = self.decide(who, where, check.target)
        if decision.allowed == check.accept:
            return None
        head = f"test at line {check.line}: {check.src} -> {check.text}"
        if check.accept:
            return TestFailure(check.line, f"{head} should be accepted, no rule allows it")
        return TestFailure(
            check.line, f"{head} should be denied, but the rule at line {decision.line} allows it ({decision.rule})"
        )
