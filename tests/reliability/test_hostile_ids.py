"""Hostile job ids and paths: each answers 404 and nothing outside the storage folder is opened or changed.

An audit hook records every file-system event (open, stat-like listing, remove, mkdir, rename) the
process makes while the requests run; none may name a path outside the storage folder.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.helpers import make_settings, new_prefix

FS_EVENTS = {"open", "os.listdir", "os.scandir", "os.remove", "os.rmdir", "os.mkdir", "os.rename", "shutil.rmtree"}
HOSTILE_IDS = [
    "..%2fsecret.txt",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e%2fetc",
    "%2e%2e",
    "..",
    "%2fetc%2fpasswd",
    "x" * 5000,
    "0" * 31 + "g",
    "A" * 32,
    str(uuid.uuid4()),
    "not-a-uuid",
    "%00",
    "abc%00def",
    "%c0%ae%c0%ae",
]
ENDPOINTS = [("GET", ""), ("GET", "/result"), ("GET", "/video"), ("DELETE", "")]


class FileSystemWatch:
    """Collects the paths of file-system audit events while active (all threads)."""

    def __init__(self) -> None:
        self.active = False
        self.paths: list[str] = []
        self._lock = threading.Lock()
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if not self.active or event not in FS_EVENTS or not args:
            return
        target = args[0]
        if isinstance(target, bytes | str | os.PathLike):
            with self._lock:
                self.paths.append(os.fsdecode(target))


@functools.cache
def file_system_watch() -> FileSystemWatch:
    """One watch per process (audit hooks cannot be removed), installed only when these tests run."""
    return FileSystemWatch()


@pytest.fixture(scope="module")
def storage_client(redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    root = tmp_path_factory.mktemp("ids")
    storage = root / "storage"
    storage.mkdir()
    (root / "secret.txt").write_text("must stay untouched")
    settings = make_settings(new_prefix(), storage=storage)
    with TestClient(create_app(settings)) as client:
        yield client, root, storage


async def raw_request(app: object, method: str, path: str) -> httpx.Response:
    """The app's answer to exactly `path`: HTTP clients resolve dot segments (/jobs/.. becomes /) before sending,
    a hostile client need not, so such paths are handed to the app as they are."""
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict] = []
    requested = False

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)  # type: ignore[operator]
    status = next(message["status"] for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return httpx.Response(status, content=body)


def request(client: TestClient, method: str, path: str) -> httpx.Response:
    if httpx.URL(f"http://testserver{path}").raw_path.decode() == path:  # what the client would send
        return client.request(method, path)
    return client.portal.call(raw_request, client.app, method, path)


def outside(paths: list[str], storage: Path) -> list[str]:
    storage_real = os.path.realpath(storage)
    suspicious = []
    for path in paths:
        resolved = os.path.realpath(path)
        touches_temp_root = resolved.startswith(os.path.realpath(storage.parent))
        if (touches_temp_root and not resolved.startswith(storage_real)) or "passwd" in path or "secret" in path:
            suspicious.append(path)
    return suspicious


def test_the_watch_sees_file_access(storage_client) -> None:
    _, root, storage = storage_client
    watch = file_system_watch()
    watch.paths.clear()
    watch.active = True
    try:
        (root / "secret.txt").read_text()
    finally:
        watch.active = False
    assert outside(watch.paths, storage) == [str(root / "secret.txt")]


@pytest.mark.parametrize(("method", "suffix"), ENDPOINTS)
def test_hostile_ids_are_404_and_touch_nothing(storage_client, method: str, suffix: str) -> None:
    client, root, storage = storage_client
    before = sorted(str(path) for path in root.rglob("*"))
    watch = file_system_watch()
    watch.paths.clear()
    watch.active = True
    try:
        answers = {job_id: request(client, method, f"/jobs/{job_id}{suffix}") for job_id in HOSTILE_IDS}
    finally:
        watch.active = False
    for job_id, response in answers.items():
        assert response.status_code == 404, f"{method} /jobs/{job_id[:40]}{suffix}: {response.status_code}"
        assert response.json()["detail"], job_id[:40]
        assert len(response.text) < 2000  # a long id is not echoed back in full
    assert outside(watch.paths, storage) == []
    assert sorted(str(path) for path in root.rglob("*")) == before
    assert (root / "secret.txt").read_text() == "must stay untouched"
