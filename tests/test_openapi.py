"""The OpenAPI document, and the API fuzzed from it (schemathesis, positive and negative
requests) under uvicorn on a loopback port: no input gets a 5xx, and no admin route
answers 2xx without a valid token."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import PG_URL
from hypothesis import HealthCheck, settings
from schemathesis import Case
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from starlette.routing import Route
from support.images import scene_jpeg
from support.servers import ThreadedServer

from coverservice import db, openapi
from coverservice.app import create_app
from coverservice.settings import Settings

TOKEN = "fuzz-admin-0123456789abcdef"
VALID = {"Authorization": f"Bearer {TOKEN}"}
# The admin page is static HTML with no data in it: it asks for the token and sends it
# with every API call. Everything else under /admin needs the token.
PUBLIC_ADMIN_PAGE = "/admin"


SCREENSHOT = scene_jpeg(320, 180)


def no_downloads(url: str) -> bytes:
    # Fuzzed callbacks and pins name arbitrary URLs: nothing is fetched in this test, every
    # URL "downloads" the same screenshot (so pins and thumbnails go all the way).
    return SCREENSHOT


def make_app(tmp: Path, database_url: str | None = None) -> Any:
    settings = Settings(
        database_url=database_url or f"sqlite:///{tmp / 'fuzz.sqlite3'}",
        storage_url=(tmp / "covers").as_uri(),
        admin_tokens=(f"fuzzer:{TOKEN}",),
        cover_cache_ttl=0.0,
        fetch_max_bytes=200_000,
    )
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    return create_app(settings, engine=engine, fetch=no_downloads)


def routes_of(app: Any) -> dict[str, set[str]]:
    served: dict[str, set[str]] = {}
    for route in app.routes:
        assert isinstance(route, Route)
        # Starlette answers HEAD wherever it answers GET; the document lists HEAD only
        # where it means something (the cover's headers without its bytes).
        served[route.path] = set(route.methods or ()) - {"HEAD"}
    return served


def test_the_document_lists_exactly_the_routes_the_app_serves(tmp_path: Path) -> None:
    documented = {
        path: {method.upper() for method in operations} - {"HEAD"}
        for path, operations in openapi.document()["paths"].items()
    }
    app = make_app(tmp_path)
    assert documented == routes_of(app)
    app.state.engine.dispose()


def test_the_document_is_served_and_admin_operations_declare_the_token(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    with ThreadedServer(app) as server:
        served = httpx.get(f"{server.base_url}/openapi.json")
    app.state.engine.dispose()
    assert served.status_code == 200 and served.json() == openapi.document()
    doc = served.json()
    assert doc["openapi"].startswith("3.1")
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            secured = operation.get("security") == [{"admin": []}]
            assert secured == (path.startswith("/admin") and path != PUBLIC_ADMIN_PAGE), (method, path)


# --- fuzzing -----------------------------------------------------------------------------------

schema = schemathesis.openapi.from_dict(openapi.document())


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a database of its own, shared by every operation's examples."""
    tmp = tmp_path_factory.mktemp("fuzz")
    if request.param == "sqlite":
        app = make_app(tmp)
        with ThreadedServer(app) as server:
            yield server.base_url
        app.state.engine.dispose()
        return
    template = request.getfixturevalue("pg_template")
    name = f"coverservice_fuzz_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        app = make_app(tmp, url)
        with ThreadedServer(app) as server:
            yield server.base_url
        app.state.engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same requests every run: a CI failure reproduces locally
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_no_request_gets_a_5xx_and_admin_needs_a_valid_token(case: Case[Any], api: str) -> None:
    admin = case.path.startswith("/admin") and case.path != PUBLIC_ADMIN_PAGE
    # As generated (no token), with tokens that are not valid, then with the valid one.
    attempts: list[dict[str, str] | None] = [None]
    if admin:
        attempts += [
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": "Bearer "},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
            VALID,
        ]
    for headers in attempts:
        response = case.call(base_url=api, headers=headers, timeout=10)
        where = f"{case.method} {case.formatted_path} headers={headers}: {response.status_code} {response.content[:200]!r}"
        assert response.status_code < 500, where
        if admin and headers is not VALID:
            assert not 200 <= response.status_code < 300, where
