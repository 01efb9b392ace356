"""The key server as a Twisted service tree: one UDP listener per ``[[server.listen]]`` entry."""

from collections import Counter

from twisted.application.internet import UDPServer
from twisted.application.service import MultiService
from twisted.logger import Logger

from gdoiserver import __version__
from gdoiserver.config import Config
from gdoiserver.net.protocol import Dispatcher, ISAKMPProtocol, format_address


class GDOIService(MultiService):
    """Binds every configured address (IPv4 or IPv6) and feeds what arrives to :class:`ISAKMPProtocol`.

    The reactor is given, not imported.  ``counters`` is shared by every listener.
    """

    log = Logger()

    def __init__(self, config: Config, reactor, dispatcher: Dispatcher | None = None, counters: Counter | None = None):
        super().__init__()
        self.config = config
        self.counters = Counter() if counters is None else counters
        self.protocols = []
        size = config.limits.max_datagram_size
        for listen in config.server.listen:
            protocol = ISAKMPProtocol(self.counters, dispatcher, size)
            self.protocols.append(protocol)
            # One octet more than the limit, so that a longer datagram is seen whole enough to be counted as oversize
            # rather than arriving truncated.
            server = UDPServer(listen.port, protocol, interface=listen.address, maxPacketSize=size + 1, reactor=reactor)
            server.setServiceParent(self)

    def startService(self):
        config = self.config
        self.log.info(
            "gdoiserver {version} starting: {count} listen addresses ({addresses}), 0 groups (group policy is not"
            " configurable yet)",
            version=__version__, count=len(config.server.listen),
            addresses=", ".join(format_address(x.address, x.port) for x in config.server.listen),
        )
        if config.security.allow_weak_dh_groups:
            self.log.warn("security.allow_weak_dh_groups is on: peers may use MODP groups 1, 2 and 5 (under 2048 bits)")
        if config.security.allow_legacy_3des:
            self.log.warn("security.allow_legacy_3des is on: peers may use 3DES (64-bit blocks)")
        if config.keylog.path is not None:
            self.log.warn("keylog.path is set: secret keys will be written to {path}", path=config.keylog.path)
        super().startService()

    def addresses(self) -> list:
        """The bound addresses (IPv4Address/IPv6Address) of the running listeners, e.g. to learn port 0's pick."""
        return [p.transport.getHost() for p in self.protocols if p.transport is not None]
