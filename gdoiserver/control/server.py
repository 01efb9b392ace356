"""The control socket: :class:`ControlServer` serves the control API on a UNIX socket only the operator can open.

The socket file is made with mode 0600 (under a umask of 0177, so that it is never open to others, not even for
the moment between bind and chmod); a directory we make for it gets mode 0700.  A socket file left by a dead process
(nobody accepts on it) is replaced; a live one is an error naming it, as is a path that is not a socket.
"""

import os
import socket
import stat
import sys

from twisted.application.service import Service
from twisted.internet import tcp, unix
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web import server

from gdoiserver.control.api import ControlResource, KeyServerControl


class ControlSocketError(Exception):
    """The control socket cannot be made: the message names the path and the reason."""


def _in_use(path: str) -> bool:
    """Whether a process accepts connections on the UNIX socket at ``path`` (False: a stale socket file)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as e:
        raise ControlSocketError(f"control socket {path}: cannot tell whether it is in use: "
                                 f"{e.strerror or e}") from None
    finally:
        probe.close()


def prepare_socket_path(path: str) -> None:
    """Make ``path`` ready to bind: its directory made (mode 0700) if missing, a stale socket file removed."""
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=0o700)
            os.chmod(directory, 0o700)  # makedirs' mode passes through the umask
        except OSError as e:
            raise ControlSocketError(f"control socket {path}: cannot make the directory {directory}: "
                                     f"{e.strerror or e}") from None
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ControlSocketError(f"control socket {path}: {e.strerror or e}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlSocketError(f"control socket {path}: the path exists and is not a socket: remove it or set "
                                 "control.socket")
    if _in_use(path):
        raise ControlSocketError(f"control socket {path} is in use by a running process (another gdoiserver?): stop "
                                 "it or set control.socket")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ControlSocketError(f"control socket {path}: cannot remove the stale socket: {e.strerror or e}") from None


class _SocketPort(unix.Port):
    """A listening UNIX socket that removes its file when it stops, and stops even when the file cannot be removed
    (privileges dropped since it was made): twisted's own port would never fire stopListening's Deferred then."""

    log = Logger()

    def connectionLost(self, reason):
        try:
            os.unlink(self._bindPath)
        except OSError as e:
            self.log.warn("control socket {path} not removed: {error}", path=os.fsdecode(self._bindPath),
                          error=e.strerror or str(e))
        tcp.Port.connectionLost(self, reason)


class ControlServer(Service):
    """Serves the control API over ``control`` (a :class:`KeyServerControl`) on the UNIX socket ``path``.

    The socket is bound in ``privilegedStartService`` (as twistd's UDP listeners are, before privileges drop) and
    removed when the service stops.  A path that cannot be used raises :class:`ControlSocketError`; with
    ``exit_on_error`` (for twistd) it ends the process with one line on stderr and status EX_UNAVAILABLE (69).
    """

    log = Logger()
    name = "control"

    def __init__(self, path: str, control: KeyServerControl, reactor=None, *, exit_on_error: bool = False):
        self.path = path
        self.control = control
        self.exit_on_error = exit_on_error
        self.port = None
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.site = server.Site(ControlResource(control))
        self.site.noisy = False
        self.site.displayTracebacks = False
        self.site.log = lambda request: None  # the API logs what it does; no access log of each request

    def privilegedStartService(self):
        super().privilegedStartService()
        if self.port is None:
            self.listen()

    def startService(self):
        super().startService()
        if self.port is None:
            self.listen()

    def listen(self) -> None:
        try:
            prepare_socket_path(self.path)
            port = _SocketPort(self.path, self.site, mode=0o600, reactor=self.reactor, wantPID=False)
            old = os.umask(0o177)
            try:
                port.startListening()
            finally:
                os.umask(old)
        except ControlSocketError as e:
            self._fail(str(e))
        except CannotListenError as e:
            if self.site.numPorts:
                self.site.doStop()  # the port started the factory before its bind failed
            error = e.socketError
            self._fail(f"control socket {self.path}: cannot listen: {getattr(error, 'strerror', None) or error}")
        self.port = port
        self.log.info("control socket listening on {path} (mode 0600)", path=self.path)

    def _fail(self, line: str):
        if not self.exit_on_error:
            raise ControlSocketError(line)
        self.log.critical("{line}", line=line)
        print(f"gdoi: {line}", file=sys.stderr)
        raise SystemExit(os.EX_UNAVAILABLE)

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        return None if port is None else port.stopListening()  # the port removes the socket file
