"""Auth on (MASENET_API_KEYS set): every route but the open ones refuses requests without a valid key.

Routes are enumerated from the app itself, so a route added later is covered without touching this test.
Open by design: /healthz and /readyz (probes carry no key), /metrics (the scraper), and the OpenAPI
documents (/docs, /redoc, /openapi.json: they describe the API and expose no data), and the web console's
page and assets (/, /console/{name}: static files; the data routes they call carry the auth).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.helpers import make_settings, new_prefix

KEY = "reliability-test-key"
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
OPEN_PATHS |= {"/", "/console/{name}"}  # the web console: static files, no data
PATH_PARAMETER = re.compile(r"\{[^}]+\}")


def flat_routes(routes: list) -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, looking inside included routers."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from flat_routes(list(inner.routes))
        elif getattr(route, "path", None) is not None:
            yield route.path, set(getattr(route, "methods", None) or {"GET"}) - {"HEAD"}


def endpoints(app: FastAPI) -> list[tuple[str, str]]:
    found = sorted({(method, path) for path, methods in flat_routes(list(app.routes)) for method in methods})
    documented = {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item}
    assert documented <= set(found), f"routes missed by the walk: {documented - set(found)}"
    return found


@pytest.fixture(scope="module")
def app(redis_client: redis.Redis) -> FastAPI:
    return create_app(make_settings(new_prefix(), api_keys=(KEY,), timeout_s=2.0))


def concrete(path: str) -> str:
    return PATH_PARAMETER.sub(uuid.uuid4().hex, path)


def test_the_route_walk_finds_the_api(app: FastAPI) -> None:
    paths = {path for _, path in endpoints(app)}
    assert {"/detect", "/models", "/healthz", "/readyz", "/metrics"} <= paths


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic " + KEY, "Bearer ", KEY])
def test_every_protected_route_refuses_a_missing_or_wrong_key(app: FastAPI, header: str | None) -> None:
    headers = {} if header is None else {"authorization": header}
    protected = [(method, path) for method, path in endpoints(app) if path not in OPEN_PATHS]
    assert protected, "no protected route found"
    with TestClient(app) as client:
        for method, path in protected:
            response = client.request(method, concrete(path), headers=headers)
            assert response.status_code == 401, f"{method} {path} answered {response.status_code}"
            assert response.headers["www-authenticate"] == "Bearer"
            assert "key" in response.json()["detail"]


def test_open_routes_answer_without_a_key(app: FastAPI) -> None:
    open_endpoints = [(method, path) for method, path in endpoints(app) if path in OPEN_PATHS]
    assert {path for _, path in open_endpoints} >= {"/healthz", "/readyz", "/metrics", "/openapi.json"}
    with TestClient(app) as client:
        for method, path in open_endpoints:
            assert client.request(method, path).status_code != 401, f"{method} {path} asked for a key"


def test_a_valid_key_gets_past_auth_on_every_route(app: FastAPI) -> None:
    protected = [(method, path) for method, path in endpoints(app) if path not in OPEN_PATHS]
    with TestClient(app) as client:
        for method, path in protected:
            response = client.request(method, concrete(path), headers={"authorization": f"Bearer {KEY}"})
            assert response.status_code != 401, f"{method} {path} refused a valid key"
            assert response.status_code < 500, f"{method} {path} answered {response.status_code}: {response.text}"
