"""What both Open Inference Protocol front-ends (REST and gRPC) say about the served models,
built from the ``ModelManager``'s state; the records and their encoding are
``protocols.v2.metadata``'s."""

from __future__ import annotations

from typing import Any

from modelport.protocols.v2.metadata import ModelMetadata
from modelport.serving.deployment import Deployment
from modelport.serving.manager import ModelManager
from modelport.types import DataType

__all__ = ["metadata", "platform", "triton_config"]
# Triton's names where Triton serves the same format; other formats report their own name.
_PLATFORMS = {
    "onnx": "onnxruntime_onnx",
    "torchscript": "pytorch_libtorch",
    "tf_savedmodel": "tensorflow_savedmodel",
}


def platform(deployment: Deployment) -> str:
    """Triton's platform name for the format where there is one (``onnxruntime_onnx``)."""
    return _PLATFORMS.get(deployment.record.format, deployment.record.format)


def metadata(manager: ModelManager, deployment: Deployment) -> dict[str, Any]:
    """The V2 model metadata of ``deployment``, as the wire carries it (a dict)."""
    served = manager.served(deployment.name)
    signature = deployment.signature
    return ModelMetadata(
        name=deployment.name,
        versions=tuple(str(v) for v in sorted(served.deployments)),
        platform=platform(deployment),
        inputs=signature.inputs,
        outputs=signature.outputs,
    ).to_json()


def triton_config(deployment: Deployment) -> dict[str, Any]:
    """A Triton-style model configuration, for clients that ask for it."""
    config = deployment.config

    def tensor(spec: Any) -> dict[str, Any]:
        return {
            "name": spec.name,
            "data_type": f"TYPE_{_TRITON_TYPES[spec.datatype]}",
            "dims": list(spec.shape or [-1]),
        }

    return {
        "name": deployment.name,
        "platform": platform(deployment),
        "max_batch_size": 0,
        "input": [tensor(s) for s in deployment.signature.inputs],
        "output": [tensor(s) for s in deployment.signature.outputs],
        "instance_group": [{"count": config.instance_count(), "kind": "KIND_CPU"}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(config.max_queue_delay_ms * 1000),
            "preferred_batch_size": config.preferred_batch_sizes,
        },
        "parameters": {
            "modelport_max_batch_size": {"string_value": str(config.max_batch_size)},
            "modelport_max_batch_bytes": {"string_value": str(config.max_batch_bytes)},
            "modelport_threads": {"string_value": str(config.thread_count())},
            "modelport_solo_threads": {"string_value": str(config.solo_thread_count())},
        },
    }


_TRITON_TYPES = {d: d.value if d is not DataType.BYTES else "STRING" for d in DataType}
