"""The IPsec DOI (RFC 2407, DOI 1) as a plugin: Quick Mode exchanges and the IPsec SAs they make.

The plugin answers each Quick Mode a peer starts (exchange 32 whose SA payload is of DOI 1), starts Quick Mode
itself where a policy says ``initiate`` (once we established Phase 1 with that peer), hands every SA to the sink,
and keeps them until they go:

- at the end of their lifetime in seconds, with a Delete sent to the peer (RFC 2408 section 3.15), naming our
  inbound SPI;
- when the peer deletes them: its Delete names *its* inbound SPI, which is our outbound one, and counts only for
  SAs with that same peer;
- when their ISAKMP SA goes (each IPsec SA lives under the ISAKMP SA it was negotiated under here, as in
  strongSwan's IKEv1).

SAs we initiated are rekeyed at ``rekey_margin`` of their lifetime, less a random jitter, by a new Quick Mode
under the same ISAKMP SA; the old one serves on until it expires (strongSwan keeps rekeyed IKEv1 SAs the same
way).  Kilobyte lifetimes are negotiated and passed to the sink: only a data path (the kernel) can count octets.
"""

import attrs

from gdoiserver.codec.constants import DOI, NotifyType, ProtocolID
from gdoiserver.codec.payloads import SA
from gdoiserver.doi import StartPhase2
from gdoiserver.doi.ipsec.policy import IPsecPolicy, PolicyTable
from gdoiserver.doi.ipsec.quick_mode import QUICK_MODE, QuickMode, QuickModeSettings, random_spi
from gdoiserver.doi.ipsec.sa import IPsecSA
from gdoiserver.doi.ipsec.sa_sink import SASink, SinkError
from gdoiserver.exchanges import informational
from gdoiserver.exchanges.effects import CancelTimer, Count, StartTimer
from gdoiserver.exchanges.informational import DeleteReceived
from gdoiserver.exchanges.phase1 import INITIATOR

EXPIRE, REKEY = "expire", "rekey"
_IPSEC_PROTOCOLS = (ProtocolID.IPSEC_AH, ProtocolID.IPSEC_ESP)


@attrs.define(eq=False)
class IPsecDOI:
    """The IPsec DOI plugin; ``sink`` may be None (the SAs are then only kept here)."""

    number = DOI.IPSEC
    name = "IPsec"

    policies: PolicyTable
    settings: QuickModeSettings = QuickModeSettings()
    sink: SASink | None = None
    rekey_jitter: float = 0.05
    #: Established SAs: ISAKMP SA SPI -> {our inbound SPI: IPsecSA}.
    sas: dict = attrs.Factory(dict)
    #: (protocol, SPI) of every inbound SPI handed out and not yet released.
    in_use: set = attrs.Factory(set)
    #: Called with each IPsecSA once established (tools that wait for an SA).
    hooks: list = attrs.Factory(list)
    #: Sink failures met where no effect can carry a Count (``removed`` returns none).
    sink_errors: int = 0

    # --- DOIPlugin ------------------------------------------------------------------------------------------------

    def accepts(self, sa, first) -> bool:
        """Quick Mode whose SA payload is of the IPsec DOI (RFC 2407 section 4.6.1)."""
        return first.exchange_type == QUICK_MODE and any(
            isinstance(p, SA) and p.doi == DOI.IPSEC for p in first.payloads)

    def responder(self, sa, first) -> QuickMode:
        return QuickMode.responder(sa, self.policies, self.settings, first.message_id, allocate_spi=self.allocate_spi)

    def notify_names(self) -> dict[int, str]:
        """RFC 2407 section 4.6.3's status types."""
        return {int(t): t.name for t in (NotifyType.RESPONDER_LIFETIME, NotifyType.REPLAY_STATUS,
                                         NotifyType.INITIAL_CONTACT)}

    # --- starting Quick Mode ----------------------------------------------------------------------------------------

    def allocate_spi(self, protocol: int, rng) -> bytes:
        """A fresh inbound SPI for ``protocol``, unique among those handed out (RFC 4301 section 4.1)."""
        for _ in range(16):
            spi = random_spi(protocol, rng)
            if (protocol, spi) not in self.in_use:
                self.in_use.add((protocol, spi))
                return spi
        raise ValueError("no free SPI after 16 draws")

    def initiator(self, sa, policy: IPsecPolicy, rng, *, replaces: bytes | None = None) -> QuickMode:
        """A Quick Mode that asks the peer of ``sa`` for SAs under ``policy`` (start it with the engine's
        ``start_phase2``)."""
        return QuickMode.initiator(sa, policy, self.settings, informational.message_id(rng),
                                   allocate_spi=self.allocate_spi, replaces=replaces)

    # --- StatefulDOI hooks --------------------------------------------------------------------------------------

    def phase1_established(self, sa, now: float, rng) -> list:
        """Start Quick Mode for each policy of this peer that says ``initiate``, under an SA we initiated."""
        if sa.role != INITIATOR:
            return []
        return [StartPhase2(self.initiator(sa, p, rng)) for p in self.policies.for_peer(sa) if p.initiate]

    def established(self, sa, machine, result: IPsecSA, now: float, rng) -> list:
        self.sas.setdefault(sa.spi, {})[result.spi_in] = result
        self._release(machine, keep=(result.protocol, result.spi_in))
        effects = [Count("ipsec_sa_installed"), *self._to_sink("installed", result, now)]
        effects.append(StartTimer(_key(EXPIRE, result), result.lifetime.seconds))
        policy = self.policies.by_name(result.policy)
        if result.role == INITIATOR and policy is not None and policy.rekey_margin > 0:
            u = int.from_bytes(rng(4), "big") / (1 << 32)
            fraction = max(policy.rekey_margin - self.rekey_jitter * u, 0.01)
            effects.append(StartTimer(_key(REKEY, result), result.lifetime.seconds * fraction))
        for hook in self.hooks:
            hook(result)
        return effects

    def failed(self, sa, machine, notify, reason: str, now: float, rng) -> list:
        self._release(machine)
        return []

    def timer(self, sa, key: str, now: float, rng) -> list:
        kind, _, spi_hex = key.partition(":")
        ipsec = self.sas.get(sa.spi, {}).get(bytes.fromhex(spi_hex))
        if ipsec is None:
            return []
        if kind == EXPIRE:
            self._forget(sa.spi, ipsec)
            delete = informational.send(sa, [informational.delete_ipsec(sa, ipsec.protocol, [ipsec.spi_in])], rng)
            return [Count("ipsec_sa_expired"), CancelTimer(_key(REKEY, ipsec)), delete,
                    *self._to_sink("removed", ipsec, "lifetime over", now)]
        if kind == REKEY:
            policy = self.policies.by_name(ipsec.policy)
            if policy is None:
                return []
            return [Count("ipsec_sa_rekey"), StartPhase2(self.initiator(sa, policy, rng, replaces=ipsec.spi_in))]
        return []

    def informational(self, sa, item, now: float, rng) -> list:
        """A Delete of AH or ESP SAs from the peer: ours with that peer whose outbound SPI it names go."""
        if not isinstance(item, DeleteReceived) or item.protocol_id not in _IPSEC_PROTOCOLS:
            return []
        effects = []
        for owner, table in list(self.sas.items()):
            for ipsec in list(table.values()):
                if (ipsec.protocol == item.protocol_id and ipsec.spi_out in item.spis
                        and ipsec.peer[0] == sa.peer[0]):
                    self._forget(owner, ipsec)
                    effects += [Count("ipsec_sa_deleted_by_peer"), CancelTimer(_key(EXPIRE, ipsec)),
                                CancelTimer(_key(REKEY, ipsec)),
                                *self._to_sink("removed", ipsec, "deleted by the peer", now)]
        return effects

    def removed(self, sa, reason: str, now: float) -> None:
        for ipsec in list(self.sas.get(sa.spi, {}).values()):
            self._forget(sa.spi, ipsec)
            try:
                if self.sink is not None:
                    self.sink.removed(ipsec, f"ISAKMP SA gone: {reason}", now)
            except SinkError:
                self.sink_errors += 1  # ``removed`` returns no effects, so the count lives here
        self.sas.pop(sa.spi, None)

    # --- helpers --------------------------------------------------------------------------------------------------

    def _forget(self, owner: bytes, ipsec: IPsecSA) -> None:
        table = self.sas.get(owner, {})
        table.pop(ipsec.spi_in, None)
        if not table:
            self.sas.pop(owner, None)
        self.in_use.discard((ipsec.protocol, ipsec.spi_in))

    def _release(self, machine, keep: tuple | None = None) -> None:
        """Free the SPIs ``machine`` took but does not use (all of them if it failed)."""
        for held in getattr(machine, "allocated", {}).items():
            if held != keep:
                self.in_use.discard(held)

    def _to_sink(self, event: str, ipsec: IPsecSA, *args) -> list:
        if self.sink is None:
            return []
        try:
            getattr(self.sink, event)(ipsec, *args)
        except SinkError:
            return [Count("ipsec_sink_error")]
        return []

    def all_sas(self) -> list[IPsecSA]:
        return [ipsec for table in self.sas.values() for ipsec in table.values()]


def _key(kind: str, ipsec: IPsecSA) -> str:
    return f"{kind}:{ipsec.spi_in.hex()}"


def from_config(config, source: str = "<config>") -> IPsecDOI:
    """The plugin a loaded configuration describes: ``[[ipsec.policies]]``, the sinks of ``[ipsec]`` and the
    retransmission settings of ``[ike]``.  A PFS group 2 or 5 without ``security.allow_weak_dh_groups`` is a
    :class:`~gdoiserver.config.ConfigError`."""
    from gdoiserver.config import ConfigError
    from gdoiserver.doi.ipsec.config import ipsec_config
    from gdoiserver.doi.ipsec.proposals import WEAK_GROUPS
    from gdoiserver.doi.ipsec.sa_sink import sink_for

    section = ipsec_config(config)
    allow_weak = config.security.allow_weak_dh_groups
    for i, p in enumerate(section.policies):
        for j, suite in enumerate(p.proposals):
            if suite.group in WEAK_GROUPS and not allow_weak:
                raise ConfigError(source, f"ipsec.policies[{i}].proposals[{j}]",
                                  f"{suite.name()} uses MODP group {suite.group}, which needs "
                                  "security.allow_weak_dh_groups = true (Logjam)")
    ike = config.ike
    settings = QuickModeSettings(ike.retransmit_initial, ike.retransmit_tries, ike.exchange_timeout, allow_weak)
    return IPsecDOI(PolicyTable(section.ipsec_policies()), settings, sink_for(section))
