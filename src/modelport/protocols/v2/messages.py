"""V2 gRPC messages (``inference.GRPCInferenceService``) <-> ``Tensors`` and plain dicts.

The server side reads a ``ModelInferRequest`` (typed ``contents`` or ``raw_input_contents``,
what tritonclient sends) and answers with ``raw_output_contents``, as Triton does; the
client side sends raw inputs and reads raw or typed outputs back. Metadata messages are
built from the dicts the REST front-end writes (``as_message``) and read back into the same
records as REST's (``model_metadata``, ...), so both transports describe a model alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from modelport._generated import grpc_predict_v2_pb2 as pb
from modelport.errors import Internal, InvalidInput
from modelport.protocols.v2.codec import (
    OFF_LOOP_BYTES,
    array_from_raw,
    check_declared,
    check_shape,
    raw_bytes,
)
from modelport.protocols.v2.metadata import ModelMetadata, RepositoryEntry, ServerMetadata
from modelport.tensorio import array_from_json
from modelport.types import DataType, Signature, Tensors, TensorSpec

__all__ = [
    "InferOutputs",
    "as_message",
    "decoding_may_stall",
    "index_entries",
    "infer_request",
    "infer_response",
    "model_metadata",
    "read_response",
    "request_inputs",
    "requested_outputs",
    "server_metadata",
]

# Which typed field holds each datatype's data; FP16 has none and travels raw only.
_CONTENTS: dict[DataType, str] = {
    DataType.BOOL: "bool_contents", DataType.BYTES: "bytes_contents",
    DataType.UINT8: "uint_contents", DataType.UINT16: "uint_contents",
    DataType.UINT32: "uint_contents", DataType.UINT64: "uint64_contents",
    DataType.INT8: "int_contents", DataType.INT16: "int_contents",
    DataType.INT32: "int_contents", DataType.INT64: "int64_contents",
    DataType.FP32: "fp32_contents", DataType.FP64: "fp64_contents",
}  # fmt: skip


def decoding_may_stall(request: Any) -> bool:
    """Whether decoding ``request`` may hold the event loop long: ``OFF_LOOP_BYTES`` or more
    of fixed-size data, or any BYTES, whose size only its contents tell.

    Judged from what the inputs declare: protobuf copies a ``bytes`` field on every access,
    and ``ByteSize()`` serializes the message (200 ms for 64 MiB), so the data is not looked at.
    A declaration that is wrong is refused by the decoding itself.
    """
    for tensor in request.inputs:
        itemsize = _ITEMSIZE.get(tensor.datatype)
        if itemsize == 0 or (itemsize and math.prod(tensor.shape) * itemsize >= OFF_LOOP_BYTES):
            return True
    return False


_ITEMSIZE = {datatype.value: datatype.itemsize for datatype in DataType}  # BYTES: 0


def request_inputs(request: Any, signature: Signature) -> Tensors:
    """The tensors of a ``ModelInferRequest``; raw ones checked against ``signature`` before
    they are decoded. Pure: runs in a worker thread for large requests.

    Raises:
        InvalidInput: an input is malformed or does not decode.
    """
    raw = request.raw_input_contents
    if not request.inputs:
        raise InvalidInput("request has no inputs")
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in the order of 'inputs'"
        )
    inputs: Tensors = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears twice")
        if "shared_memory_region" in tensor.parameters:
            raise InvalidInput(f"input {name!r}: shared memory is not supported; send the data")
        try:
            datatype = DataType.parse(tensor.datatype)
        except InvalidInput as exc:
            raise InvalidInput(f"input {name!r}: {exc}") from None
        shape = check_shape(name, list(tensor.shape))
        if not raw:
            inputs[name] = _from_contents(name, datatype, shape, tensor.contents)
        elif tensor.HasField("contents"):
            raise InvalidInput(
                f"input {name!r} has typed contents while the request uses raw_input_contents; "
                "send every input one way"
            )
        else:
            # Raw data costs its decoding whatever the model takes: judge what it claims
            # first. (Typed contents are decoded already; ``infer`` judges them.)
            check_declared(signature, name, datatype, shape)
            inputs[name] = array_from_raw(name, datatype, shape, raw[index])
    return inputs


def _from_contents(
    name: str, datatype: DataType, shape: tuple[int, ...], contents: Any
) -> npt.NDArray[Any]:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input {name!r}: {datatype.value} has no typed contents field; "
            "send it in raw_input_contents"
        )
    stray = [f.name for f, _ in contents.ListFields() if f.name != field]
    if stray:
        raise InvalidInput(
            f"input {name!r}: {datatype.value} data goes in {field}, not {', '.join(stray)}"
        )
    values = getattr(contents, field)
    expected = math.prod(shape)
    if len(values) != expected:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} needs {expected} elements, "
            f"{field} has {len(values)}"
        )
    # Protobuf has typed the values, but a field may be wider than the datatype (uint_contents
    # carries UINT8): the one JSON rule judges them, so 300 for a UINT8 is refused here with
    # the words every other edge uses.
    return array_from_json(list(values), datatype, name).reshape(shape)


def requested_outputs(request: Any) -> list[str] | None:
    """The names of the outputs a ``ModelInferRequest`` asks for; None: all of them."""
    names = []
    for output in request.outputs:
        for unsupported in ("shared_memory_region", "classification"):
            if unsupported in output.parameters:
                raise InvalidInput(
                    f"output {output.name!r}: {unsupported.replace('_', ' ')} is not supported; "
                    "request the output without it"
                )
        names.append(output.name)
    return names or None


def as_message(cls: Any, fields: Mapping[str, Any]) -> Any:
    """A message from the dict the REST front-end answers with; keys it lacks are left out."""
    known = cls.DESCRIPTOR.fields_by_name
    return cls(**{key: value for key, value in fields.items() if key in known})


def infer_response(model_name: str, model_version: str, request_id: str, outputs: Tensors) -> Any:
    """A ``ModelInferResponse`` carrying ``outputs`` as ``raw_output_contents``."""
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id
    )
    for name, array in outputs.items():
        datatype = DataType.from_numpy(array.dtype)
        response.outputs.add(name=name, datatype=datatype.value, shape=array.shape)
        response.raw_output_contents.append(raw_bytes(array))
    return response


# -- the client's side ---------------------------------------------------------------------


def infer_request(
    model_name: str,
    model_version: str,
    inputs: Mapping[str, npt.NDArray[Any]],
    outputs: Sequence[str] | None = None,
    request_id: str = "",
) -> Any:
    """A ``ModelInferRequest`` with every input as ``raw_input_contents``.

    Raises:
        InvalidInput: an array's dtype has no inference datatype.
    """
    request = pb.ModelInferRequest(
        model_name=model_name, model_version=model_version, id=request_id
    )
    for name, array in inputs.items():
        datatype = DataType.from_numpy(array.dtype)
        request.inputs.add(name=name, datatype=datatype.value, shape=array.shape)
        request.raw_input_contents.append(raw_bytes(array))
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


@dataclass(frozen=True, slots=True)
class InferOutputs:
    """What a ``ModelInferResponse`` says: who answered, and the outputs as numpy arrays."""

    model_name: str
    model_version: str
    id: str
    outputs: Tensors


def read_response(response: Any) -> InferOutputs:
    """The outputs of a ``ModelInferResponse``, raw or typed.

    Raises:
        Internal: the response does not decode (a server bug, not worth retrying).
    """
    raw = response.raw_output_contents
    outputs: Tensors = {}
    try:
        for index, tensor in enumerate(response.outputs):
            datatype = DataType.parse(tensor.datatype)
            shape = tuple(tensor.shape)
            if raw:
                outputs[tensor.name] = array_from_raw(tensor.name, datatype, shape, raw[index])
            else:
                outputs[tensor.name] = _from_contents(tensor.name, datatype, shape, tensor.contents)
    except (InvalidInput, IndexError) as exc:
        raise Internal(f"the server's infer response is malformed: {exc}") from None
    return InferOutputs(response.model_name, response.model_version, response.id, outputs)


def server_metadata(response: Any) -> ServerMetadata:
    """A ``ServerMetadataResponse`` as the record REST's ``GET /v2`` reads into."""
    return ServerMetadata(response.name, response.version, tuple(response.extensions))


def model_metadata(response: Any) -> ModelMetadata:
    """A ``ModelMetadataResponse`` as the record REST's model metadata reads into."""

    def specs(tensors: Any) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(t.name, DataType.parse(t.datatype), tuple(t.shape)) for t in tensors
        )

    return ModelMetadata(
        name=response.name,
        versions=tuple(response.versions),
        platform=response.platform,
        inputs=specs(response.inputs),
        outputs=specs(response.outputs),
    )


def index_entries(response: Any) -> list[RepositoryEntry]:
    """A ``RepositoryIndexResponse`` as the records REST's repository index reads into."""
    return [RepositoryEntry(m.name, m.version, m.state, m.reason) for m in response.models]
