"""The tools tests use the same Redis database and tiny checkpoint as the service tests."""

from __future__ import annotations

from tests.service.conftest import redis_client, tiny_checkpoint  # noqa: F401 - fixtures shared by import
