"""The cost of the policy language (issue 16): `Policy.load` of a 1,000-rule policy and `Policy.decide` on it, the
first (unmemoised) call and a memoised call. Pure Python in this process, no network.

The policy: 50 groups of 20 users, 20 tags, 1,000 rules, each with 3 src entries (a group, a user, a tag) and 4 dst
entries (a tunnel on a tag, a terminal on an endpoint, a proxy CIDR with a port range, a files prefix): about 150 kB.
Each run loads it anew and times, per figure:

* load: `Policy.load(text)` (ms);
* first call, per kind of request (us per call, averaged over 500 distinct requests that all miss the memo):
  denied (the caller matches no rule: every rule of that kind is looked at, the worst case), allowed by the last
  rule, allowed by the first rule; and `decide_kind` denied;
* memoised: the same request again (us per call over 200,000 calls).

Times are this process's CPU time (`time.process_time`), not wall-clock time, so that other work on a shared machine
does not count (the code is single-threaded and does no I/O). Prints the median of `--runs` runs (default 7) and the
spread (min..max).

Run:  .venv/bin/python -m bench.policy_decide [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_per_call, figures_table, machine_facts, tree_facts
from ztm.policy import AppTarget, Place, Policy, Subject

RULES = 1000
DISTINCT = 500
MEMO_CALLS = 200_000


def policy_text(rules: int = RULES) -> str:
    groups = {f"group:g{g}": [f"u{g}-{i}" for i in range(20)] for g in range(50)}
    owners = {f"tag:t{t}": ["root"] for t in range(20)}
    acls = []
    for r in range(rules):
        acls.append(
            {
                "action": "accept",
                "src": [f"group:g{r % 50}", f"user{r}", f"tag:t{r % 20}"],
                "dst": [
                    f"tag:t{(r + 1) % 20}:tunnel/tcp/svc{r}",
                    f"ep{r}:terminal",
                    f"*:proxy/10.{r % 250}.0.0/16:5000-5999",
                    f"ep{r}:files/shared/d{r}/",
                ],
            }
        )
    body = ",\n    ".join(json.dumps(rule) for rule in acls)
    return (
        "{\n  // bench/policy_decide.py\n"
        f'  "groups": {json.dumps(groups)},\n  "tagOwners": {json.dumps(owners)},\n'
        f'  "acls": [\n    {body},\n  ],\n}}\n'
    )


def per_call(fn: Callable[[int], object], count: int) -> float:
    """Microseconds per call of fn(i), i in range(count)."""
    return cpu_per_call(fn, count, 1e6)


def one_run(text: str) -> dict[str, float]:
    start = time.process_time()
    policy = Policy.load(text)
    figures = {"load (ms)": (time.process_time() - start) * 1e3}
    stranger = Subject("nobody", "laptop")
    last = Subject(f"user{RULES - 1}", "laptop")
    first = Subject("user0", "laptop")
    where = Place("db", frozenset({"tag:t1"}))

    def tunnel(i: int) -> AppTarget:
        return AppTarget("tunnel", f"tcp/svc{i}")

    figures["first call, denied (us)"] = per_call(lambda i: policy.decide(stranger, where, tunnel(i)), DISTINCT)
    last_where = Place(f"ep{RULES - 1}", frozenset({f"tag:t{RULES % 20}"}))
    last_what = AppTarget("tunnel", f"tcp/svc{RULES - 1}")
    figures["first call, allowed by rule 1000 (us)"] = per_call(
        lambda i: policy.decide(last, Place(f"x{i}", last_where.tags), last_what), DISTINCT
    )
    figures["first call, allowed by rule 1 (us)"] = per_call(
        lambda i: policy.decide(first, Place(f"y{i}", frozenset({"tag:t1"})), AppTarget("tunnel", "tcp/svc0")),
        DISTINCT,
    )
    figures["first call, proxy denied (us)"] = per_call(
        lambda i: policy.decide(stranger, where, AppTarget("proxy", f"10.0.{i % 250}.{i // 250}:22")), DISTINCT
    )
    figures["decide_kind denied (us)"] = per_call(
        lambda i: policy.decide_kind(Subject(f"n{i}"), where, "terminal"), DISTINCT
    )
    probe = tunnel(0)
    policy.decide(stranger, where, probe)
    figures["memoised call (us)"] = per_call(lambda i: policy.decide(stranger, where, probe), MEMO_CALLS)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    text = policy_text()
    print(machine_facts())
    print(tree_facts())
    print(f"policy: {RULES} rules, {len(text.encode()):,} bytes, {text.count(chr(10)):,} lines; runs: {args.runs}\n")
    runs = [one_run(text) for _ in range(max(1, args.runs))]
    print(figures_table(runs, 2))


if __name__ == "__main__":
    main()
