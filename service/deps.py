"""Request dependencies as `Annotated` aliases, so handlers read like plain functions."""

from __future__ import annotations

import hmac
from typing import Annotated

import redis
from fastapi import Depends, Request

from jobs.settings import Settings
from service.errors import Unauthorized
from service.metrics import ApiMetrics
from service.queueing import JobBroker, unavailable
from service.quota import Quota


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_broker(request: Request) -> JobBroker:
    return request.app.state.broker


def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
BrokerDep = Annotated[JobBroker, Depends(get_broker)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]


def require_api_key(request: Request, settings: SettingsDep) -> str | None:
    """With MASENET_API_KEYS set, require `Authorization: Bearer <key>` with one of the keys; returns the key."""
    if not settings.auth_enabled:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("this service needs an API key: send the header 'Authorization: Bearer <key>'")
    presented = token.strip().encode()
    if not any(hmac.compare_digest(presented, key.encode()) for key in settings.api_keys):
        raise Unauthorized("the bearer key is not valid: check the key you were given")
    return token.strip()


AuthDep = Annotated[str | None, Depends(require_api_key)]


async def counted_request(token: AuthDep, settings: SettingsDep, broker: BrokerDep) -> Quota:
    """The key's quota, with this request counted against its requests per minute (429 past it)."""
    quota = Quota(broker.async_redis, settings, token)
    try:
        await quota.count_request()
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    return quota


QuotaDep = Annotated[Quota, Depends(counted_request)]
