"""``inferis gateway``: the Open Inference Protocol V2 REST API (as Triton, MLServer
and KServe speak it) over the same Redis, through one asyncio SDK client.

Routes: ``/v2/health/live``, ``/v2/health/ready``, ``/v2`` (server metadata),
``/v2/models/{name}[/versions/{version}]`` (model metadata), ``.../ready`` and
``.../infer``. ``{version}`` is a number, an alias or a digest. An infer
request's ``id`` becomes the inferis request id (feedback joins on it) and is
echoed; without one the generated id is returned.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inferis.client import AsyncClient
from inferis.client.protocol import keys
from inferis.client.protocol.errors import InferisError, ModelNotFoundError
from inferis.client.protocol.models import ModelInfo
from inferis.lua import library_version

from . import oip

SERVER_NAME = "inferis"
# An inferis error code -> the HTTP status an OIP client expects.
STATUS = {"EARGS": 400, "EINPUT": 400, "ETENSOR": 400, "EMODEL": 404, "EBUSY": 503,
          "EDEADLINE": 504, "ECONN": 503, "EUNKNOWN": 503, "ENOPERM": 403, "EOOM": 507}


def _error(exc: InferisError) -> JSONResponse:
    return JSONResponse({"error": f"{exc.code} {exc.message}"},
                        status_code=STATUS.get(exc.code, 500))


# Unknown paths and methods, and anything unforeseen, answer in the protocol's
# error form too (an OIP client reads "error"), never with a traceback.
async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _internal_error(_: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)


def create_app(redis_url: str, timeout_ms: int = 30_000) -> Starlette:
    state: dict[str, AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with AsyncClient(redis_url, timeout_ms=timeout_ms) as client:
            state["client"] = client
            yield

    def client() -> AsyncClient:
        return state["client"]

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> Response:
        """Ready when Redis answers with the library this gateway speaks."""
        try:
            loaded = await client().library_version()
        except InferisError as exc:
            return JSONResponse({"ready": False, "error": f"{exc.code} {exc.message}"}, 503)
        if loaded != library_version():
            return JSONResponse({"ready": False, "error": f"library version {loaded}"}, 503)
        return JSONResponse({"ready": True})

    async def server_metadata(_: Request) -> Response:
        from importlib.metadata import PackageNotFoundError, version

        try:
            mine = version("inferis")
        except PackageNotFoundError:
            mine = "0"
        return JSONResponse({"name": SERVER_NAME, "version": mine,
                             "extensions": ["binary_tensor_data", "model_repository"]})

    async def _info(request: Request) -> ModelInfo:
        name = request.path_params["name"]
        if not keys.is_model_name(name):
            raise ModelNotFoundError(f"{name!r} is not a model name")
        return await client().modelget(name, request.path_params.get("version") or None)

    async def model_metadata(request: Request) -> Response:
        try:
            info = await _info(request)
            versions = await client().modelversions(info.name)
        except InferisError as exc:
            return _error(exc)
        return JSONResponse({
            "name": info.name, "versions": [str(v) for v in versions],
            "platform": f"{info.backend}_{info.format}" if info.format else info.backend,
            "inputs": [_spec(s) for s in info.inputs],
            "outputs": [_spec(s) for s in info.outputs],
            "parameters": {"version": info.version, "digest": info.digest},
        })

    async def model_ready(request: Request) -> Response:
        try:
            await _info(request)
        except InferisError as exc:
            return _error(exc)
        return JSONResponse({"name": request.path_params["name"], "ready": True})

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        try:
            parsed = oip.parse_request(await request.body(),
                                       request.headers.get(oip.HEADER_LENGTH))
            unit = parsed.parameters.get("unit")
            result = await client().run(
                name, parsed.inputs, version=version or None, request_id=parsed.id,
                unit=unit if isinstance(unit, str) and unit else None,
            )
            result.raise_for_error()
            body, headers = oip.encode_response(
                name, result.version, result.rid, result.outputs, parsed,
                {"digest": result.digest})
        except InferisError as exc:
            return _error(exc)
        return Response(body, headers=headers)

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", live), Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route(model, model_metadata), Route(versioned, model_metadata),
        Route(model + "/ready", model_ready), Route(versioned + "/ready", model_ready),
        Route(model + "/infer", infer, methods=["POST"]),
        Route(versioned + "/infer", infer, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: _http_error, Exception: _internal_error})


def _spec(spec: Any) -> dict[str, Any]:
    return {"name": spec.name, "datatype": oip.WIRE_TO_OIP.get(spec.dtype, spec.dtype.upper()),
            "shape": [-1 if d is None else d for d in (spec.shape or ())]}


def serve(redis_url: str, host: str, port: int, workers: int = 1) -> None:
    """Run the gateway on uvicorn (uvloop and httptools when installed)."""
    import uvicorn

    if workers > 1:  # uvicorn starts each worker from an import string
        import os

        os.environ["INFERIS_GATEWAY_REDIS"] = redis_url
        uvicorn.run("inferis.engine.gateway.app:from_environment", factory=True, host=host,
                    port=port, workers=workers, log_level="warning")
    else:
        uvicorn.run(create_app(redis_url), host=host, port=port, log_level="warning")


def from_environment() -> Starlette:
    import os

    return create_app(os.environ["INFERIS_GATEWAY_REDIS"])

