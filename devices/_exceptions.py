"""Errors of the device simulator.

    DeviceError             root
    ├── ElectionFileError   an election file that cannot be read or does not hold together
    ├── ProvisionError      keys or registry missing or inconsistent with the election
    └── FleetError          the fleet could not run (broker unreachable, bad options)
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
