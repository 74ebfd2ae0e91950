"""What each route and RPC needs: a scope, and the model it touches when it touches one.

One table for both edges (docs/security.md shows it). Whatever no rule covers needs
``admin``: a route added later without a rule is closed, never open.

=====================================================  ==========  =====
REST (method, path)                                    scope       model
=====================================================  ==========  =====
GET /v2/health/live                                    open
/v2/models/M[/versions/V][/infer|/ready|/config]       predict     M
/v1/models/M[...][:predict|:classify|:regress]         predict     M
/v2, /v2/health/ready, /metrics                        read
POST /v2/repository/index                              read
POST /v2/repository/models/M/load|unload               admin       M
/api/v1/keys..., /api/v1/audit..., POST /api/v1/gc     admin
/api/v1/models/M... (GET, HEAD)                        read        M
/api/v1/models/M... (other methods)                    write       M
/api/v1/... (GET, HEAD / other methods)                read/write
/openapi.json, /docs                                   read
anything else                                          admin
=====================================================  ==========  =====
"""

from __future__ import annotations

from typing import Any, NamedTuple

from modelport.security.principal import Scope

__all__ = ["GRPC_RULES", "OPEN", "Rule", "grpc_rule", "http_rule", "model_of"]


class Rule(NamedTuple):
    """What a request needs: ``scope`` (None: nothing, the route is open), and the model it
    addresses (``model``), or, for gRPC, the request field that names it (``field``).

    A tuple, not a dataclass: one is made per request, and a frozen dataclass costs ~1 us.
    """

    scope: Scope | None
    model: str | None = None
    field: str | None = None


OPEN = Rule(None)
_READ = Rule("read")
_WRITE = Rule("write")
_ADMIN = Rule("admin")

_READ_METHODS = frozenset(("GET", "HEAD"))
_READ_PATHS = frozenset(
    ("/v2", "/v2/health/ready", "/metrics", "/v2/repository/index", "/openapi.json", "/docs")
)


def http_rule(method: str, path: str) -> Rule:
    """The rule for a REST request (``path`` as ASGI gives it: decoded, no query)."""
    if path.startswith("/v2/models/"):
        # /v2/models/M, /v2/models/M/versions/V[/infer|/ready|/config], /v2/models/M/infer ...
        return Rule("predict", _segment(path, 11))
    if path.startswith("/v1/models/"):
        # TF Serving: /v1/models/M[/versions/V|/labels/L][/metadata], M:predict ...
        return Rule("predict", _segment(path, 11).partition(":")[0])
    if path.startswith("/api/"):
        return _api_rule(method, path)
    if path.startswith("/v2/repository/models/"):
        return Rule("admin", _segment(path, 22))
    if path == "/v2/health/live":
        return OPEN
    return _READ if path in _READ_PATHS or path.startswith("/docs/") else _ADMIN


def _api_rule(method: str, path: str) -> Rule:
    if not path.startswith("/api/v1/"):
        return _ADMIN
    rest = path[8:]
    if rest.partition("/")[0] in ("keys", "audit") or (rest == "gc" and method == "POST"):
        return _ADMIN
    reading = method in _READ_METHODS
    if rest.startswith("models/"):
        model = _segment(path, 15)
        if model:
            return Rule("read" if reading else "write", model)
    return _READ if reading else _WRITE


def _segment(path: str, start: int) -> str:
    """The path segment that begins at ``start``."""
    end = path.find("/", start)
    return path[start:] if end < 0 else path[start:end]


_SERVICE = "/inference.GRPCInferenceService/"

GRPC_RULES: dict[str, Rule] = {
    "ServerLive": OPEN,
    "ServerReady": _READ,
    "ServerMetadata": _READ,
    "RepositoryIndex": _READ,
    "ModelReady": Rule("predict", field="name"),
    "ModelMetadata": Rule("predict", field="name"),
    "ModelConfig": Rule("predict", field="name"),
    "ModelInfer": Rule("predict", field="model_name"),
    "ModelStreamInfer": Rule("predict", field="model_name"),
    "RepositoryModelLoad": Rule("admin", field="model_name"),
    "RepositoryModelUnload": Rule("admin", field="model_name"),
}
"""The rule of each RPC of ``inference.GRPCInferenceService``, by method name."""


def grpc_rule(method: str) -> Rule:
    """The rule for a full gRPC method name (``/inference.GRPCInferenceService/ModelInfer``)."""
    if method.startswith(_SERVICE):
        return GRPC_RULES.get(method[len(_SERVICE) :], _ADMIN)
    return _ADMIN


def model_of(rule: Rule, message: Any) -> str | None:
    """The model a gRPC request message addresses, by the rule's ``field``."""
    return getattr(message, rule.field) if rule.field else None
