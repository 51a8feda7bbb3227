"""telesurgery: an edge controller for remote robotic surgery.

This package holds what every process shares (errors, config loading) and the
``telesurgery`` command line. The parts live in ``transport``, ``safety``,
``robot_side`` and ``operator_console``; the HIL rig in ``hil_tests``.
"""

__version__ = "0.1.0"
