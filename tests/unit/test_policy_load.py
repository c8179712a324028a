"""`Policy.load`: every class of error in a policy text at its exact line and column (a `§` in a test text marks
where, and is removed before loading), the size limit, and what a valid policy keeps (admins, tests, version)."""

from __future__ import annotations

import pytest

from ztm.errors import BadInput
from ztm.policy import MAX_POLICY_BYTES, Policy, PolicyError
from ztm.policy.hujson import MAX_DEPTH

HEAD = '"groups": {"group:ops": ["ops1"]}, "tagOwners": {"tag:db": ["root", "group:ops"]}'


def marked(text: str) -> tuple[str, int, int]:
    index = text.index("§")
    before = text[:index]
    return text.replace("§", "", 1), before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def acl(dst: str = '"*:*"', src: str = '"*"', action: str = '"accept"') -> str:
    return "{" + HEAD + ',\n "acls": [{"action": ' + action + ', "src": [' + src + '], "dst": [' + dst + "]}]}"


def load_error(text: str) -> PolicyError:
    source, line, column = marked(text)
    with pytest.raises(PolicyError) as caught:
        Policy.load(source)
    error = caught.value
    assert (error.line, error.column) == (line, column), error.message
    assert error.message.startswith(f"policy line {line}, column {column}: ")
    assert "\n" not in error.message
    assert isinstance(error, BadInput) and error.status == 400
    return error


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # unknown keys, at each level
        ('{\n  §"acl": []\n}', "unknown key 'acl' in the top level (did you mean 'acls'? known: groups, tagOwners"),
        ('{"groups": {}, §"hosts": {}}', "unknown key 'hosts' in the top level"),
        (
            '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], §"proto": "tcp"}]}',
            "unknown key 'proto' in acls[0]",
        ),
        (
            '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}, {"action": "accept", §"users": ["*"]}]}',
            "unknown key 'users' in acls[1] (Tailscale's old 'users' is 'src' here; known: action, src, dst)",
        ),
        ('{"tests": [{"src": "a", "accept": [], §"allow": []}]}', "unknown key 'allow' in tests[0]"),
        # duplicate keys at each level
        ('{"acls": [], §"acls": []}', "duplicate key 'acls'"),
        ('{"groups": {"group:a": [], §"group:a": ["x"]}}', "duplicate key 'group:a'"),
        ('{"acls": [{"action": "accept", §"action": "accept"}]}', "duplicate key 'action'"),
        # missing keys
        ('{"acls": [§{"action": "accept", "src": ["*"]}]}', "acls[0] has no 'dst'"),
        ('{"acls": [§{"src": ["*"], "dst": ["*:*"]}]}', "acls[0] has no 'action'"),
        ('{"tests": [§{"accept": ["a:terminal"]}]}', "tests[0] has no 'src'"),
        ('{"tests": [§{"src": "a"}]}', 'tests[0] has neither "accept" nor "deny"'),
        # wrong types
        ("§[]", "the top level must be an object {...}, not an array"),
        ('§"acls"', "the top level must be an object"),
        ('{"groups": §["group:ops"]}', "groups must be an object"),
        ('{"groups": {"group:ops": §"ops1"}}', "group:ops must be an array of strings"),
        ('{"groups": {"group:ops": ["ops1", §2]}}', "group:ops holds strings"),
        ('{"tagOwners": §[]}', "tagOwners must be an object"),
        ('{"tagOwners": {"tag:db": §null}}', "tag:db must be an array of strings"),
        ('{"acls": §{}}', "acls must be an array of rules"),
        ('{"acls": [§"accept"]}', "acls[0] must be an object {...}, not a string"),
        ('{"acls": [{"action": "accept", "src": §"*", "dst": ["*:*"]}]}', "acls[0].src must be an array of strings"),
        ('{"acls": [{"action": "accept", "src": §[], "dst": ["*:*"]}]}', "acls[0].src is empty"),
        ('{"acls": [{"action": "accept", "src": ["*"], "dst": [§true]}]}', "acls[0].dst holds strings"),
        ('{"acls": [{"action": §1, "src": ["*"], "dst": ["*:*"]}]}', "action a number is not allowed"),
        ('{"tests": §{}}', "tests must be an array"),
        ('{"tests": [{"src": §["a"], "accept": []}]}', "tests[0].src must be a string"),
        ('{"tests": [{"src": "a", "deny": §"a:terminal"}]}', "tests[0].deny must be an array"),
        ('{"admins": §"alice"}', "admins must be an array of strings"),
        ('{"admins": ["alice", §"Bob"]}', "'Bob' in admins is not a user name"),
        # deny and other actions
        (
            acl(action='§"deny"'),
            "action 'deny' is not allowed: the only action is \"accept\" (what no rule accepts is denied",
        ),
        (acl(action='§"allow"'), "action 'allow' is not allowed"),
        # undefined groups and tags
        (acl(src='§"group:dev"'), "'group:dev' is not defined: add it to \"groups\""),
        (acl(src='"*", §"tag:web"'), "tag 'tag:web' is not defined: add it to \"tagOwners\""),
        (acl(dst='§"tag:web:terminal"'), "tag 'tag:web' is not defined"),
        ('{"tagOwners": {"tag:db": [§"group:dev"]}}', "'group:dev' is not defined"),
        ('{"tests": [{"src": §"tag:web", "accept": []}]}', "tag 'tag:web' is not defined"),
        ('{"tests": [{"src": "a", "accept": [§"tag:web:terminal"]}]}', "tag 'tag:web' is not defined"),
        # names
        ('{"groups": {"group:a": [], "group:b": [§"group:a"]}}', "groups cannot contain groups"),
        ('{"groups": {"group:a": [§"tag:db"]}}', "'tag:db' in group:a is not a user name"),
        ('{"groups": {§"ops": ["a"]}}', "group name 'ops' must be group:NAME"),
        ('{"groups": {§"group:": ["a"]}}', "group name 'group:' must be group:NAME"),
        ('{"tagOwners": {§"db": ["root"]}}', "tag 'db' must be tag:NAME"),
        ('{"tagOwners": {§"tag:a:b": ["root"]}}', "tag 'tag:a:b' must be tag:NAME"),
        ('{"tagOwners": {"tag:a": [§"tag:b"]}}', "'tag:b' in the owners of tag:a is not a user name"),
        (acl(src='§"10.0.0.0/8"'), "src '10.0.0.0/8' is not one of: *, group:NAME, tag:NAME"),
        (acl(src='§"autogroup:member"'), "src 'autogroup:member' is not one of"),
        (acl(src='§"Ann@"'), "src 'Ann@': USER@ENDPOINT needs a user name and an endpoint name"),
        # dst forms
        (acl(dst='§"build-01"'), "'build-01' has no ':': write TARGET:APP-PART"),
        (acl(dst='"*:*", §"*:ssh"'), "dst '*:ssh': unknown app part 'ssh': use *, tunnel/*"),
        (acl(dst='§"a b:terminal"'), "target 'a b' is not an endpoint name, tag:NAME or *"),
        (acl(dst='§":terminal"'), "target '' is not an endpoint name"),
        (acl(dst='§"*:tunnel/sctp/x"'), "a tunnel part is tunnel/*, tunnel/tcp/NAME or tunnel/udp/NAME"),
        (acl(dst='§"*:tunnel/tcp/"'), "tunnel name ''"),
        (acl(dst='§"*:tunnel/tcp/p*"'), "tunnel name 'p*'"),
        (acl(dst='§"*:terminal/x"'), "unknown app part 'terminal/x'"),
        (acl(dst='§"*:app/Chat"'), "app name 'Chat'"),
        (acl(dst='§"*:files/shared/*/x"'), "file prefix"),
        (acl(dst='§"*:files/shared/../x"'), "file prefix"),
        (acl(dst='§"*:files//x"'), "file prefix"),
        (acl(dst='§"*:files"'), "unknown app part 'files'"),
        # proxy: hosts, ports, ranges, CIDRs
        (acl(dst='§"*:proxy/db.lan"'), "a proxy target is proxy/HOST:PORT"),
        (acl(dst='§"*:proxy/db.lan:"'), "port '' is not a number from 1 to 65535"),
        (acl(dst='§"*:proxy/db.lan:0"'), "port '0' is not a number from 1 to 65535"),
        (acl(dst='§"*:proxy/db.lan:65536"'), "port '65536' is not a number"),
        (acl(dst='§"*:proxy/db.lan:http"'), "port 'http' is not a number"),
        (acl(dst='§"*:proxy/db.lan:080"'), "port '080' has a leading zero: write 80"),
        (acl(dst='§"*:proxy/db.lan:90-80"'), "port range '90-80' runs backwards: write 80-90"),
        (acl(dst='§"*:proxy/db.lan:80-"'), "port '' is not a number"),
        (acl(dst='§"*:proxy/db.lan:1-2-3"'), "port '2-3' is not a number"),
        (acl(dst='§"*:proxy/10.0.0.5/8:443"'), "'10.0.0.5/8' is not a CIDR such as 10.0.0.0/8"),
        (acl(dst='§"*:proxy/10.0.0.0/33:443"'), "'10.0.0.0/33' is not a CIDR"),
        (acl(dst='§"*:proxy/fd00::1/8:443"'), "'fd00::1/8' is not a CIDR"),
        (acl(dst='§"*:proxy/db_lan/x:443"'), "is not a CIDR"),
        (acl(dst='§"*:proxy/*.:443"'), "proxy host '*.' is not a host name"),
        (acl(dst='§"*:proxy/a*b.lan:443"'), "proxy host 'a*b.lan' is not a host name"),
        (acl(dst='§"*:proxy/10.5:443"'), "an IP is written in full"),
        # tests' entries name one concrete endpoint (or tag) and target
        ('{"tests": [{"src": §"Ops1", "accept": []}]}', "invalid caller 'Ops1': write USER or USER@ENDPOINT"),
        ('{"tests": [{"src": §"group:ops", "accept": []}]}', "invalid caller 'group:ops'"),
        ('{"tests": [{"src": "a", "accept": [§"*:terminal"]}]}', "a test names one endpoint or tag, not *"),
        ('{"tests": [{"src": "a", "deny": ["b:terminal", §"b:tunnel/tcp/*"]}]}', "invalid app target 'tunnel/tcp/*'"),
        ('{"tests": [{"src": "a", "accept": [§"b:proxy/10.0.0.0/8:22"]}]}', "invalid app target"),
        ('{"tests": [{"src": "a", "accept": [§"b"]}]}', "'b' has no ':'"),
    ],
)
def test_errors_at_their_position(text: str, message: str) -> None:
    error = load_error(text)
    assert message in error.message


def test_a_long_unknown_key_is_named_shortly() -> None:
    error = load_error('{§"' + "x" * 5000 + '": 1}')
    assert len(error.message) < 300


def test_size_limit() -> None:
    body = '{"acls": []}'
    Policy.load(body + " " * (MAX_POLICY_BYTES - len(body)))
    error = load_error("§" + body + " " * (MAX_POLICY_BYTES - len(body) + 1))
    assert "the policy is 1,048,577 bytes, over the limit of 1,048,576 (1 MiB)" in error.message
    error = load_error("§" + body + "é" * (MAX_POLICY_BYTES // 2))  # counted in UTF-8 bytes, not characters
    assert "over the limit" in error.message


def test_lone_surrogate_characters_are_refused() -> None:
    error = load_error('{\n "x": "a§\ud800"}')
    assert "not valid Unicode" in error.message


def test_nesting() -> None:
    error = load_error('{"acls": [' + "[" * (MAX_DEPTH - 2) + "§[")
    assert "nested more than" in error.message


def test_what_a_valid_policy_keeps() -> None:
    policy = Policy.load(
        """{
          "admins": ["alice", "bob"],
          "tests": [{"src": "a", "accept": []}, {"src": "b", "deny": []}],
        }""",
        version=7,
    )
    assert policy.admins == frozenset({"alice", "bob"})
    assert policy.version == 7 and policy.tests == 2
    assert policy.text.startswith("{\n")
    assert Policy.load("{}").admins == frozenset()
    assert Policy.load("{}").version == 0
    assert "version=7" in repr(policy)
