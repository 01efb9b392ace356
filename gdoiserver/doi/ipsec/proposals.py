"""Quick Mode SA payloads (RFC 2408 sections 3.4-3.6, RFC 2407 sections 4.4-4.6.1): suites, offers and choices.

A :class:`Suite` is one protocol with its algorithms and PFS group, named as strongSwan's ``esp_proposals`` name
them: ``aes256-sha256``, ``aes128gcm16-ecp256``, ``aes128ctr-sha1-modp2048``, ``ah-sha256``.  We offer each suite
as a Proposal payload of its own (numbers 1, 2, ...: RFC 2408 section 4.2 reads different numbers as "or") with
one Transform, carrying our inbound SPI.  A responder picks the first of *its* suites that the peer offered (the
same rule as Phase 1), echoes the peer's Transform as sent in a Proposal with the peer's number and *our* SPI, and
tells a shorter lifetime with RESPONDER-LIFETIME (RFC 2407 section 4.6.3.1).

Attributes (RFC 2407 section 4.5): SA Life Type/Duration in seconds and kilobytes (none given: 28800 seconds and no
kilobyte limit), Group Description (PFS), Encapsulation Mode (tunnel, transport, and RFC 3947's
UDP-Encapsulated-Tunnel/-Transport, 3 and 4; the draft numbers 61443/61444 are read as those), Authentication
Algorithm and Key Length.  A Transform with any other attribute, or one repeated, is not read and so never chosen.
Bundles (several Proposal payloads under one number, such as AH with ESP) are not supported: they are passed over.
"""

import attrs

from gdoiserver.codec.attributes import Attribute, decode_attributes, encode_attributes
from gdoiserver.codec.constants import (
    DOI,
    EncapsulationMode,
    IPsecAttr,
    LifeType,
    NotifyType,
    ProtocolID,
    Situation,
)
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.payloads import SA, Notification, Proposal, Transform
from gdoiserver.doi.ipsec.algorithms import (
    AES_KEY_BITS,
    CIPHERS,
    CIPHERS_BY_NAME,
    INTEGRITIES,
    INTEGRITIES_BY_AH,
    INTEGRITIES_BY_NAME,
    Cipher,
    Integrity,
)

#: RFC 2407 section 4.5: the lifetime when none is given.
DEFAULT_LIFETIME = 28800
#: A unit that RESPONDER-LIFETIME leaves out is not shortened.
UNLIMITED_SECONDS = 0xFFFFFFFF
#: PFS group names as strongSwan writes them (RFC 3526, RFC 5903 numbers).
GROUPS = {"modp1024": 2, "modp1536": 5, "modp2048": 14, "modp3072": 15, "modp4096": 16, "ecp256": 19,
          "ecp384": 20, "ecp521": 21}
GROUP_NAMES = {v: k for k, v in GROUPS.items()}
WEAK_GROUPS = frozenset({2, 5})
TUNNEL, TRANSPORT = "tunnel", "transport"
#: Encapsulation Mode values: (mode, UDP-encapsulated) for each (RFC 2407 section 4.5; RFC 3947 section 5.1;
#: draft-ietf-ipsec-nat-t-ike-02's 61443/61444, which older peers still send).
ENCAPSULATIONS = {
    EncapsulationMode.TUNNEL: (TUNNEL, False),
    EncapsulationMode.TRANSPORT: (TRANSPORT, False),
    EncapsulationMode.UDP_ENCAPSULATED_TUNNEL: (TUNNEL, True),
    EncapsulationMode.UDP_ENCAPSULATED_TRANSPORT: (TRANSPORT, True),
    61443: (TUNNEL, True),
    61444: (TRANSPORT, True),
}
_ATTRIBUTES = {IPsecAttr.GROUP_DESCRIPTION, IPsecAttr.ENCAPSULATION_MODE, IPsecAttr.AUTHENTICATION_ALGORITHM,
               IPsecAttr.KEY_LENGTH}


class NoProposalChosen(ValueError):
    """Nothing offered is acceptable (NO-PROPOSAL-CHOSEN, RFC 2408 section 3.14.1)."""


def encapsulation_mode(mode: str, udp: bool) -> int:
    """The Encapsulation Mode value for ``mode`` ("tunnel"/"transport"), UDP-encapsulated or not (RFC 3947 5.1)."""
    if mode == TUNNEL:
        return EncapsulationMode.UDP_ENCAPSULATED_TUNNEL if udp else EncapsulationMode.TUNNEL
    return EncapsulationMode.UDP_ENCAPSULATED_TRANSPORT if udp else EncapsulationMode.TRANSPORT


@attrs.frozen
class Suite:
    """One protocol's algorithms and PFS group.  ESP has a ``cipher`` (and an ``integrity`` unless the cipher is
    an AEAD); AH has an ``integrity`` only.  ``group`` is the PFS Diffie-Hellman group, None without PFS."""

    protocol: int
    cipher: Cipher | None = None
    key_bits: int | None = None
    integrity: Integrity | None = None
    group: int | None = None

    def __attrs_post_init__(self):
        if self.protocol == ProtocolID.IPSEC_ESP:
            if self.cipher is None or self.key_bits not in AES_KEY_BITS:
                raise ValueError("ESP needs an AES cipher with a 128, 192 or 256-bit key")
            if self.cipher.aead == (self.integrity is not None):
                raise ValueError("ESP needs an integrity algorithm, except with AES-GCM, which must have none")
        elif self.protocol == ProtocolID.IPSEC_AH:
            if self.cipher is not None or self.integrity is None:
                raise ValueError("AH has an integrity algorithm and no cipher")
        else:
            raise ValueError(f"protocol {self.protocol} is neither ESP nor AH")

    @property
    def protocol_name(self) -> str:
        return "esp" if self.protocol == ProtocolID.IPSEC_ESP else "ah"

    @property
    def transform_id(self) -> int:
        return self.cipher.transform_id if self.protocol == ProtocolID.IPSEC_ESP else self.integrity.ah_transform_id

    def name(self) -> str:
        parts = [] if self.protocol == ProtocolID.IPSEC_ESP else ["ah"]
        if self.cipher is not None:
            parts.append(f"aes{self.key_bits}{self.cipher.name[3:]}")  # aes256, aes128ctr, aes128gcm16
        if self.integrity is not None:
            parts.append(self.integrity.name)
        if self.group is not None:
            parts.append(GROUP_NAMES.get(self.group, f"group{self.group}"))
        return "-".join(parts)

    @classmethod
    def parse(cls, text: str) -> "Suite":
        """A suite from its name (module notes); ValueError says what is wrong."""
        words = text.strip().lower().split("-")
        protocol = ProtocolID.IPSEC_ESP
        if words[0] in ("esp", "ah"):
            protocol = ProtocolID.IPSEC_AH if words.pop(0) == "ah" else protocol
        cipher = key_bits = integrity = group = None
        if protocol == ProtocolID.IPSEC_ESP and words:
            cipher, key_bits = _cipher(words.pop(0))
        if words and words[0] in INTEGRITIES_BY_NAME:
            integrity = INTEGRITIES_BY_NAME[words.pop(0)]
        if words and words[0] in GROUPS:
            group = GROUPS[words.pop(0)]
        if words:
            raise ValueError(f"{text!r}: {'-'.join(words)!r} is not an integrity algorithm or a DH group we know")
        return cls(protocol, cipher, key_bits, integrity, group)

    def keymat_sizes(self) -> tuple[int, int]:
        """(cipher octets, integrity octets) of KEYMAT per direction (module notes of algorithms)."""
        enc = self.cipher.keymat_size(self.key_bits) if self.cipher else 0
        return enc, self.integrity.key_size if self.integrity else 0


def _cipher(word: str) -> tuple[Cipher, int]:
    """"aes256" -> AES-CBC 256, "aes128ctr" -> AES-CTR, "aes128gcm16" -> AES-GCM-16 (strongSwan's names)."""
    if word.startswith("aes") and word[3:6].isdigit():
        bits, kind = int(word[3:6]), word[6:]
        name = "aes" + kind if kind else "aes"
        if name in CIPHERS_BY_NAME and bits in AES_KEY_BITS:
            return CIPHERS_BY_NAME[name], bits
    raise ValueError(f"cipher {word!r}: expected aes128, aes256ctr, aes128gcm16 and the like")


@attrs.frozen
class Lifetime:
    """SA lifetime in seconds and kilobytes; 0 kilobytes means no limit."""

    seconds: int = DEFAULT_LIFETIME
    kilobytes: int = 0

    def attributes(self) -> list[Attribute]:
        attributes = [Attribute(IPsecAttr.SA_LIFE_TYPE, int(LifeType.SECONDS)),
                      Attribute.number(IPsecAttr.SA_LIFE_DURATION, self.seconds)]
        if self.kilobytes:
            attributes += [Attribute(IPsecAttr.SA_LIFE_TYPE, int(LifeType.KILOBYTES)),
                           Attribute.number(IPsecAttr.SA_LIFE_DURATION, self.kilobytes)]
        return attributes

    def within(self, limit: "Lifetime") -> "Lifetime":
        """The shorter of the two in each unit (0 kilobytes: no limit)."""
        kb = min(k for k in (self.kilobytes, limit.kilobytes) if k) if self.kilobytes or limit.kilobytes else 0
        return Lifetime(min(self.seconds, limit.seconds), kb)


def read_lifetime(attributes, *, default: Lifetime = Lifetime()) -> Lifetime | None:
    """The Life Type/Duration pairs among ``attributes``; ``default`` for a unit not given; None if they are
    malformed (a Duration without its Type, an unknown Type, a zero Duration)."""
    seconds, kilobytes, life_type = None, None, None
    for a in attributes:
        if a.type == IPsecAttr.SA_LIFE_TYPE:
            life_type = a.as_int()
        elif a.type == IPsecAttr.SA_LIFE_DURATION:
            value = a.as_int()
            if life_type == LifeType.SECONDS and seconds is None and value > 0:
                seconds = value
            elif life_type == LifeType.KILOBYTES and kilobytes is None and value > 0:
                kilobytes = value
            else:
                return None
            life_type = None
    if life_type is not None:
        return None
    return Lifetime(default.seconds if seconds is None else seconds,
                    default.kilobytes if kilobytes is None else kilobytes)


# --- our offer -----------------------------------------------------------------------------------------------------


def transform_attributes(suite: Suite, lifetime: Lifetime, encapsulation: int) -> tuple[Attribute, ...]:
    """A Transform's attributes for ``suite`` (RFC 2407 section 4.5)."""
    attributes = lifetime.attributes()
    if suite.group is not None:
        attributes.append(Attribute(IPsecAttr.GROUP_DESCRIPTION, suite.group))
    attributes.append(Attribute(IPsecAttr.ENCAPSULATION_MODE, encapsulation))
    if suite.integrity is not None:
        attributes.append(Attribute(IPsecAttr.AUTHENTICATION_ALGORITHM, int(suite.integrity.auth_algorithm)))
    if suite.key_bits is not None:
        attributes.append(Attribute(IPsecAttr.KEY_LENGTH, suite.key_bits))
    return tuple(attributes)


def sa_payload(suites, spis: dict[int, bytes], lifetime: Lifetime, encapsulation: int) -> SA:
    """Our offer: one Proposal per suite, numbered 1, 2, ... in our order, each with our SPI for its protocol."""
    if not suites:
        raise ValueError("no suite to offer")
    proposals = tuple(
        Proposal(i, s.protocol, spis[s.protocol], (Transform(1, s.transform_id,
                                                             transform_attributes(s, lifetime, encapsulation)),))
        for i, s in enumerate(suites, start=1)
    )
    return SA(DOI.IPSEC, Situation.IDENTITY_ONLY, proposals)


# --- reading a peer's transforms -------------------------------------------------------------------------------------


@attrs.frozen
class Offer:
    """One Transform a peer offered, read: the suite, its lifetime and encapsulation, and where it came from."""

    suite: Suite
    lifetime: Lifetime
    encapsulation: int | None  # the Encapsulation Mode value as sent, None if absent
    proposal: Proposal
    transform: Transform

    @property
    def mode(self) -> tuple[str, bool] | None:
        return None if self.encapsulation is None else ENCAPSULATIONS[self.encapsulation]


def read_transform(protocol: int, t: Transform, *, default_lifetime: Lifetime = Lifetime()) -> tuple | None:
    """(suite, lifetime, encapsulation) from one Transform of a Proposal of ``protocol``; None if unreadable."""
    seen: dict[int, int] = {}
    for a in t.attributes:
        if a.type in (IPsecAttr.SA_LIFE_TYPE, IPsecAttr.SA_LIFE_DURATION):
            continue
        if a.type not in _ATTRIBUTES or a.type in seen:
            return None
        seen[a.type] = a.as_int()
    lifetime = read_lifetime(t.attributes, default=default_lifetime)
    encapsulation = seen.get(IPsecAttr.ENCAPSULATION_MODE)
    if lifetime is None or (encapsulation is not None and encapsulation not in ENCAPSULATIONS):
        return None
    integrity = INTEGRITIES.get(seen.get(IPsecAttr.AUTHENTICATION_ALGORITHM))
    key_bits = seen.get(IPsecAttr.KEY_LENGTH)
    try:
        if protocol == ProtocolID.IPSEC_ESP:
            if IPsecAttr.AUTHENTICATION_ALGORITHM in seen and integrity is None:
                return None
            suite = Suite(protocol, CIPHERS.get(t.transform_id), key_bits, integrity,
                          seen.get(IPsecAttr.GROUP_DESCRIPTION))
        elif protocol == ProtocolID.IPSEC_AH:
            ah = INTEGRITIES_BY_AH.get(t.transform_id)
            if ah is None or (integrity is not None and integrity != ah) or key_bits is not None:
                return None  # RFC 2407 section 4.5: AH's Authentication Algorithm must match its transform
            suite = Suite(protocol, None, None, ah, seen.get(IPsecAttr.GROUP_DESCRIPTION))
        else:
            return None
    except ValueError:
        return None
    return suite, lifetime, encapsulation


def offers(sa: SA) -> list[Offer]:
    """Every readable Transform of ``sa``, in the peer's order; bundles are left out (module notes)."""
    numbers: dict[int, int] = {}
    for p in sa.proposals:
        numbers[p.proposal_number] = numbers.get(p.proposal_number, 0) + 1
    out = []
    for p in sa.proposals:
        if numbers[p.proposal_number] > 1 or len(p.spi) != 4:
            continue
        for t in p.transforms:
            read = read_transform(p.protocol_id, t)
            if read is not None:
                out.append(Offer(read[0], read[1], read[2], p, t))
    return out


@attrs.frozen
class Choice:
    """The responder's pick: the offer, our suite, the agreed lifetime and mode, and the SA payload to answer."""

    offer: Offer
    suite: Suite
    lifetime: Lifetime
    encapsulation: int
    reply: SA


def choose(sa: SA, suites, *, lifetime: Lifetime, mode: str, udp: bool, ke_group_ok, spi_for) -> Choice:
    """Pick from the peer's ``sa`` by our order of ``suites`` (raises :class:`NoProposalChosen`).

    ``mode``/``udp`` is the encapsulation we accept (an offer without the attribute takes it); ``ke_group_ok(g)``
    says whether the KE payload the peer sent (or its absence, for None) fits group ``g``; ``spi_for(protocol)``
    gives our inbound SPI.  The agreed lifetime is the shorter of the offer's and ours.
    """
    if sa.doi != DOI.IPSEC:
        raise NoProposalChosen(f"SA of DOI {sa.doi}")
    offered = offers(sa)
    want = encapsulation_mode(mode, udp)
    for ours in suites:
        if not ke_group_ok(ours.group):
            continue
        for offer in offered:
            if offer.suite != ours:
                continue
            if offer.encapsulation is not None and ENCAPSULATIONS[offer.encapsulation] != (mode, udp):
                continue
            encapsulation = want if offer.encapsulation is None else offer.encapsulation
            reply = SA(sa.doi, sa.situation, (Proposal(offer.proposal.proposal_number, offer.proposal.protocol_id,
                                                       spi_for(ours.protocol), (offer.transform,)),))
            return Choice(offer, ours, offer.lifetime.within(lifetime), encapsulation, reply)
    raise NoProposalChosen(f"none of {len(offered)} readable transforms matches our policy for {mode} mode"
                           f"{' (UDP-encapsulated)' if udp else ''}")


def accept_reply(sa: SA, offered: SA) -> tuple[Suite, Lifetime, int, bytes]:
    """The responder's choice (suite, lifetime, encapsulation, its SPI), checked against our ``offered`` SA.

    The reply holds one Proposal with one Transform of a number and protocol we offered (RFC 2408 section 4.2),
    naming a suite of that proposal.  A lifetime it adds or shortens is taken (strongSwan writes its own there).
    """
    if sa.doi != DOI.IPSEC or len(sa.proposals) != 1 or len(sa.proposals[0].transforms) != 1:
        raise NoProposalChosen("the responder's SA must hold one proposal with one transform")
    reply = sa.proposals[0]
    if len(reply.spi) != 4:
        raise NoProposalChosen(f"the responder's SPI has {len(reply.spi)} octets, not 4")
    ours = next((p for p in offered.proposals if p.proposal_number == reply.proposal_number
                 and p.protocol_id == reply.protocol_id), None)
    theirs = read_transform(reply.protocol_id, reply.transforms[0])
    if ours is None or theirs is None:
        raise NoProposalChosen("the responder chose a proposal we did not offer, or one we cannot read")
    for t in ours.transforms:
        mine = read_transform(ours.protocol_id, t)
        if mine is not None and mine[0] == theirs[0] and mine[2] == theirs[2]:
            return mine[0], theirs[1].within(mine[1]), mine[2], reply.spi
    raise NoProposalChosen("the responder's transform is none of those we offered")


def responder_lifetime(notification: Notification) -> Lifetime | None:
    """The lifetime a RESPONDER-LIFETIME notify carries (RFC 2407 section 4.6.3.1), None if it is malformed."""
    if notification.notify_type != NotifyType.RESPONDER_LIFETIME:
        return None
    try:
        attributes = decode_attributes(notification.data, 0, len(notification.data))
    except DecodeError:
        return None
    if any(a.type not in (IPsecAttr.SA_LIFE_TYPE, IPsecAttr.SA_LIFE_DURATION) for a in attributes):
        return None
    return read_lifetime(attributes, default=Lifetime(UNLIMITED_SECONDS, 0))


def responder_lifetime_notify(protocol: int, spi: bytes, lifetime: Lifetime) -> Notification:
    """RESPONDER-LIFETIME with our inbound SPI and the lifetime we keep (RFC 2407 section 4.6.3.1)."""
    return Notification(DOI.IPSEC, protocol, NotifyType.RESPONDER_LIFETIME, spi,
                        encode_attributes(lifetime.attributes()))
