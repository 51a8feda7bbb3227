"""ROS 2's own message definitions as cyclonedds types, built from the rosbags type store.

Independent of ``robot_side.ros.msgs``: every struct here is generated from the
``.msg`` definitions rosbags ships for ROS 2 Humble (plus the crtk_msgs texts),
mapped to IDL by the ROS 2 rules (rosidl: ``byte`` -> ``octet``, ``char`` ->
``uint8``, ``float64`` -> ``double`` ...). A participant using these is a
stand-in for a ROS 2 node on rmw_cyclonedds: if the project's types differ,
cyclonedds' type checking refuses the match and it receives nothing.
"""

from __future__ import annotations

import typing
from typing import Any

from cyclonedds.idl import IdlStruct, make_idl_struct
from cyclonedds.idl import types as t
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype

from robot_side.ros.msgs import CRTK_MSGS

ROS_TO_IDL: dict[str, Any] = {
    "bool": bool, "byte": t.byte, "char": t.uint8, "float32": t.float32,
    "float64": t.float64, "int8": t.int8, "uint8": t.uint8, "int16": t.int16,
    "uint16": t.uint16, "int32": t.int32, "uint32": t.uint32, "int64": t.int64,
    "uint64": t.uint64, "string": str,
}
"""ROS 2 primitive types as IDL types (design.ros2.org, 'Interface definition')."""


def typestore() -> Any:
    store = get_typestore(Stores.ROS2_HUMBLE)
    for name, text in CRTK_MSGS.items():
        store.register(get_types_from_msg(text, name))
    return store


class Reference:
    """cyclonedds structs for ROS 2 message types, generated on demand."""

    def __init__(self, store: Any | None = None) -> None:
        self.store = store or typestore()
        self._made: dict[str, type[IdlStruct]] = {}

    def __getitem__(self, ros_type: str) -> type[IdlStruct]:
        """``sensor_msgs/msg/JointState`` -> struct ``sensor_msgs::msg::dds_::JointState_``."""
        if ros_type not in self._made:
            self._made[ros_type] = self._make(ros_type)
        return self._made[ros_type]

    def _field_type(self, node: tuple[Any, Any]) -> Any:
        kind, detail = node
        if kind == Nodetype.BASE:
            name, bound = detail
            if bound:
                raise NotImplementedError(f"bounded {name}")
            return ROS_TO_IDL[name]
        if kind == Nodetype.NAME:
            return self[detail]
        if kind == Nodetype.SEQUENCE:
            inner, bound = detail
            return t.sequence[self._field_type(inner)] if not bound else \
                t.sequence[self._field_type(inner), bound]
        if kind == Nodetype.ARRAY:
            inner, length = detail
            return t.array[self._field_type(inner), length]
        raise NotImplementedError(f"node kind {kind}")

    def _make(self, ros_type: str) -> type[IdlStruct]:
        pkg, sub, name = ros_type.split("/")
        _, fields = self.store.fielddefs[ros_type]
        annotations = {fname: self._field_type(node) for fname, node in fields}
        struct: type[IdlStruct] = make_idl_struct(f"Ros_{name}", f"{pkg}::{sub}::dds_::{name}_",
                                                  annotations)
        return struct


def ros_name(idl_typename: str) -> str:
    """``pkg::msg::dds_::T_`` -> ``pkg/msg/T``."""
    pkg, sub, _, name = idl_typename.split("::")
    return f"{pkg}/{sub}/{name.removesuffix('_')}"


def idl_shape(tp: Any) -> Any:
    """A comparable description of an IDL type: struct names, field order, base types."""
    if isinstance(tp, type) and issubclass(tp, IdlStruct):
        hints = typing.get_type_hints(tp, include_extras=True)
        return (tp.__idl_typename__, tuple((name, idl_shape(h)) for name, h in hints.items()))
    if tp is str:
        return "string"
    if tp is bool:
        return "boolean"
    if typing.get_origin(tp) is typing.Annotated:
        meta = typing.get_args(tp)[1]
        if isinstance(meta, str):
            return meta  # a primitive: 'float64', 'byte', 'uint32', ...
        if isinstance(meta, t.sequence):
            return ("sequence", idl_shape(meta.subtype), meta.max_length)
        if isinstance(meta, t.array):
            return ("array", idl_shape(meta.subtype), meta.length)
    raise NotImplementedError(f"type {tp!r}")
