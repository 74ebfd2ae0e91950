"""TensorFlow Serving's REST API (placeholder until the front-end lands)."""

from __future__ import annotations

from starlette.routing import Route

from modelport.serving.manager import ModelManager


def routes(manager: ModelManager, max_body: int) -> list[Route]:
    del manager, max_body
    return []
