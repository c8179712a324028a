"""Every route of the agent's local REST API, fuzzed from its contract: path and query parameters and JSON bodies
are generated with hypothesis from `src/ztm/openapi.yaml` (schemas followed through `$ref`, values right-shaped,
wrong-typed, or raw garbage), sent with the right token to a real agent joined to a real hub. Every answer is JSON;
an error is a 4xx with `{"error": one line}` (a 503/504 only where a peer or the hub is involved), never a 500; and a
refused request changes nothing the agent holds (meshes, labels, tunnels).

The guard (no token, wrong token, cross-origin, DNS-rebinding Host) is tested route by route in
tests/integration/test_local_api.py (test_every_route_refuses_strangers), with hand-written bad bodies for the core
routes (test_bad_bodies_are_400_never_500, test_random_json_bodies_are_refused_with_4xx_json).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integration.test_local_api import METHODS, SPEC_FILE
from support import Agent, Hub, join_all, start_hub_and_agents

pytestmark = pytest.mark.slow

MESH = "m"
EXAMPLES_PER_ROUTE = 25
SPEC: dict[str, Any] = json.loads(SPEC_FILE.read_text())

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
JUNK_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


def _ref(node: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref`s (JSON pointers into the spec) until a real node."""
    seen = 0
    while "$ref" in node:
        target: Any = SPEC
        for part in str(node["$ref"]).removeprefix("#/").split("/"):
            target = target[part]
        node = target
        seen += 1
        assert seen < 20, "a $ref loop in the spec"
    return node


def from_schema(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values shaped by `schema` (a subset of JSON Schema: enough for this spec), often wrong on purpose."""
    schema = _ref(schema)
    if depth > 4:
        return JSON_SCALARS
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return st.one_of([from_schema(s, depth + 1) for s in schema[key]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | JSON_SCALARS
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, depth + 1) for k in kind])
    if kind == "object" or "properties" in schema:
        props = {k: from_schema(v, depth + 1) for k, v in schema.get("properties", {}).items()}
        required = [k for k in schema.get("required", []) if k in props]
        shaped = st.fixed_dictionaries(
            {k: props[k] for k in required}, optional={k: v for k, v in props.items() if k not in required}
        )
        return shaped | st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), depth + 1), max_size=4) | JSON_SCALARS
    if kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        near = st.integers(
            min_value=(lo - 3) if lo is not None else None, max_value=(hi + 3) if hi is not None else None
        )
        return near | JSON_SCALARS
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False) | JSON_SCALARS
    if kind == "boolean":
        return st.booleans() | JSON_SCALARS
    if kind == "string":
        return st.text(max_size=30) | JSON_SCALARS
    return JSON_VALUES


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    path_params: dict[str, dict[str, Any]]
    query_params: dict[str, dict[str, Any]]
    body: dict[str, Any] | None


def spec_routes() -> list[Route]:
    routes = []
    for template, ops in SPEC["paths"].items():
        shared = ops.get("parameters", [])
        for method, op in ops.items():
            if method not in METHODS:
                continue
            path_params: dict[str, dict[str, Any]] = {}
            query_params: dict[str, dict[str, Any]] = {}
            for p in [*shared, *op.get("parameters", [])]:
                p = _ref(p)
                (path_params if p.get("in") == "path" else query_params)[p["name"]] = p.get("schema", {})
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            routes.append(Route(method.upper(), template, path_params, query_params, body))
    return routes


# Real values for path parameters, so that the fuzz reaches past "no such mesh" into the routes' own parsing.
REAL = {
    "mesh": [MESH], "ep": ["alpha", "beta"], "user": ["root", "nobody"], "app": ["tunnel", "nope"], "name": ["seed"],
}  # fmt: skip
SEED_TUNNEL = "tcp/seed"
"""An exit the agent holds from the start, so that the tunnel part of the snapshot is never empty."""
COUNTERS = {"streams", "active", "refused", "direct", "direct_fallbacks", "bytes_sent", "bytes_received", "paths"}


def path_value(route: Route, name: str, schema: dict[str, Any]) -> st.SearchStrategy[str]:
    real = list(REAL.get(name, []))
    if route.method == "DELETE" and route.template == "/api/meshes/{mesh}":
        real = ["not-joined"]  # leaving the mesh is a valid request that would end the fuzz
    if name == "app" and route.template.endswith(("/stop", "/uninstall")):
        real = ["proxy", "nope"]  # a stopped tunnel app could not show its tunnels to `snapshot`
    schema = _ref(schema)
    real += [str(v) for v in schema.get("enum", [])]
    junk = JUNK_TEXT.map(lambda s: quote(s, safe=""))
    return (st.sampled_from(real) | junk) if real else junk


@dataclass
class World:
    hub: Hub
    agent: Agent


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("apifuzz")
    hub, agents = start_hub_and_agents(tmp, ("alpha", "beta"))
    agent, beta = agents["alpha"], agents["beta"]
    try:
        join_all(MESH, [(agent, "alpha"), (beta, "beta")], hub.permit)
        agent.cli("tunnel", "open", "outbound", SEED_TUNNEL, "--targets", "127.0.0.1:9")
        yield World(hub, agent)
    finally:
        beta.proc.stop()
        agent.proc.stop()
        hub.proc.stop()


def snapshot(agent: Agent) -> Any:
    """What the agent holds, minus clocks and counters: meshes, labels, tunnel configuration (every entrance and
    exit as the route describes it, without its traffic counters)."""
    _, meshes = agent.api("GET", "/api/meshes")
    _, eps = agent.api("GET", f"/api/meshes/{MESH}/endpoints")
    status, tunnels = agent.api("GET", f"/api/meshes/{MESH}/apps/tunnel")
    assert status == 200 and isinstance(tunnels, dict), f"the tunnel list answered {status}: {tunnels!r}"
    return (
        sorted(m["name"] for m in meshes),
        sorted((e["name"], tuple(e["labels"])) for e in eps),
        {
            side: sorted(json.dumps({k: v for k, v in t.items() if k not in COUNTERS}, sort_keys=True)
                         for t in tunnels[side])
            for side in ("inbound", "outbound")
        },
    )  # fmt: skip


def _raw(agent: Agent, method: str, path: str, body: bytes | None) -> tuple[int, bytes, str]:
    import http.client

    from support import split_hostport

    host, port = split_hostport(agent.api_address)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {agent.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type") or ""
    finally:
        conn.close()


@pytest.mark.timeout(600)
def test_every_route_answers_bad_input_with_a_json_4xx_and_changes_nothing(world: World) -> None:
    routes = spec_routes()
    agent = world.agent
    seen: dict[tuple[str, str], set[int]] = {(r.method, r.template): set() for r in routes}
    state = [snapshot(agent)]
    assert SEED_TUNNEL in state[0][2]["outbound"][0], f"the seeded exit is not in the snapshot: {state[0]!r}"

    @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def check(route: Route, data: st.DataObject) -> None:
        path = route.template
        for name, schema in route.path_params.items():
            path = path.replace("{" + name + "}", data.draw(path_value(route, name, schema), label=name))
        query = {}
        for name, schema in route.query_params.items():
            if data.draw(st.booleans()):
                value = data.draw(from_schema(schema) | JUNK_TEXT, label=name)
                query[name] = value if isinstance(value, str) else json.dumps(value)
        if query:
            path += "?" + urlencode(query)
        body: bytes | None = None
        if route.method in ("POST", "PUT", "PATCH"):
            kind = data.draw(st.sampled_from(["schema", "json", "garbage", "none"]), label="body kind")
            if kind == "schema" and route.body is not None:
                body = json.dumps(data.draw(from_schema(route.body), label="body")).encode()
            elif kind == "json":
                body = json.dumps(data.draw(JSON_VALUES, label="body")).encode()
            elif kind == "garbage":
                body = data.draw(st.binary(max_size=64) | st.sampled_from([b"{", b"\xff", b"[1,", b"1e99999"]))
        status, raw, ctype = _raw(agent, route.method, path, body)
        seen[(route.method, route.template)].add(status)
        what = f"{route.method} {path} {(body or b'')[:150]!r}"
        assert status != 500 and status < 600, f"{what}: HTTP {status} {raw[:300]!r}"
        if status >= 400:
            assert "json" in ctype, f"{what}: HTTP {status} answered {ctype}: {raw[:200]!r}"
            answer = json.loads(raw)
            assert isinstance(answer, dict) and isinstance(answer.get("error"), str), f"{what}: {answer!r}"
            assert "\n" not in answer["error"] and "Traceback" not in answer["error"], answer
            assert status < 500 or status in (502, 503, 504), f"{what}: HTTP {status} {answer!r}"
            assert snapshot(agent) == state[0], f"{what} was refused ({status}) but changed the agent's state"
        else:
            state[0] = snapshot(agent)  # valid (a label, a tunnel): the new state is the reference

    for route in routes:
        check(route)
    missed = [r for r, s in seen.items() if not s]
    assert not missed, f"routes never exercised: {missed}"
    statuses = {code for codes in seen.values() for code in codes}
    assert any(code < 300 for code in statuses) and {400, 404} <= statuses, f"a one-sided fuzz: {sorted(statuses)}"
    world.agent.proc.assert_alive()
    assert MESH in snapshot(agent)[0], "the fuzz left the mesh"
    log = (agent.data / "agent.log").read_text(errors="replace")
    assert "Traceback" not in log, "the agent logged a traceback"
