"""The on-site supervision page: its own process, observing the robot node."""
