"""What one Quick Mode establishes: a pair of IPsec SAs (inbound and outbound) of one protocol, as a value.

:meth:`IPsecSA.record` is the form the SA sinks write: SPIs, selectors, algorithms, mode and lifetimes, and the
keys only when asked (a debug option).
"""

import attrs

from gdoiserver.doi.ipsec.keymat import DirectionKeys
from gdoiserver.doi.ipsec.proposals import ENCAPSULATIONS, GROUP_NAMES, Lifetime, Suite
from gdoiserver.doi.ipsec.selectors import Selector
from gdoiserver.exchanges.effects import Address


@attrs.frozen
class IPsecSA:
    """Both directions of one negotiated SA.  ``spi_in`` is ours (the peer sends with it), ``spi_out`` the peer's.

    ``local``/``peer`` are the IPsec endpoints (the ISAKMP SA's addresses, ports included for UDP encapsulation);
    ``replaces`` is the inbound SPI of the SA this one rekeys, if any.
    """

    isakmp_spi: bytes
    role: str
    message_id: int
    policy: str
    suite: Suite
    encapsulation: int
    spi_in: bytes
    spi_out: bytes
    local_selector: Selector
    remote_selector: Selector
    local: Address
    peer: Address
    lifetime: Lifetime
    established_at: float
    keys_in: DirectionKeys = attrs.field(repr=False)
    keys_out: DirectionKeys = attrs.field(repr=False)
    nat_oa: tuple[str, str] | None = None
    replaces: bytes | None = None

    @property
    def protocol(self) -> int:
        return self.suite.protocol

    @property
    def mode(self) -> str:
        return ENCAPSULATIONS[self.encapsulation][0]

    @property
    def udp_encapsulated(self) -> bool:
        return ENCAPSULATIONS[self.encapsulation][1]

    @property
    def expires_at(self) -> float:
        return self.established_at + self.lifetime.seconds

    def record(self, *, keys: bool = False) -> dict:
        """A JSON-ready description; ``keys`` adds the key material in hex (debug only)."""
        suite = self.suite
        out = {
            "protocol": suite.protocol_name,
            "spi_in": self.spi_in.hex(),
            "spi_out": self.spi_out.hex(),
            "role": self.role,
            "isakmp_sa": self.isakmp_spi.hex(),
            "message_id": self.message_id,
            "policy": self.policy,
            "proposal": suite.name(),
            "encryption": None if suite.cipher is None else {"name": suite.cipher.rfc_name,
                                                            "key_bits": suite.key_bits},
            "integrity": None if suite.integrity is None else suite.integrity.rfc_name,
            "pfs_group": None if suite.group is None else GROUP_NAMES.get(suite.group, suite.group),
            "mode": self.mode,
            "udp_encapsulation": self.udp_encapsulated,
            "local": {"address": self.local[0], "port": self.local[1]},
            "peer": {"address": self.peer[0], "port": self.peer[1]},
            "local_selector": str(self.local_selector),
            "remote_selector": str(self.remote_selector),
            "lifetime": {"seconds": self.lifetime.seconds, "kilobytes": self.lifetime.kilobytes},
            "established_at": self.established_at,
            "expires_at": self.expires_at,
        }
        if self.nat_oa is not None:
            out["nat_oa"] = {"initiator": self.nat_oa[0], "responder": self.nat_oa[1]}
        if self.replaces is not None:
            out["replaces"] = self.replaces.hex()
        if keys:
            out["keys"] = {
                direction: {"encryption": k.encryption.hex(), "integrity": k.integrity.hex()}
                for direction, k in (("in", self.keys_in), ("out", self.keys_out))
            }
        return out
