"""Phase 1 proposals: our SA payload from a :class:`Phase1Policy`, and the choice from a peer's SA payload.

A Phase 1 SA payload carries one Proposal (protocol ISAKMP) whose Transforms (Transform-Id KEY_IKE) each name one
full suite in SA attributes (RFC 2409 section 5 and appendix A).  The responder returns the one Transform it
chose, as the initiator sent it; it picks by *its own* order of preference (the issue's rule), and answers
NO-PROPOSAL-CHOSEN when nothing matches.

What we implement: AES-CBC with 128, 192 or 256-bit keys (RFC 3602) and 3DES-CBC only with
``allow_legacy_3des``; SHA-1 and SHA2-256/384/512 (RFC 4868), MD5 never; MODP groups 14, 15, 16 and ECP groups
19, 20, 21, MODP 2 and 5 only with ``allow_weak_groups`` (Logjam); pre-shared keys, RSA signatures and ECDSA
(RFC 4754); lifetimes in seconds.  A peer's Life Duration of 0 or none means "no lifetime given": ours applies.
Otherwise the agreed lifetime is the smaller of the two.  Kilobyte lifetimes are read and not enforced.
"""

import attrs

from gdoiserver.codec.attributes import Attribute
from gdoiserver.codec.constants import (
    DOI,
    LifeType,
    OakleyAttr,
    OakleyAuth,
    OakleyEncryption,
    OakleyGroup,
    OakleyHash,
    ProtocolID,
    Situation,
    TransformID,
)
from gdoiserver.codec.payloads import SA, Proposal, Transform
from gdoiserver.exchanges.phase1 import Phase1Policy, Phase1Proposal

AES, TRIPLEDES = OakleyEncryption.AES_CBC, OakleyEncryption.TRIPLEDES_CBC
CIPHERS = {(AES, 128), (AES, 192), (AES, 256), (TRIPLEDES, None)}
HASHES = {OakleyHash.SHA, OakleyHash.SHA2_256, OakleyHash.SHA2_384, OakleyHash.SHA2_512}
STRONG_GROUPS = {OakleyGroup.MODP_2048, OakleyGroup.MODP_3072, OakleyGroup.MODP_4096,
                 OakleyGroup.ECP_256, OakleyGroup.ECP_384, OakleyGroup.ECP_521}
WEAK_GROUPS = {OakleyGroup.MODP_1024, OakleyGroup.MODP_1536}
ECP_GROUPS = {OakleyGroup.ECP_256, OakleyGroup.ECP_384, OakleyGroup.ECP_521}
SIGNATURE_METHODS = {OakleyAuth.RSA_SIGNATURES, OakleyAuth.ECDSA_SHA256_P256, OakleyAuth.ECDSA_SHA384_P384,
                     OakleyAuth.ECDSA_SHA512_P521}
AUTH_METHODS = {OakleyAuth.PRE_SHARED_KEY, *SIGNATURE_METHODS}
#: Group Type attribute values (RFC 2409 appendix A): MODP 1, ECP 2.
_GROUP_TYPE_MODP, _GROUP_TYPE_ECP = 1, 2
#: Attributes a transform may carry once each; Life Type/Life Duration come in pairs (RFC 2409 appendix A).
_SINGLE = {OakleyAttr.ENCRYPTION_ALGORITHM, OakleyAttr.HASH_ALGORITHM, OakleyAttr.AUTHENTICATION_METHOD,
           OakleyAttr.GROUP_DESCRIPTION, OakleyAttr.GROUP_TYPE, OakleyAttr.KEY_LENGTH}


class NoProposalChosen(ValueError):
    """Nothing in the peer's SA payload is acceptable (NO-PROPOSAL-CHOSEN, RFC 2408 section 3.14.1)."""


def is_signature(auth: int) -> bool:
    """Whether an Authentication Method is one of the signature methods we implement."""
    return auth in SIGNATURE_METHODS


def refusal(proposal: Phase1Proposal, policy: Phase1Policy) -> str | None:
    """Why ``policy`` may not use ``proposal`` (a readable reason), or None when it may."""
    key_length = None if proposal.encryption == TRIPLEDES else proposal.key_length
    if (proposal.encryption, key_length) not in CIPHERS:
        return f"cipher {proposal.encryption}/{proposal.key_length} is not supported"
    if proposal.encryption == TRIPLEDES and not policy.allow_legacy_3des:
        return "3DES needs allow_legacy_3des"
    if proposal.hash not in HASHES:
        return f"hash {proposal.hash} is not supported"
    if proposal.group in WEAK_GROUPS:
        if not policy.allow_weak_groups:
            return f"DH group {proposal.group} needs allow_weak_groups (Logjam)"
    elif proposal.group not in STRONG_GROUPS:
        return f"DH group {proposal.group} is not supported"
    if proposal.auth not in AUTH_METHODS:
        return f"authentication method {proposal.auth} is not supported"
    if proposal.lifetime <= 0:
        return "lifetime must be positive"
    return None


def usable(policy: Phase1Policy) -> tuple[Phase1Proposal, ...]:
    """The policy's proposals that it may use, in its order of preference."""
    return tuple(p for p in policy.proposals if refusal(p, policy) is None)


def check_policy(policy: Phase1Policy) -> None:
    """Raise ValueError naming the first proposal the policy lists but may not use (for configuration loaders)."""
    for i, p in enumerate(policy.proposals):
        reason = refusal(p, policy)
        if reason:
            raise ValueError(f"Phase 1 proposal {i + 1}: {reason}")
    if not policy.proposals:
        raise ValueError("no Phase 1 proposal")


# --- our SA payload ------------------------------------------------------------------------------------------------


def transform_attributes(p: Phase1Proposal) -> tuple[Attribute, ...]:
    """The SA attributes of one transform, in the order of RFC 2409 appendix A's list."""
    attributes = [Attribute(OakleyAttr.ENCRYPTION_ALGORITHM, int(p.encryption))]
    if p.encryption != TRIPLEDES and p.key_length is not None:
        attributes.append(Attribute(OakleyAttr.KEY_LENGTH, p.key_length))
    attributes += [
        Attribute(OakleyAttr.HASH_ALGORITHM, int(p.hash)),
        Attribute(OakleyAttr.AUTHENTICATION_METHOD, int(p.auth)),
        Attribute(OakleyAttr.GROUP_DESCRIPTION, int(p.group)),
        Attribute(OakleyAttr.LIFE_TYPE, int(LifeType.SECONDS)),
        Attribute.number(OakleyAttr.LIFE_DURATION, p.lifetime),
    ]
    return tuple(attributes)


def sa_payload(proposals: tuple[Phase1Proposal, ...], doi: int = DOI.IPSEC) -> SA:
    """The initiator's SA: one ISAKMP Proposal with one KEY_IKE Transform per suite (RFC 2409 section 5)."""
    if not proposals:
        raise ValueError("no proposal to offer")
    transforms = tuple(
        Transform(i, TransformID.KEY_IKE, transform_attributes(p)) for i, p in enumerate(proposals, start=1)
    )
    return SA(doi, Situation.IDENTITY_ONLY, (Proposal(1, ProtocolID.ISAKMP, b"", transforms),))


# --- reading a peer's transforms -----------------------------------------------------------------------------------


def read_transform(t: Transform) -> Phase1Proposal | None:
    """The suite a peer's KEY_IKE transform names, lifetime 0 when it gives none; None if we cannot read it.

    A transform with an attribute we do not implement (a PRF, a group given by its prime...), a repeated
    attribute, or a missing one is unreadable, and so never chosen.
    """
    if t.transform_id != TransformID.KEY_IKE:
        return None
    seen: dict[int, int] = {}
    life_type = None
    lifetime = 0
    for a in t.attributes:
        if a.type == OakleyAttr.LIFE_TYPE:
            life_type = a.as_int()
            continue
        if a.type == OakleyAttr.LIFE_DURATION:
            if life_type is None:
                return None  # Life Duration must follow its Life Type (RFC 2409 appendix A)
            if life_type == LifeType.SECONDS:
                lifetime = a.as_int()
            elif life_type != LifeType.KILOBYTES:
                return None
            life_type = None
            continue
        if a.type not in _SINGLE or a.type in seen:
            return None
        seen[a.type] = a.as_int()
    try:
        encryption = seen[OakleyAttr.ENCRYPTION_ALGORITHM]
        hash_ = seen[OakleyAttr.HASH_ALGORITHM]
        auth = seen[OakleyAttr.AUTHENTICATION_METHOD]
        group = seen[OakleyAttr.GROUP_DESCRIPTION]
    except KeyError:
        return None
    group_type = seen.get(OakleyAttr.GROUP_TYPE)
    if group_type is not None and group_type != (_GROUP_TYPE_ECP if group in ECP_GROUPS else _GROUP_TYPE_MODP):
        return None
    key_length = seen.get(OakleyAttr.KEY_LENGTH)
    if encryption == TRIPLEDES:
        if key_length not in (None, 192):
            return None
        key_length = None
    return Phase1Proposal(encryption, key_length, hash_, auth, group, lifetime)


def _same_suite(ours: Phase1Proposal, theirs: Phase1Proposal) -> bool:
    return (ours.encryption, ours.key_length, ours.hash, ours.auth, ours.group) == (
        theirs.encryption,
        theirs.key_length,
        theirs.hash,
        theirs.auth,
        theirs.group,
    )


def agreed(ours: Phase1Proposal, theirs: Phase1Proposal) -> Phase1Proposal:
    """Our suite with the agreed lifetime: ours if the peer gave none (0), else the smaller of the two."""
    lifetime = ours.lifetime if theirs.lifetime <= 0 else min(ours.lifetime, theirs.lifetime)
    return attrs.evolve(ours, lifetime=lifetime)


@attrs.frozen
class Choice:
    """The responder's choice: the agreed suite and the SA payload that answers the peer's."""

    proposal: Phase1Proposal
    reply: SA


def choose(policy: Phase1Policy, sa: SA, accept=lambda p: True) -> Choice:
    """Pick from the initiator's ``sa`` by our order of preference; ``accept(p)`` can rule out a suite of ours
    (no pre-shared key for this peer, no credentials...).  Raises :class:`NoProposalChosen`.

    The reply echoes the chosen Transform as sent, in a Proposal of the peer's number and SPI (RFC 2408 4.2).
    """
    offered = []
    for prop in sa.proposals:
        if prop.protocol_id != ProtocolID.ISAKMP:
            continue
        for t in prop.transforms:
            theirs = read_transform(t)
            if theirs is not None:
                offered.append((prop, t, theirs))
    for ours in usable(policy):
        if not accept(ours):
            continue
        for prop, t, theirs in offered:
            if _same_suite(ours, theirs):
                reply = SA(sa.doi, sa.situation, (Proposal(prop.proposal_number, ProtocolID.ISAKMP, prop.spi, (t,)),))
                return Choice(agreed(ours, theirs), reply)
    raise NoProposalChosen(f"none of {len(offered)} readable transforms matches our policy" + _why(offered, policy))


def _why(offered, policy: Phase1Policy) -> str:
    """What rules out the peer's suites on our side (weak groups, 3DES, ...), for the log line: distinct
    reasons, at most three."""
    reasons = []
    for _, _, theirs in offered:
        # A lifetime of 0 means "none proposed"; only the suite itself decides here.
        reason = refusal(attrs.evolve(theirs, lifetime=max(theirs.lifetime, 1)), policy)
        if reason is not None and reason not in reasons:
            reasons.append(reason)
    return f" ({'; '.join(reasons[:3])})" if reasons else ""


def accept_reply(offered: tuple[Phase1Proposal, ...], sa: SA) -> Phase1Proposal:
    """The suite the responder chose, checked against what we ``offered``; raises :class:`NoProposalChosen`.

    The reply must hold exactly one ISAKMP Proposal with exactly one Transform (RFC 2408 section 4.2).
    """
    if len(sa.proposals) != 1 or len(sa.proposals[0].transforms) != 1:
        raise NoProposalChosen("the responder's SA must hold one proposal with one transform")
    prop = sa.proposals[0]
    theirs = read_transform(prop.transforms[0]) if prop.protocol_id == ProtocolID.ISAKMP else None
    if theirs is None:
        raise NoProposalChosen("the responder's transform cannot be read")
    for ours in offered:
        if _same_suite(ours, theirs):
            return agreed(ours, theirs)
    raise NoProposalChosen("the responder chose a transform we did not offer")
