"""Smart-servo arms: Dynamixel Protocol 2.0 and Feetech STS buses.

``wire`` and ``model`` are the public protocol specifications written out for
the emulator (``emulator``, ``telesurgery servo-sim``); the backends
(``dynamixel``, ``feetech``) drive real or emulated buses through the vendors'
SDKs, so each end of the bus is checked by code written independently of it.
"""
