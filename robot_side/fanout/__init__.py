"""Observers at scale: the robot publishes once into a Zenoh router, observers subscribe there.

A separate process (``process.py``) reads the robot's local observer feed and
video mirror and puts every message once into Zenoh; any number of watchers
(``telesurgery watch``, other sites' routers) subscribe through the router and
never reach the control process. ``docs/architecture.md`` ("Observers, fan-out
and multi-site") describes the deployment.
"""
