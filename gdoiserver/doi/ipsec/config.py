"""The ``[ipsec]`` section of the configuration: the IPsec DOI's policies and SA sinks.

    [ipsec]
    sink_path = "/var/lib/gdoiserver/ipsec-sas.jsonl"   # JSON lines, one per SA event (absent: no file)
    debug_keys = false                                 # write the keys there too (debug only!)
    xfrm = false                                       # install the SAs in the Linux kernel (pyroute2)

    [[ipsec.policies]]
    name = "lab"
    peer = "192.0.2.0/24"            # the ISAKMP peer's address: an address, a network or "any"
    peer_id = "gw.example.org"       # and, optionally, its Phase 1 identity
    local = ["10.1.0.0/16"]          # our side's selectors (absent: our ISAKMP address)
    remote = ["10.2.0.0/16[tcp/443]"]  # the peer's (absent: its ISAKMP address)
    proposals = ["aes256-sha256-modp2048", "aes128gcm16-ecp256", "aes256-sha256"]
    mode = "tunnel"                  # or "transport"; UDP encapsulation follows NAT-T
    lifetime = 3600                  # seconds
    lifetime_kilobytes = 0           # 0: no limit
    initiate = false                 # start Quick Mode once our Phase 1 with this peer is up
    rekey_margin = 0.9               # rekey SAs we initiated at this fraction of their lifetime (0: never)

:mod:`gdoiserver.config` reads the table through :func:`ipsec_table`; :func:`ipsec_config` gives the section of
a loaded :class:`~gdoiserver.config.Config`, defaults when it has none.
"""

import attrs

from gdoiserver.config import (
    Invalid,
    array_of,
    boolean,
    integer,
    peer_address,
    setting,
    table,
    text,
)
from gdoiserver.doi.ipsec.policy import IPsecPolicy
from gdoiserver.doi.ipsec.proposals import TRANSPORT, TUNNEL, Lifetime, Suite
from gdoiserver.doi.ipsec.selectors import Selector

DEFAULT_PROPOSALS = ("aes256-sha256-modp2048", "aes128gcm16-ecp256", "aes256-sha256", "aes128gcm16")


def _parsed(kind: str, parse):
    def check(value, key):
        try:
            return parse(value)
        except (ValueError, TypeError, AttributeError) as e:
            raise Invalid(key, f"not a {kind}: {e}") from None

    return check


def _mode(value, key):
    if value not in (TUNNEL, TRANSPORT):
        raise Invalid(key, f"got {value!r}, expected \"tunnel\" or \"transport\"")
    return value


def _fraction(value, key):
    if type(value) not in (int, float) or not 0 <= value < 1:
        raise Invalid(key, f"got {value!r}, expected a number from 0 up to (not including) 1")
    return float(value)


@attrs.frozen
class PolicyConfig:
    """One ``[[ipsec.policies]]`` entry; see the module notes."""

    name: str | None = setting(text, default=None)
    peer: str = setting(peer_address, default="any")
    peer_id: str | None = setting(text, default=None)
    local: tuple[Selector, ...] = setting(array_of(_parsed("selector", Selector.parse)), default=())
    remote: tuple[Selector, ...] = setting(array_of(_parsed("selector", Selector.parse)), default=())
    proposals: tuple[Suite, ...] = setting(
        array_of(_parsed("proposal", Suite.parse), min_items=1, identity=Suite.name),
        factory=lambda: tuple(Suite.parse(p) for p in DEFAULT_PROPOSALS),
    )
    mode: str = setting(_mode, default=TUNNEL)
    lifetime: int = setting(integer(60, 7 * 86400), default=3600)
    lifetime_kilobytes: int = setting(integer(0, 0xFFFFFFFF), default=0)
    initiate: bool = setting(boolean, default=False)
    rekey_margin: float = setting(_fraction, default=0.9)

    def policy(self, default_name: str) -> IPsecPolicy:
        return IPsecPolicy(
            name=self.name or default_name, suites=self.proposals, peer=self.peer, peer_id=self.peer_id,
            local=self.local, remote=self.remote, mode=self.mode,
            lifetime=Lifetime(self.lifetime, self.lifetime_kilobytes), initiate=self.initiate,
            rekey_margin=self.rekey_margin,
        )


@attrs.frozen
class IPsecConfig:
    """The ``[ipsec]`` table; see the module notes."""

    sink_path: str | None = setting(text, default=None)
    debug_keys: bool = setting(boolean, default=False)
    xfrm: bool = setting(boolean, default=False)
    max_exchanges_per_sa: int = setting(integer(1, 1024), default=32)
    policies: tuple[PolicyConfig, ...] = setting(array_of(table(PolicyConfig)), default=())

    def ipsec_policies(self) -> tuple[IPsecPolicy, ...]:
        return tuple(p.policy(f"policies[{i}]") for i, p in enumerate(self.policies))


def ipsec_table(value, key: str) -> IPsecConfig:
    """The check :mod:`gdoiserver.config` applies to ``[ipsec]``."""
    config = table(IPsecConfig)(value, key)
    names: dict[str, int] = {}
    for i, p in enumerate(config.policies):
        name = p.name or f"policies[{i}]"
        if name in names:
            raise Invalid(f"{key}.policies[{i}].name", f"{name!r} duplicates {key}.policies[{names[name]}]")
        names[name] = i
        if p.peer_id is not None and p.peer_id != p.peer_id.strip():
            raise Invalid(f"{key}.policies[{i}].peer_id", "has spaces around it")
    if config.debug_keys and config.sink_path is None:
        raise Invalid(f"{key}.debug_keys", "needs sink_path: the keys are written to that file")
    return config


def ipsec_config(config) -> IPsecConfig:
    """The ``[ipsec]`` section of a loaded configuration, or the defaults."""
    section = getattr(config, "ipsec", None)
    return IPsecConfig() if section is None else section
