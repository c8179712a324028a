"""The mesh-wide access policy language (issue 16): HuJSON text with `groups`, `tagOwners`, `acls`, `tests` and
`admins`, default deny, decided from the verified caller at the endpoint that serves. Pure: no I/O, no asyncio.

Modules: `hujson` (the reader with positions), `errors` (`PolicyError`), `who` (`Subject`, `Place`, names),
`target` (`AppTarget` and the APP-PART patterns), `rules` (the compiled rules), `check` (validation and
compilation), `model` (`Policy` and its decisions). The language is described in docs/policy.md.
"""

from __future__ import annotations

from ztm.policy.errors import PolicyError
from ztm.policy.model import MAX_POLICY_BYTES, Decision, Policy, TestFailure
from ztm.policy.target import AppTarget, parse_app_target
from ztm.policy.who import Place, Subject, parse_subject, tags_of_labels

__all__ = [
    "MAX_POLICY_BYTES",
    "AppTarget",
    "Decision",
    "Place",
    "Policy",
    "PolicyError",
    "Subject",
    "TestFailure",
    "parse_app_target",
    "parse_subject",
    "tags_of_labels",
]
