"""A Python client for a running server: ``Client`` (sync) and ``AsyncClient`` (asyncio), over
REST (pooled HTTP/1.1) or gRPC (grpcio) by URL scheme, translating with the same ``protocols/`` wire
layer as the server's edges."""

from modelport.client.aio import AsyncClient
from modelport.client.base import ModelInfo
from modelport.client.sync import Client

__all__ = ["AsyncClient", "Client", "ModelInfo"]
