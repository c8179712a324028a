"""`src/ztm/openapi.yaml` (JSON text, which is valid YAML 1.2) documents exactly the routes and shapes of
docs/agent-api.md, with bearer auth required everywhere; and the CLI only calls documented routes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC_FILE = REPO / "src" / "ztm" / "openapi.yaml"
DOC_FILE = REPO / "docs" / "agent-api.md"
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def doc_routes() -> set[tuple[str, str]]:
    routes = set()
    for line in DOC_FILE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\|\s*(GET|POST|PUT|PATCH|DELETE)\s*\|\s*(/api/\S*)\s*\|", line)
        if match:
            routes.add((match.group(1).lower(), match.group(2)))
    assert len(routes) >= 19, "the route table of docs/agent-api.md was not found"
    return routes


def doc_shapes() -> dict[str, set[str]]:
    text = DOC_FILE.read_text(encoding="utf-8")
    shapes: dict[str, set[str]] = {}
    for name, fields in re.findall(r"^- `(\w+)`: `(.*?)`", text, flags=re.MULTILINE | re.DOTALL):
        shapes[name] = {re.split(r"[:\s]", f.strip())[0] for f in fields.replace("\n", " ").split(",") if f.strip()}
    assert {"Mesh", "Hub", "Endpoint", "PeerStats", "User", "App"} <= set(shapes)
    return shapes


def test_is_openapi_3_1_with_global_bearer_auth(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    schemes = spec["components"]["securitySchemes"]
    assert spec["security"] == [{name: []} for name in schemes]
    assert all(s == {**s, "type": "http", "scheme": "bearer"} for s in schemes.values())
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                assert "security" not in item[method], f"{method} {path} overrides the global auth"
                assert "401" in item[method]["responses"], f"{method} {path} does not document 401"


def test_documents_exactly_the_routes_of_the_contract(spec: dict[str, Any]) -> None:
    documented = {(m, p) for p, item in spec["paths"].items() for m in METHODS if m in item}
    assert documented == doc_routes()


def test_path_parameters_are_declared(spec: dict[str, Any]) -> None:
    params = spec["components"]["parameters"]
    for path, item in spec["paths"].items():
        wanted = set(re.findall(r"{(\w+)}", path))
        for method in METHODS:
            if method not in item:
                continue
            declared = set()
            for p in item[method].get("parameters", []):
                p = params[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p
                if p["in"] == "path":
                    declared.add(p["name"])
            assert declared == wanted, f"{method} {path}"
            ok = [s for s in item[method]["responses"] if s.startswith("2") or s == "101"]  # 101: WebSocket
            assert ok, f"{method} {path} has no success answer"


def test_shapes_match_the_contract(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for name, fields in doc_shapes().items():
        assert set(schemas[name]["properties"]) == fields, name


def test_every_ref_resolves(spec: dict[str, Any]) -> None:
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert refs
    for ref in refs:
        target: Any = spec
        assert ref.startswith("#/")
        for part in ref[2:].split("/"):
            assert part in target, f"unresolved {ref}"
            target = target[part]


def test_cli_calls_only_documented_routes() -> None:
    """Every API path literal in the CLI's source matches a documented route."""
    routes = {p for _, p in doc_routes()}
    patterns = [re.compile("^" + re.sub(r"{\w+}", "[^/]+", p) + "$") for p in routes]
    source = "\n".join(f.read_text() for f in (REPO / "src" / "ztm" / "cli").glob("*.py"))
    used = set(re.findall(r'"(/api/[^"?{]*)"', source))
    used |= {"/api/meshes/m/" + "/".join(parts) for parts in _mesh_path_calls(source)}
    for path in used:
        path = path.rstrip("/")
        assert any(p.match(path) for p in patterns), f"the CLI calls {path}, which docs/agent-api.md does not list"


def _mesh_path_calls(source: str) -> list[list[str]]:
    calls = []
    for args in re.findall(r"mesh_path\(([^)]*)\)", source):
        parts = [a.strip() for a in args.split(",") if a.strip()]
        if parts and all(p.startswith('"') or p.isidentifier() for p in parts):
            calls.append([p.strip('"') if p.startswith('"') else "x" for p in parts])
    return calls
