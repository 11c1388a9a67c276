"""The endpoint people write by hand: Starlette + uvicorn + onnxruntime, JSON in and out.

Run as people deploy it: uvicorn[standard], so uvicorn picks uvloop and httptools
(named here so the choice is visible), and ``workers`` processes.
"""

import uvicorn
from onnx_session import config, load_all
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

MODELS = load_all()


async def predict(request: Request) -> JSONResponse:
    model = MODELS.get(request.path_params["name"])
    if model is None:
        return JSONResponse({"error": "no such model"}, status_code=404)
    outputs = model.run_json(await request.json())
    return JSONResponse({name: value.tolist() for name, value in outputs.items()})


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(routes=[
    Route("/predict/{name}", predict, methods=["POST"]),
    Route("/health", health),
])

if __name__ == "__main__":
    settings = config()
    uvicorn.run(
        "starlette_app:app", host="127.0.0.1", port=int(settings["port"]),
        workers=int(settings.get("uvicorn_workers", 1)), loop="uvloop", http="httptools",
        log_level="warning", access_log=False,
    )
