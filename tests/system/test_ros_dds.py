"""The ROS 2 bridge through real DDS, checked byte for byte against rosbags' CDR serializer.

Each test run uses its own random DDS domain and namespace so helpers running
tests at the same time on this machine never see each other's topics.
"""

from __future__ import annotations

import importlib.util
import math
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cyclonedds._clayer import ddspy_take
from cyclonedds.core import InstanceState, Policy, Qos, SampleState, ViewState
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from ros_reference import Reference, idl_shape, ros_name
from ros_reference import typestore as reference_typestore

from robot_side.ros import BACKENDS, NullBridge, RosBridgeError, RosMessageError, msgs, open_bridge
from robot_side.ros.dds_backend import DdsBridge, bench_publish, topic_qos
from robot_side.ros.topics import ESTOP_TOPIC, SUBSCRIPTIONS, TOPICS, TopicSpec
from telesurgery.errors import ConfigError, TelesurgeryError

DEADLINE_S = 20.0
"""Generous: discovery takes ~1 s but this machine is shared and loaded."""
JOINTS = [f"joint_{i}" for i in range(1, 7)]
STAMP_NS = 1_732_000_000_123_456_789
STAMP = (1_732_000_000, 123_456_789)
ANY_SAMPLE = SampleState.Any | ViewState.Any | InstanceState.Any


@pytest.fixture(scope="module")
def domain() -> int:
    return random.randint(1, 200)


@pytest.fixture(scope="module")
def namespace() -> str:
    return f"arm_{random.randrange(16**6):06x}"


@pytest.fixture(scope="module")
def peer(domain: int) -> DomainParticipant:
    """A separate participant standing for a ROS 2 tool on the same domain."""
    return DomainParticipant(domain)


@pytest.fixture(scope="module")
def bridge(domain: int, namespace: str) -> Iterator[DdsBridge]:
    b = open_bridge("dds", namespace, domain)
    assert isinstance(b, DdsBridge)
    yield b
    b.close()


@pytest.fixture(scope="module")
def typestore() -> Any:
    return reference_typestore()


def ros_default_qos() -> Qos:
    """What ``create_subscription(..., 10)`` asks for (rmw_qos_profile_default), as CDR v0."""
    return Qos(Policy.Reliability.Reliable(max_blocking_time=100_000_000),
               Policy.History.KeepLast(10), Policy.Durability.Volatile,
               Policy.DataRepresentation(use_cdrv0_representation=True))


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def reader_for(peer: DomainParticipant, spec: TopicSpec, namespace: str) -> DataReader[Any]:
    reader: DataReader[Any] = DataReader(
        peer, Topic(peer, spec.dds_name(namespace), spec.msg_type), ros_default_qos())
    wait_for(reader.get_matched_publications, f"{spec.dds_name(namespace)} to match")
    return reader


def receive(reader: DataReader[Any], publish: Callable[[], None], what: str) -> bytes:
    """The serialized bytes of one sample as delivered to ``reader``, not a re-encoding.

    Publishes until a sample arrives (best effort may drop one right after matching).
    """

    def attempt() -> list[tuple[bytes, Any]]:
        publish()
        time.sleep(0.02)
        return [(data, info) for data, info in ddspy_take(reader._ref, ANY_SAMPLE, 10)
                if info.valid_data]

    data, _ = wait_for(attempt, what)[-1]
    return bytes(data)


def ros_header(store: Any, frame_id: str) -> Any:
    time_ = store.types["builtin_interfaces/msg/Time"](sec=STAMP[0], nanosec=STAMP[1])
    return store.types["std_msgs/msg/Header"](stamp=time_, frame_id=frame_id)


def assert_wire(wire: bytes, expected: Any, typename: str, store: Any, reader: Any) -> None:
    """Same CDR bytes as rosbags, and the ROS 2 type name on the wire."""
    assert wire[:4] == b"\x00\x01\x00\x00"  # classic CDR, little endian: what ROS 2 sends
    reference = bytes(store.serialize_cdr(expected, typename))
    # An RTPS serialized payload is padded with zeros to a multiple of 4 bytes.
    assert wire == reference + b"\x00" * (-len(reference) % 4)
    # ...and a ROS 2 reader (rosbags standing in for one) takes the padded payload as is.
    assert bytes(store.serialize_cdr(store.deserialize_cdr(wire, typename), typename)) \
        == reference
    pkg, _, name = typename.split("/")
    endpoint = reader.get_matched_publication_data(reader.get_matched_publications()[0])
    assert endpoint.type_name == f"{pkg}::msg::dds_::{name}_"


# ------------------------------------------------------------------ ROS 2 types
@pytest.mark.parametrize("struct", msgs.ALL_STRUCTS, ids=lambda s: s.__name__)
def test_every_struct_has_ros2s_own_idl_types(struct) -> None:
    """Field names, order and IDL types as ROS 2 defines them (rosbags' .msg store)."""
    reference = Reference()[ros_name(struct.__idl_typename__)]
    assert idl_shape(struct) == idl_shape(reference)


def test_every_topic_uses_a_struct_that_was_compared() -> None:
    for spec in [*TOPICS.values(), *SUBSCRIPTIONS.values()]:
        assert spec.msg_type in msgs.ALL_STRUCTS, spec.name


# ------------------------------------------------------------- wire bytes
def test_measured_js_on_the_wire(bridge, peer, namespace, typestore) -> None:
    reader = reader_for(peer, TOPICS["measured_js"], namespace)
    # Not representable in float32: the positions must travel as float64 end to end.
    position = [0.1, -0.2, 0.3, 1e-9, 1.5, -3.0000001]
    effort = [0.0, 9.81, 4.5, 0.0, 0.25, 0.0]
    wire = receive(reader, lambda: bridge.publish_measured_js(
        JOINTS, np.array(position), [0.0] * 6, effort, STAMP_NS), "measured_js")
    expected = typestore.types["sensor_msgs/msg/JointState"](
        header=ros_header(typestore, ""), name=JOINTS, position=np.array(position),
        velocity=np.zeros(6), effort=np.array(effort))
    assert_wire(wire, expected, "sensor_msgs/msg/JointState", typestore, reader)
    endpoint = reader.get_matched_publication_data(reader.get_matched_publications()[0])
    assert endpoint.topic_name == f"rt/{namespace}/measured_js"


@pytest.mark.parametrize("topic", ["measured_cp", "setpoint_cp"])
def test_poses_on_the_wire(bridge, peer, namespace, typestore, topic) -> None:
    reader = reader_for(peer, TOPICS[topic], namespace)
    wxyz = (math.cos(0.3), 0.0, math.sin(0.3), 0.0)
    publish = getattr(bridge, f"publish_{topic}")
    wire = receive(reader, lambda: publish((0.35, -0.01, 0.25), wxyz, STAMP_NS), topic)
    t = typestore.types
    pose = t["geometry_msgs/msg/Pose"](
        position=t["geometry_msgs/msg/Point"](x=0.35, y=-0.01, z=0.25),
        orientation=t["geometry_msgs/msg/Quaternion"](x=wxyz[1], y=wxyz[2], z=wxyz[3],
                                                      w=wxyz[0]))
    expected = t["geometry_msgs/msg/PoseStamped"](header=ros_header(typestore, "base"),
                                                  pose=pose)
    assert_wire(wire, expected, "geometry_msgs/msg/PoseStamped", typestore, reader)


def test_operating_state_on_the_wire(bridge, peer, namespace, typestore) -> None:
    reader = reader_for(peer, TOPICS["operating_state"], namespace)
    wire = receive(reader, lambda: bridge.publish_operating_state(
        "ENABLED", True, False, STAMP_NS), "operating_state")
    expected = typestore.types["crtk_msgs/msg/OperatingState"](
        header=ros_header(typestore, ""), state="ENABLED", is_homed=True, is_busy=False)
    assert_wire(wire, expected, "crtk_msgs/msg/OperatingState", typestore, reader)


def test_diagnostics_on_the_wire(bridge, peer, namespace, typestore) -> None:
    reader = reader_for(peer, TOPICS["diagnostics"], namespace)
    values = {"state": "HOLD", "rtt_ms": "12.5"}
    wire = receive(reader, lambda: bridge.publish_diagnostics(
        1, "supervisor", "link degraded", values, STAMP_NS), "diagnostics")
    t = typestore.types
    status = t["diagnostic_msgs/msg/DiagnosticStatus"](
        level=1, name=f"{namespace}: supervisor", message="link degraded",
        hardware_id=namespace,
        values=[t["diagnostic_msgs/msg/KeyValue"](key=k, value=v) for k, v in values.items()])
    expected = t["diagnostic_msgs/msg/DiagnosticArray"](header=ros_header(typestore, ""),
                                                        status=[status])
    assert_wire(wire, expected, "diagnostic_msgs/msg/DiagnosticArray", typestore, reader)
    endpoint = reader.get_matched_publication_data(reader.get_matched_publications()[0])
    assert endpoint.topic_name == "rt/diagnostics"


@pytest.mark.parametrize("key", sorted(TOPICS))
def test_every_topic_is_offered_with_ros2_default_qos(bridge, peer, namespace, key) -> None:
    """Reliable, keep last 10, volatile: a default ROS 2 subscription matches every topic."""
    reader = reader_for(peer, TOPICS[key], namespace)
    endpoint = reader.get_matched_publication_data(reader.get_matched_publications()[0])
    assert isinstance(endpoint.qos[Policy.Reliability], Policy.Reliability.Reliable)
    assert endpoint.qos[Policy.History] == Policy.History.KeepLast(10)
    assert endpoint.qos[Policy.Durability] == Policy.Durability.Volatile
    assert endpoint.qos[Policy.DataRepresentation].use_cdrv0_representation


# --------------------------------------------------------------------- e-stop
def estop_writer(peer: DomainParticipant, namespace: str) -> DataWriter[Any]:
    writer: DataWriter[Any] = DataWriter(
        peer, Topic(peer, ESTOP_TOPIC.dds_name(namespace), msgs.Bool), topic_qos(ESTOP_TOPIC))
    wait_for(writer.get_matched_subscriptions, "the bridge's e-stop reader")
    return writer


def test_estop_true_latches_and_no_false_clears_it(bridge, peer, namespace) -> None:
    writer = estop_writer(peer, namespace)
    bridge.poll_estop()
    ignored, seen = bridge.estop_ignored, bridge.estop_messages
    writer.write(msgs.Bool(data=True))
    # More 'false' messages than the reader's history depth: none may hide the 'true'.
    for _ in range(3 * ESTOP_TOPIC.depth):
        writer.write(msgs.Bool(data=False))
    wait_for(lambda: bridge.estop_ignored == ignored + 3 * ESTOP_TOPIC.depth, "the falses")
    assert bridge.estop_messages == seen + 1
    assert bridge.poll_estop() is True
    assert bridge.poll_estop() is False  # reported once per arrival; the node latches it
    writer.write(msgs.Bool(data=False))
    wait_for(lambda: bridge.estop_ignored == ignored + 3 * ESTOP_TOPIC.depth + 1, "a false")
    assert bridge.poll_estop() is False


def test_estop_from_another_process(bridge, domain, namespace) -> None:
    """Real RTPS over the loopback interface, not cyclonedds' in-process delivery."""
    bridge.poll_estop()
    script = textwrap.dedent(f"""
        import time
        from cyclonedds.domain import DomainParticipant
        from cyclonedds.pub import DataWriter
        from cyclonedds.topic import Topic
        from robot_side.ros import msgs
        from robot_side.ros.dds_backend import topic_qos
        from robot_side.ros.topics import ESTOP_TOPIC
        dp = DomainParticipant({domain})
        w = DataWriter(dp, Topic(dp, ESTOP_TOPIC.dds_name({namespace!r}), msgs.Bool),
                       topic_qos(ESTOP_TOPIC))
        deadline = time.monotonic() + {DEADLINE_S}
        while not w.get_matched_subscriptions() and time.monotonic() < deadline:
            time.sleep(0.01)
        w.write(msgs.Bool(data=True))
        w.wait_for_acks(int({DEADLINE_S} * 1e9))
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert wait_for(bridge.poll_estop, "the e-stop from the other process")


# ------------------------------------------------------------ bad input, life
@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda b: b.publish_measured_js(JOINTS, [0.0] * 5, [], [], STAMP_NS),
         "measured_js.position"),
        (lambda b: b.publish_measured_js(JOINTS, [math.nan] * 6, [], [], STAMP_NS),
         "measured_js.position"),
        (lambda b: b.publish_measured_js(JOINTS, [0.0] * 6, [0.0] * 3, [], STAMP_NS),
         "measured_js.velocity"),
        (lambda b: b.publish_twist("measured_cv", (0, 0, math.nan), (0, 0, 0), STAMP_NS),
         "measured_cv.linear"),
        (lambda b: b.publish_wrench("measured_cf", (0, 0, 0), (0, 0), STAMP_NS),
         "measured_cf.torque"),
        (lambda b: b.publish_matrix("jacobian", np.ones(6), "twist", "joint"), "jacobian"),
        (lambda b: b.publish_measured_cp((0.1, 0.2, math.inf), (1, 0, 0, 0), STAMP_NS),
         "measured_cp.position"),
        (lambda b: b.publish_setpoint_cp((0.1, 0.2, 0.3), (2, 0, 0, 0), STAMP_NS),
         "setpoint_cp.quat"),
        (lambda b: b.publish_setpoint_cp((0.1, 0.2, 0.3), (1, 0, 0, 0), STAMP_NS, ""),
         "setpoint_cp.frame_id"),
        (lambda b: b.publish_operating_state("RUNNING", True, False, STAMP_NS),
         "operating_state.state"),
        (lambda b: b.publish_diagnostics(7, "supervisor", "", {}, STAMP_NS),
         "diagnostics.level"),
        (lambda b: b.publish_diagnostics(0, "supervisor", "", {"k": 3}, STAMP_NS),
         "diagnostics.values"),
        (lambda b: b.publish_operating_state("ENABLED", True, False, -1), "stamp_ns"),
        (lambda b: b.publish_operating_state("ENABLED", True, False, 1.5), "stamp_ns"),
    ],
)
def test_bad_values_are_refused_by_name_counted_and_the_bridge_keeps_working(
        bridge, call, field) -> None:
    rejected, published = bridge.rejected, bridge.published
    with pytest.raises(RosMessageError, match=field) as info:
        call(bridge)
    assert isinstance(info.value, TelesurgeryError)
    assert (bridge.rejected, bridge.published) == (rejected + 1, published)
    bridge.publish_operating_state("FAULT", True, False, STAMP_NS)
    assert bridge.published == published + 1


def test_publish_cost_is_printed(domain) -> None:
    stats = bench_publish(2000, domain)
    print(f"\nDdsBridge.publish_measured_js (6 joints): p50 {stats['p50_us']:.1f} us, "
          f"p99 {stats['p99_us']:.1f} us; at 100 Hz {stats['p50_us'] / 100:.2f} % of a core")
    assert stats["calls"] == 2000


def test_close_deletes_the_participant(domain, peer) -> None:
    namespace = f"closing_{random.randrange(16**6):06x}"
    b = open_bridge("dds", namespace, domain)
    writer = estop_writer(peer, namespace)
    b.close()
    wait_for(lambda: not writer.get_matched_subscriptions(), "the bridge to leave")
    with pytest.raises(RosBridgeError, match="closed"):
        b.publish_operating_state("DISABLED", False, False, STAMP_NS)
    b.close()  # idempotent


# -------------------------------------------------------------------- registry
def test_rclpy_backend_fails_cleanly_without_ros2() -> None:
    if importlib.util.find_spec("rclpy") is not None:
        pytest.skip("rclpy is installed here")
    with pytest.raises(RosBridgeError, match="'rclpy'"):
        open_bridge("rclpy")


def test_auto_picks_dds_without_rclpy(domain) -> None:
    if importlib.util.find_spec("rclpy") is not None:
        pytest.skip("rclpy is installed here")
    with open_bridge("auto", "auto_ns", domain) as b:
        assert isinstance(b, DdsBridge)


def test_unknown_backend_and_bad_namespace_are_named() -> None:
    with pytest.raises(RosBridgeError, match=r"'ros1'.*dds"):
        open_bridge("ros1")
    with pytest.raises(ConfigError, match="'/arm/'"):
        open_bridge("none", "/arm/")
    with pytest.raises(ConfigError, match="domain_id"):
        open_bridge("dds", "arm", 999)


def test_none_backend_validates_and_publishes_nothing() -> None:
    assert BACKENDS["none"] == ("robot_side.ros.interface", "NullBridge")
    b = open_bridge("none", "arm")
    assert isinstance(b, NullBridge)
    b.publish_operating_state("ENABLED", True, False, STAMP_NS)
    with pytest.raises(RosMessageError):
        b.publish_operating_state("BOGUS", True, False, STAMP_NS)
    assert b.poll_estop() is False
    b.close()


# ---------------------------------------------------------------- ROS 2 launch
LAUNCH = Path(__file__).resolve().parents[2] / "launch"


def test_launch_file_is_valid_python_running_the_rclpy_backend() -> None:
    source = (LAUNCH / "robot_side.launch.py").read_text()
    compile(source, "robot_side.launch.py", "exec")
    assert "generate_launch_description" in source
    assert '"--ros-backend", "rclpy"' in source
    assert not (LAUNCH / "__init__.py").exists()  # `launch` is ROS 2's package name


def test_params_file_is_a_ros2_parameters_file() -> None:
    yaml = pytest.importorskip("ruamel.yaml")
    params = yaml.YAML(typ="safe").load((LAUNCH / "params.yaml").read_text())
    node = params["telesurgery_robot"]["ros__parameters"]
    assert set(node) == {"profile", "namespace", "domain_id", "ros_hz"}
    assert node["profile"].endswith(".toml")
    assert open_bridge("none", node["namespace"]).namespace == node["namespace"]
    assert isinstance(node["domain_id"], int) and node["ros_hz"] > 0


# -------------------------------------------------------------- DDS network config
def test_network_config_xml_binds_interfaces_and_turns_multicast_off_with_peers() -> None:
    from robot_side.ros.ddsconfig import config_xml, effective_interfaces

    assert config_xml((), ()) is None
    xml = config_xml(("lo", "10.0.0.5"), ("10.0.0.7",))
    assert xml is not None
    assert '<NetworkInterface name="lo"/>' in xml
    assert '<NetworkInterface address="10.0.0.5"/>' in xml
    assert "<AllowMulticast>false</AllowMulticast>" in xml and '<Peer Address="10.0.0.7"/>' in xml
    # The command side left unconfigured stays on this machine.
    assert effective_interfaces((), (), command=True) == ("lo",)
    assert effective_interfaces((), (), command=False) == ()
    assert effective_interfaces((), ("10.0.0.7",), command=True) == ()


def test_a_bridge_bound_to_peers_is_found_by_a_peer_listing_it(domain) -> None:
    """Unicast discovery only: both sides list each other (here: this machine).

    Its own domain: cyclonedds configures a domain once per process, and this
    module's other participants already use ``domain`` with the default config.
    """
    from robot_side.ros.ddsconfig import config_xml

    domain = 201 + domain % 30
    namespace = f"peers_{random.randrange(16**6):06x}"
    peers = ("127.0.0.1",)
    with open_bridge("dds", namespace, domain, interfaces=("lo",), peers=peers) as b:
        assert isinstance(b, DdsBridge)
        script = textwrap.dedent(f"""
            import time
            from cyclonedds.domain import Domain, DomainParticipant
            from cyclonedds.pub import DataWriter
            from cyclonedds.topic import Topic
            from robot_side.ros import msgs
            from robot_side.ros.dds_backend import topic_qos
            from robot_side.ros.topics import ESTOP_TOPIC
            dom = Domain({domain}, {config_xml(("lo",), peers)!r})
            dp = DomainParticipant({domain})
            w = DataWriter(dp, Topic(dp, ESTOP_TOPIC.dds_name({namespace!r}), msgs.Bool),
                           topic_qos(ESTOP_TOPIC))
            deadline = time.monotonic() + {DEADLINE_S}
            while not w.get_matched_subscriptions() and time.monotonic() < deadline:
                time.sleep(0.01)
            w.write(msgs.Bool(data=True))
            w.wait_for_acks(int({DEADLINE_S} * 1e9))
        """)
        proc = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert wait_for(b.poll_estop, "the e-stop over unicast discovery")


def test_security_config_is_refused_when_this_build_lacks_the_plugins(tmp_path) -> None:
    from robot_side.ros.ddsconfig import security_available

    sec = tmp_path / "security.xml"
    sec.write_text("<Security><Authentication/></Security>")
    if security_available():
        pytest.skip("this cyclonedds has DDS Security plugins")
    with pytest.raises(ConfigError, match="no DDS Security plugins"):
        open_bridge("dds", "sec", 1, security_xml=sec)


def test_command_launch_file_and_params_turn_the_command_side_on() -> None:
    yaml = pytest.importorskip("ruamel.yaml")
    source = (LAUNCH / "robot_side_command.launch.py").read_text()
    compile(source, "robot_side_command.launch.py", "exec")
    assert '"params_command.yaml"' in source
    assert '"--ros-command"' in (LAUNCH / "robot_side.launch.py").read_text()
    node = yaml.YAML(typ="safe").load((LAUNCH / "params_command.yaml").read_text())[
        "telesurgery_robot"]["ros__parameters"]
    assert node["command"] is True
    from robot_side.config import RobotConfig
    from telesurgery.config import load

    cfg = load(RobotConfig, LAUNCH.parent / node["profile"])
    assert cfg.ros.command and cfg.control.scale == 1.0
    assert cfg.ros.interfaces == () and cfg.ros.peers == ()  # -> loopback only
