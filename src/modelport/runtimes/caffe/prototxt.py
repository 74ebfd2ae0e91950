"""Reading a Caffe network definition (``deploy.prototxt``) without Caffe or OpenCV.

A prototxt is a ``caffe.NetParameter`` in protobuf text format. ``parse_text`` reads any
text-format message into a tree of fields without knowing the schema (so unknown layer
parameters are carried, not refused); ``network_inputs`` then finds the net's inputs in the
three ways Caffe declares them::

    input: "data"                      input: "data"
    input_shape { dim: 1 dim: 3 ... }  input_dim: 1  input_dim: 3  input_dim: 8  input_dim: 8

    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 ... } } }

Reading the file here first means a damaged prototxt is refused with a line and column before
OpenCV's parser sees it (which prints its complaints to stderr from C++).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from modelport.errors import InvalidModel

__all__ = ["NetworkInput", "TextMessage", "network_inputs", "parse_text", "read_network"]

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?))
    |(?P<word>-?[A-Za-z_][A-Za-z0-9_.]*)
    |(?P<symbol>[{}<>:\[\],;])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_CLOSING = {"{": "}", "<": ">"}


@dataclass
class TextMessage:
    """One text-format message: its fields in file order; values are text or messages."""

    fields: list[tuple[str, str | TextMessage]] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        """The scalar values of field ``name`` (strings unquoted, numbers as written)."""
        return [value for key, value in self.fields if key == name and isinstance(value, str)]

    def messages(self, name: str) -> list[TextMessage]:
        """The message values of field ``name``."""
        return [v for key, v in self.fields if key == name and isinstance(v, TextMessage)]


@dataclass(frozen=True, slots=True)
class NetworkInput:
    """An input blob of the net; ``shape`` is ``None`` when the prototxt gives none."""

    name: str
    shape: tuple[int, ...] | None


class _SyntaxProblem(Exception):
    def __init__(self, position: int, what: str) -> None:
        super().__init__(what)
        self.position = position
        self.what = what


def parse_text(text: str) -> TextMessage:
    """Parse protobuf text format into a ``TextMessage``, schema-free.

    Raises:
        ValueError: the text is not well-formed, as ``line L, column C: what``.
    """
    try:
        return _parse(list(_tokens(text)))
    except _SyntaxProblem as problem:
        line = text.count("\n", 0, problem.position) + 1
        column = problem.position - (text.rfind("\n", 0, problem.position) + 1) + 1
        raise ValueError(f"line {line}, column {column}: {problem.what}") from None


def _tokens(text: str) -> list[tuple[str, str, int]]:
    found: list[tuple[str, str, int]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise _SyntaxProblem(position, f"unexpected character {text[position]!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            found.append((kind, match.group(), position))
        position = match.end()
    return found


def _parse(tokens: list[tuple[str, str, int]]) -> TextMessage:
    root = TextMessage()
    # An explicit stack, not recursion: nesting depth is the file's to choose.
    stack: list[tuple[TextMessage, str, int]] = [(root, "", 0)]
    index = 0
    end = tokens[-1][2] + len(tokens[-1][1]) if tokens else 0
    while index < len(tokens):
        kind, text, position = tokens[index]
        message, closing, _ = stack[-1]
        if kind == "symbol" and text == closing:
            stack.pop()
            index = _skip_separator(tokens, index + 1)
            continue
        if kind != "word":
            raise _SyntaxProblem(position, f"expected a field name, found {text!r}")
        index += 1
        has_colon = index < len(tokens) and tokens[index][1] == ":"
        index += has_colon
        if index >= len(tokens):
            raise _SyntaxProblem(end, f"field {text!r} has no value")
        _, value, value_position = tokens[index]
        if value in _CLOSING:
            child = TextMessage()
            message.fields.append((text, child))
            stack.append((child, _CLOSING[value], value_position))
            index += 1
            continue
        if not has_colon:
            raise _SyntaxProblem(value_position, f"expected ':' or '{{' after {text!r}")
        scalars, index = _scalars(tokens, index)
        message.fields.extend((text, scalar) for scalar in scalars)
        index = _skip_separator(tokens, index)
    if len(stack) > 1:
        raise _SyntaxProblem(stack[-1][2], "this '{' is never closed")
    return root


def _scalars(tokens: list[tuple[str, str, int]], index: int) -> tuple[list[str], int]:
    kind, text, position = tokens[index]
    if text == "[":
        values: list[str] = []
        index += 1
        while index < len(tokens) and tokens[index][1] != "]":
            if values:
                if tokens[index][1] != ",":
                    raise _SyntaxProblem(tokens[index][2], "expected ',' or ']' in a list")
                index += 1
            value, index = _scalars(tokens, index) if index < len(tokens) else ([], index)
            values.extend(value)
        if index >= len(tokens):
            raise _SyntaxProblem(position, "this '[' is never closed")
        return values, index + 1
    if kind == "string":
        parts = []
        while index < len(tokens) and tokens[index][0] == "string":  # "a" "b" is "ab"
            parts.append(_unquote(tokens[index][1]))
            index += 1
        return ["".join(parts)], index
    if kind in ("number", "word"):
        return [text], index + 1
    raise _SyntaxProblem(position, f"expected a value, found {text!r}")


def _skip_separator(tokens: list[tuple[str, str, int]], index: int) -> int:
    return index + 1 if index < len(tokens) and tokens[index][1] in (",", ";") else index


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), token[1:-1])


def read_network(path: Path) -> TextMessage:
    """The ``NetParameter`` in the prototxt at ``path``; it must have layers.

    Raises:
        InvalidModel: unreadable, not text, not well-formed, or with no layers.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InvalidModel(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise InvalidModel(
            f"{path.name} is not text, so not a Caffe network definition (prototxt); the "
            "prototxt comes first, then the weights: deploy.prototxt weights.caffemodel"
        ) from None
    try:
        network = parse_text(text)
    except ValueError as exc:
        raise InvalidModel(f"{path.name} is not a Caffe network definition: {exc}") from None
    if not network.messages("layer") and not network.messages("layers"):
        raise InvalidModel(f"{path.name} is not a Caffe network definition: it has no layers")
    return network


def network_inputs(network: TextMessage, file_name: str) -> list[NetworkInput]:
    """The net's inputs in declaration order: ``input`` fields first, then Input layers.

    Raises:
        InvalidModel: no inputs, or shapes that do not match the inputs they describe.
    """
    names = network.values("input")
    shapes = [_dims(shape, file_name) for shape in network.messages("input_shape")]
    flat = [_dim(value, file_name) for value in network.values("input_dim")]
    if shapes and len(shapes) != len(names):
        raise InvalidModel(
            f"{file_name} names {len(names)} input(s) but gives {len(shapes)} input_shape(s)"
        )
    if not shapes and flat:
        if len(flat) != 4 * len(names):
            raise InvalidModel(
                f"{file_name} gives {len(flat)} input_dim value(s) for {len(names)} input(s); "
                "Caffe takes four per input"
            )
        shapes = [tuple(flat[i : i + 4]) for i in range(0, len(flat), 4)]
    found = [NetworkInput(name, shapes[i] if shapes else None) for i, name in enumerate(names)]
    for layer in network.messages("layer"):
        if layer.values("type") == ["Input"]:
            found.extend(_input_layer(layer, file_name))
    if not found:
        raise InvalidModel(
            f"{file_name} declares no inputs (no 'input:' and no Input layer); push the deploy "
            "prototxt, not a training one (train_val.prototxt)"
        )
    seen = [item.name for item in found]
    duplicated = sorted({name for name in seen if seen.count(name) > 1})
    if duplicated:
        raise InvalidModel(f"{file_name} declares input {duplicated[0]!r} more than once")
    return found


def _input_layer(layer: TextMessage, file_name: str) -> list[NetworkInput]:
    tops = layer.values("top")
    params = layer.messages("input_param")
    shapes = [_dims(shape, file_name) for shape in params[0].messages("shape")] if params else []
    if len(shapes) == 1:  # Caffe gives a lone shape to every top
        shapes = shapes * len(tops)
    if shapes and len(shapes) != len(tops):
        raise InvalidModel(
            f"{file_name}: Input layer {layer.values('name')} has {len(tops)} top(s) but "
            f"{len(shapes)} shape(s)"
        )
    return [NetworkInput(top, shapes[i] if shapes else None) for i, top in enumerate(tops)]


def _dims(shape: TextMessage, file_name: str) -> tuple[int, ...]:
    return tuple(_dim(value, file_name) for value in shape.values("dim"))


def _dim(value: str, file_name: str) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        number = 0
    if number < 1:
        raise InvalidModel(f"{file_name}: input dimension {value!r} is not a positive integer")
    return number
