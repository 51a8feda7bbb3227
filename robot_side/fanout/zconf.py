"""Zenoh session configurations: the fan-out (router or client) and a watcher.

Access control (Zenoh's ACL, subjects by TLS certificate common name) is on
whenever TLS is: default deny; the robot may publish under its own prefix; an
observer may subscribe to the robot's telemetry, events and video and declare
its own liveliness token, and nothing else (it cannot publish a fake telemetry
stream to the other watchers). Without TLS the endpoints are loopback only
(``FanoutConfig`` refuses anything else), so file and host access stand in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import zenoh

from robot_side.fanout import keys
from robot_side.fanout.config import FanoutConfig


def _base(mode: str, listen: tuple[str, ...], connect: tuple[str, ...]) -> zenoh.Config:
    conf = zenoh.Config()
    conf.insert_json5("mode", json.dumps(mode))
    conf.insert_json5("listen/endpoints", json.dumps(list(listen)))
    conf.insert_json5("connect/endpoints", json.dumps(list(connect)))
    # Never discover or gossip on the hospital LAN: routers are configured, not found.
    conf.insert_json5("scouting/multicast/enabled", "false")
    conf.insert_json5("scouting/gossip/enabled", "false")
    return conf


def _tls(conf: zenoh.Config, ca: Path, cert: Path | None, key: Path | None,
         side: str) -> None:
    tls: dict[str, Any] = {"root_ca_certificate": str(ca), "enable_mtls": True}
    if cert is not None and key is not None:
        tls[f"{side}_certificate"] = str(cert)
        tls[f"{side}_private_key"] = str(key)
    conf.insert_json5("transport/link/tls", json.dumps(tls))


def access_control(robot: str, observer_cns: tuple[str, ...], robot_cn: str) -> dict[str, Any]:
    """Zenoh ACL: who may do what on which key expressions of this robot."""
    prefix = f"{keys.PREFIX}/{robot}"
    watch_keys = [keys.telemetry(robot), keys.events(robot), keys.video(robot),
                  keys.strokes(robot)]
    rules: list[dict[str, Any]] = [
        {"id": "observer-in", "permission": "allow", "flows": ["ingress"],
         "messages": ["declare_subscriber"], "key_exprs": watch_keys},
        {"id": "observer-token", "permission": "allow", "flows": ["ingress"],
         "messages": ["liveliness_token"], "key_exprs": [keys.observers(robot) + "/*"]},
        {"id": "observer-out", "permission": "allow", "flows": ["egress"],
         "messages": ["put"], "key_exprs": watch_keys},
        {"id": "robot", "permission": "allow", "flows": ["ingress", "egress"],
         "messages": ["put", "declare_subscriber", "liveliness_token",
                      "declare_liveliness_subscriber", "liveliness_query", "reply"],
         "key_exprs": [prefix, prefix + "/**"]},
    ]
    subjects: list[dict[str, Any]] = [{"id": "robot", "cert_common_names": [robot_cn]}]
    policies: list[dict[str, Any]] = [{"rules": ["robot"], "subjects": ["robot"]}]
    if observer_cns:
        subjects.append({"id": "observers", "cert_common_names": list(observer_cns)})
        policies.append({"rules": ["observer-in", "observer-token", "observer-out"],
                         "subjects": ["observers"]})
    return {"enabled": True, "default_permission": "deny", "rules": rules,
            "subjects": subjects, "policies": policies}


def fanout_config(cfg: FanoutConfig) -> zenoh.Config:
    if cfg.router:
        conf = _base("router", cfg.listen, cfg.connect)
    else:
        conf = _base("client", (), cfg.connect)
    t = cfg.tls
    if t.ca is not None:
        _tls(conf, t.ca, t.cert, t.key, "listen" if cfg.router else "connect")
        if cfg.router:
            conf.insert_json5("access_control", json.dumps(
                access_control(cfg.robot, t.observers, t.robot_cn)))
    return conf


def watcher_config(connect: tuple[str, ...], ca: Path | None = None,
                   cert: Path | None = None, key: Path | None = None) -> zenoh.Config:
    """A watcher is a Zenoh client of one or more routers (its own site's first)."""
    conf = _base("client", (), connect)
    if ca is not None:
        _tls(conf, ca, cert, key, "connect")
    return conf
