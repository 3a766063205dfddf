"""Errors of the device simulator.

    DeviceError             root
    ├── ElectionFileError   an election file that cannot be read or does not hold together
    ├── ProvisionError      keys or registry missing or inconsistent with the election
    ├── FleetError          the fleet could not run (broker unreachable, bad options)
    │   ├── ConnectionFailed    an MQTT connection (devices/connection.py) failed or was lost
    │   │   └── ConnectRefused  the broker answered CONNECT with a non-zero return code
    │   └── MetricsError        the --metrics-port server could not start (port taken, ...)
    └── StateError          the device state store (--state-dir) cannot be read or written
        └── StateMismatch   the stored state would make a device send a different batch for a
                            seq it already sent (other election, seed, batch count or key)
"""

from __future__ import annotations


class DeviceError(Exception):
    """Root of the devices package's errors."""


class ElectionFileError(DeviceError):
    pass


class ProvisionError(DeviceError):
    pass


class FleetError(DeviceError):
    pass


class StateError(DeviceError):
    pass


class StateMismatch(StateError):
    pass


class ConnectionFailed(FleetError):
    """An MQTT connection could not be made, was lost, or timed out waiting for the broker.

    ``cause``: a short word for counting failed connects by cause (``timeout``, an errno name
    such as ``ECONNREFUSED``, ``refused`` by CONNACK, or ``lost`` before CONNACK)."""

    def __init__(self, message: str, cause: str = "lost") -> None:
        super().__init__(message)
        self.cause = cause


class ConnectRefused(ConnectionFailed):
    """The broker refused CONNECT (CONNACK return code != 0)."""


class MetricsError(FleetError):
    """The metrics endpoint (devices/metrics.py) could not be served."""
