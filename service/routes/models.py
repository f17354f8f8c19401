"""GET /models: the models the live workers serve (name, scale, classes, input size, device, checksum)."""

from __future__ import annotations

import redis
from fastapi import APIRouter

from jobs.contracts import WorkerStatus
from service.deps import AuthDep, BrokerDep, SettingsDep
from service.queueing import unavailable
from service.schemas import ERROR_RESPONSES, ModelsResponse, ServedModel

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelsResponse, responses=ERROR_RESPONSES, summary="Models served by workers")
async def models(settings: SettingsDep, broker: BrokerDep, _auth: AuthDep) -> ModelsResponse:
    try:
        states = await broker.workers()
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    served: dict[str, ServedModel] = {}
    for state in states:
        if state.status != WorkerStatus.READY or state.model is None:
            continue
        key = state.model.model_dump_json()
        if key not in served:
            served[key] = ServedModel(**state.model.model_dump(), workers=[])
        served[key].workers.append(state.name)
    return ModelsResponse(models=list(served.values()))
