"""fieldbox: the on-device runtime of an edge-AI appliance.

Everything in this package runs on the device (and on a developer's host, for
trying things out); nothing in it imports host-only code from ``fieldbox_host``.
"""

__version__ = "0.1.0"
