"""The operator's control interface: JSON over HTTP on a UNIX socket (``gdoictl`` is its client).

- :mod:`gdoiserver.control.api`: the twisted.web resource in front of the :class:`KeyServerControl` interface.
- :mod:`gdoiserver.control.server`: :class:`ControlServer`, the service that listens on the socket.
"""

from gdoiserver.control.api import API_PREFIX, ControlError, ControlResource, KeyServerControl, public
from gdoiserver.control.server import ControlServer, ControlSocketError

__all__ = ["API_PREFIX", "ControlError", "ControlResource", "ControlServer", "ControlSocketError", "KeyServerControl",
           "public"]
