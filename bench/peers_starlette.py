"""The floor of Python HTTP overhead: one Starlette route, orjson, onnxruntime per request.

No validation, no metrics, no batching, no queue: V2 JSON in, V2 JSON out. Started with the
same uvicorn options as ``modelport serve`` (uvloop, httptools, no access log), in one
process or, given WORKERS, in that many (uvicorn's own ``--workers``: a shared socket).

    python bench/peers_starlette.py MODEL.onnx PORT [WORKERS]
"""

import os
import sys

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def create_app(path: str) -> Starlette:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    output_names = [output.name for output in session.get_outputs()]

    async def infer(request: Request) -> Response:
        document = orjson.loads(await request.body())
        feeds = {
            item["name"]: np.array(item["data"], dtype=_DTYPES[item["datatype"]]).reshape(
                item["shape"]
            )
            for item in document["inputs"]
        }
        results = session.run(None, feeds)
        outputs = [
            {
                "name": name,
                "datatype": _NAMES[array.dtype],
                "shape": array.shape,
                "data": array.ravel(),
            }
            for name, array in zip(output_names, results, strict=True)
        ]
        body = {"model_name": request.path_params["name"], "outputs": outputs}
        return Response(
            orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
        )

    async def ready(_: Request) -> Response:
        return Response(status_code=200)

    return Starlette(
        routes=[
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", ready),
        ]
    )


def app_from_environment() -> Starlette:
    """The app for uvicorn's worker processes, which import it by name."""
    return create_app(os.environ["PEERS_STARLETTE_MODEL"])


if __name__ == "__main__":
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    os.environ["PEERS_STARLETTE_MODEL"] = sys.argv[1]
    uvicorn.run(
        "peers_starlette:app_from_environment" if workers > 1 else create_app(sys.argv[1]),
        factory=workers > 1,
        workers=workers,
        host="127.0.0.1",
        port=int(sys.argv[2]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
