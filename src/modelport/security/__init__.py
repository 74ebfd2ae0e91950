"""Security: who is calling (``principal``), API keys and their grants, rate limits, the
tamper-evident audit log, TLS and encryption at rest. The wrappers here sit at every edge
(``serving.pipeline``): an ASGI wrapper for REST, a gRPC interceptor."""
