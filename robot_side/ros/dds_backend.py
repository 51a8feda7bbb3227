"""ROS 2 bridge on plain DDS (the ``cyclonedds`` package), no ROS install needed.

ROS 2 on any DDS middleware names a topic ``/ns/name`` as the DDS topic
``rt/ns/name`` and a message type ``pkg/msg/Type`` as ``pkg::msg::dds_::Type_``,
serialized as classic CDR (XCDR1) — the representation pinned in every QoS
here. With the structs of ``msgs`` this participant is seen by ``ros2 topic``
and rclpy nodes on the same domain like any ROS 2 node.

The e-stop subscription uses a listener so that a ``true`` latches the moment
it arrives, whatever the robot node's poll rate and however many messages
follow it: nothing can push an e-stop out of a history queue before it is seen.

Reliable writers never block (``max_blocking_time=0``): a write that would
wait for a slow reader fails instead, is counted in ``write_errors`` and raises
``RosBridgeError``, so ROS can never stall the robot node's threads.

Cost measured on the dev machine (``bench_publish()``; tests/test_ros_dds.py
prints it): one ``publish_measured_js`` for 6 joints, validation included, is
p50 ~40 us, p99 ~70-100 us on a loaded 2-core machine, so the node's 100 Hz
decimated rate costs under 0.5 % of a core.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
from cyclonedds.core import DDSException, Listener, Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

from robot_side.ros import msgs
from robot_side.ros.interface import (
    ESTOP_TOPIC,
    TOPICS,
    BridgeBase,
    RosBridgeError,
    TopicSpec,
)
from telesurgery.errors import ConfigError

log = logging.getLogger(__name__)

MAX_DOMAIN_ID = 232
"""Highest domain id with the standard RTPS port mapping (as in ROS 2)."""
ESTOP_TAKE_BATCH = 32


def topic_qos(spec: TopicSpec) -> Qos:
    """The ROS 2 default QoS for ``spec``: sensor data or reliable, volatile, XCDR1."""
    reliability = (Policy.Reliability.Reliable(max_blocking_time=0) if spec.reliable
                   else Policy.Reliability.BestEffort)
    return Qos(reliability, Policy.History.KeepLast(spec.depth), Policy.Durability.Volatile,
               Policy.DataRepresentation(use_cdrv0_representation=True))


class DdsBridge(BridgeBase):
    """Publishes the robot's CRTK topics and listens to the e-stop on one DDS participant."""

    backend = "dds"

    def __init__(self, namespace: str = "arm", domain_id: int = 0) -> None:
        super().__init__(namespace)
        if not 0 <= domain_id <= MAX_DOMAIN_ID:
            raise ConfigError(f"ros domain_id = {domain_id}: must be in [0, {MAX_DOMAIN_ID}]")
        self.domain_id = domain_id
        self.write_errors = 0
        try:
            participant = DomainParticipant(domain_id)
            self._participant: DomainParticipant | None = participant
            self._writers: dict[str, DataWriter[Any]] = {
                key: DataWriter(participant, self._topic(participant, spec), topic_qos(spec))
                for key, spec in TOPICS.items()
            }
            listener = Listener(  # type: ignore[no-untyped-call]  # cyclonedds leaves it untyped
                on_data_available=self._on_data_available)
            self._estop_reader: DataReader[Any] | None = DataReader(
                participant, self._topic(participant, ESTOP_TOPIC), topic_qos(ESTOP_TOPIC),
                listener=listener)
        except DDSException as err:
            self.close()
            raise RosBridgeError(f"ROS bridge backend 'dds': could not open DDS domain "
                                 f"{domain_id}: {err}") from err
        log.info("dds bridge: domain %d, publishing %s, e-stop on %s", domain_id,
                 [spec.dds_name(namespace) for spec in TOPICS.values()],
                 ESTOP_TOPIC.dds_name(namespace))

    def _topic(self, participant: DomainParticipant, spec: TopicSpec) -> Topic[Any]:
        return Topic(participant, spec.dds_name(self.namespace), spec.msg_type)

    def _write(self, topic: str, msg: IdlStruct) -> None:
        writer = self._writers.get(topic)
        if writer is None:
            raise RosBridgeError(f"ROS bridge backend 'dds': closed, or no topic {topic!r}")
        try:
            writer.write(msg)
        except DDSException as err:
            self.write_errors += 1
            log.warning("dds bridge: write on %s failed (%d so far): %s",
                        TOPICS[topic].dds_name(self.namespace), self.write_errors, err)
            raise RosBridgeError(f"ROS bridge backend 'dds': write on {topic} failed: "
                                 f"{err}") from err

    def _on_data_available(self, reader: DataReader[Any]) -> None:
        """DDS receive thread: drain every e-stop sample, latch any ``true``."""
        try:
            while samples := reader.take(N=ESTOP_TAKE_BATCH):
                for sample in samples:
                    # Dispose/unregister notices carry no data; they are not e-stop messages.
                    if isinstance(sample, msgs.Bool):
                        self._on_estop(bool(sample.data))
        except DDSException as err:
            # A failed take loses the samples it held: treat that as an e-stop, the safe side.
            log.error("dds bridge: e-stop take failed, latching e-stop: %s", err)
            self._on_estop(True)

    def close(self) -> None:
        """Delete the participant and with it every reader and writer; idempotent."""
        reader = getattr(self, "_estop_reader", None)
        if reader is not None:
            reader.set_listener(None)
        self._estop_reader = None
        self._writers = {}
        # cyclonedds deletes an entity when its last Python reference goes; the
        # participant's deletion takes all its children in the C library with it.
        self._participant = None


def bench_publish(n: int = 2000, domain_id: int = 0, joints: int = 6) -> dict[str, float]:
    """Cost of ``publish_measured_js`` (validation + CDR + write), p50/p99 in microseconds."""
    names = [f"joint_{i + 1}" for i in range(joints)]
    values = np.linspace(-1.0, 1.0, joints)
    times_ns = np.empty(n, dtype=np.int64)
    with DdsBridge(f"bench_{os.getpid()}", domain_id) as bridge:
        for i in range(n):
            t0 = time.perf_counter_ns()
            bridge.publish_measured_js(names, values, values, values,
                                       time.time_ns())  # wall-clock ok: a ROS header stamp
            times_ns[i] = time.perf_counter_ns() - t0
    us = times_ns / 1000.0
    return {"calls": float(n), "p50_us": float(np.percentile(us, 50)),
            "p99_us": float(np.percentile(us, 99)), "max_us": float(us.max())}
