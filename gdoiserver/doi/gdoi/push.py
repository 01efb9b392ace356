"""GROUPKEY-PUSH (RFC 6407 section 4) as pure functions: the key server builds the datagram (:func:`build_push`),
a member verifies it and reads the keys it brings (:func:`verify_push`).

The message is HDR*, SEQ, [D,] SA, KD [, CERT], SIG.  The header's cookies are the KEK SPI, the exchange type 33
and the Message ID 0.  Three choices, the same on both sides:

- Signed data: "rekey" | HDR | every payload before the SIG, in clear, the last one's Next Payload already naming
  the SIG (RFC 3547 section 4: a hash of the message before encryption, header included, SIG excluded, prefixed
  with "rekey").  The HDR hashed is the header with the Encryption flag set and a Length of 28 + the payload chain
  with the SIG, before padding and IV: what `gdoid` hashes (src/gdoi_rekey.c, gdoi_add_sig_payload), and what a
  member can rebuild from the decrypted chain alone.
- Signature: over the hash named by the SAK's SIG_HASH_ALGORITHM.  RSA is EMSA-PKCS1-v1_5 padding of the bare
  digest, no DigestInfo, as `gdoid` signs (OpenSSL RSA_private_encrypt with RSA_PKCS1_PADDING) and as IKEv1 RSA
  signatures are made (:func:`gdoiserver.crypto.certs.sign`).  ECDSA is r | s, each the curve's field size
  (RFC 4754 section 7, as our Phase 1 signatures).
- Encryption: AES-CBC under the KEK, the body padded with 0x00 to whole blocks (RFC 2409 appendix B).  RFC 3547
  used a static IV sent with the key in the KD, and `gdoid` re-installs it for every rekey.  Our KD sends the key
  alone (docs/wire-format.md, "KD: KEK"), so each PUSH carries a fresh random IV as the first block after the
  header, counted in the header's Length: **our choice**, never reusing a CBC IV under one key.

The key server signs once per message; the same datagram then goes to every member.

An eviction (RFC 6407 section 5.6.3, LKH) brings the new KEK without its key: the KD's KEK key packet has the
signature key alone, and an LKH key packet's LKH_UPDATE_ARRAY carries the new root key (the KEK's) wrapped down the
tree (:func:`eviction_kd`).  A member follows it from its LKH path (``verify_push(..., lkh_path=)``).
"""

import os

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    NoDigestInfo,
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import load_der_public_key

from gdoiserver.codec.cipher import CIPHERS, CipherSpec, pad
from gdoiserver.codec.constants import DOI, ExchangeType, Flags, OakleyEncryption, PayloadType
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.attributes import Attribute
from gdoiserver.codec.gdoi import (
    KD,
    KEK_SPI_SIZE,
    SEQ,
    TEK_SPI_SIZE,
    GroupSA,
    KEKKeyAttr,
    KeyPacket,
    KeyPacketType,
    SigHashAlgorithm,
    TEKProtocol,
)
from gdoiserver.codec.grammar import check, rule_for
from gdoiserver.codec.message import Message, decode_message
from gdoiserver.codec.payload import context_for, encode_chain
from gdoiserver.codec.payloads import Delete, Signature
from gdoiserver.doi.gdoi import lkh_wire
from gdoiserver.doi.gdoi.hashes import payload_spans
from gdoiserver.doi.gdoi.registration import (
    GroupRegistration,
    KEKInfo,
    MemberPolicy,
    RegistrationRefused,
    read_keys,
    read_policy,
)
from gdoiserver.group.policy import SIG_HASHES

PUSH = ExchangeType.GROUPKEY_PUSH
CTX = context_for(DOI.GDOI, PUSH)
#: RFC 3547 section 4: the signed data starts with these octets.
REKEY_PREFIX = b"rekey"
#: Delete Protocol-ID of a KEK (16-octet SPI), as `gdoid` sends it; TEKs use their SA TEK Protocol-ID.
KEK_DELETE_PROTOCOL = 0
_HASHES = {SigHashAlgorithm.SIG_HASH_SHA256: hashes.SHA256, SigHashAlgorithm.SIG_HASH_SHA384: hashes.SHA384,
           SigHashAlgorithm.SIG_HASH_SHA512: hashes.SHA512}
_AES = OakleyEncryption.AES_CBC

#: The counters a refusal names, one per kind of failure.
MALFORMED, UNKNOWN_KEK, BAD_SIGNATURE, REPLAY, REFUSED = (
    "push_malformed", "push_unknown_kek", "push_bad_signature", "push_replay", "push_refused")


class PushError(Exception):
    """A GROUPKEY-PUSH the member must drop: ``reason`` for the log, ``counter`` the counter to increment."""

    def __init__(self, reason: str, counter: str):
        super().__init__(reason)
        self.reason = reason
        self.counter = counter


def _hash_class(sig_hash: int):
    try:
        return _HASHES[sig_hash]
    except KeyError:
        raise ValueError(f"SIG_HASH_ALGORITHM {sig_hash} (SHA-256, -384 or -512 only)") from None


def _field_size(curve) -> int:
    return (curve.key_size + 7) // 8


@attrs.frozen
class Signer:
    """Signs rekeys with the key server's RSA or ECDSA ``private_key`` over the hash ``sig_hash`` (a
    SigHashAlgorithm number); ``size`` is the length of every signature it makes."""

    private_key: object = attrs.field(repr=False)
    sig_hash: int

    @classmethod
    def for_kek(cls, kek) -> "Signer":
        """The signer a KEK's policy names (KEKPolicy.signature_key and signature_hash)."""
        return cls(kek.policy.signature_key, SIG_HASHES[kek.policy.signature_hash])

    @property
    def size(self) -> int:
        key = self.private_key
        if isinstance(key, rsa.RSAPrivateKey):
            return (key.key_size + 7) // 8
        return 2 * _field_size(key.curve)

    def sign(self, data: bytes) -> bytes:
        hash_cls = _hash_class(self.sig_hash)
        digest = hashes.Hash(hash_cls())
        digest.update(data)
        digest = digest.finalize()
        key = self.private_key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(digest, padding.PKCS1v15(), NoDigestInfo())
        r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hash_cls()))))
        size = _field_size(key.curve)
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def signature_holds(public_der: bytes, sig_hash: int, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` signs ``data`` (as :meth:`Signer.sign` does) with the DER SubjectPublicKeyInfo."""
    hash_cls = _hash_class(sig_hash)
    digest = hashes.Hash(hash_cls())
    digest.update(data)
    digest = digest.finalize()
    key = load_der_public_key(public_der)
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if len(signature) != (key.key_size + 7) // 8:
                return False
            key.verify(signature, digest, padding.PKCS1v15(), NoDigestInfo())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            size = _field_size(key.curve)
            if len(signature) != 2 * size:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big"))
            key.verify(der, digest, ec.ECDSA(Prehashed(hash_cls())))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def signed_data(header: Message, chain_length: int, before_sig: bytes) -> bytes:
    """"rekey" | HDR | the payloads before the SIG; HDR with the Encryption flag and the Length of 28 +
    ``chain_length`` (the whole payload chain, SIG included, unpadded)."""
    hdr = attrs.evolve(header, flags=int(header.flags | Flags.ENCRYPTION)).header_bytes(chain_length)
    return REKEY_PREFIX + hdr + before_sig


def kek_cipher(key_bits: int) -> CipherSpec:
    """AES-CBC with a KEK of ``key_bits`` (RFC 6407 section 5.3: KEK_ALG_AES)."""
    return CIPHERS[(_AES, key_bits)]


def delete_teks(spis, protocol: int = TEKProtocol.IPSEC_ESP) -> Delete:
    """A Delete payload retiring TEKs (RFC 6407 section 5.9; the Protocol-ID is the SA TEK's, as `gdoid`)."""
    return Delete(DOI.GDOI, protocol, tuple(spis), TEK_SPI_SIZE)


def delete_kek(spi: bytes) -> Delete:
    """A Delete payload retiring a KEK (16-octet SPI, Protocol-ID 0, as `gdoid` sends it)."""
    return Delete(DOI.GDOI, KEK_DELETE_PROTOCOL, (spi,), KEK_SPI_SIZE)


def eviction_kd(new_kek, updates) -> KD:
    """The Key Download of an eviction (RFC 6407 section 5.6.3): a KEK key packet for ``new_kek`` (a KEKKeys) with
    its SIG_ALGORITHM_KEY and no KEK_ALGORITHM_KEY, and an LKH key packet under the new KEK's SPI whose
    LKH_UPDATE_ARRAY holds ``updates`` (from :meth:`gdoiserver.group.lkh.LKHTree.evict`): the new key reaches the
    members through the tree, never in clear under the old KEK."""
    if not updates:
        raise ValueError("an eviction with no LKH update reaches no member")
    kek_packet = KeyPacket(KeyPacketType.KEK, new_kek.spi,
                           (Attribute(KEKKeyAttr.SIG_ALGORITHM_KEY, new_kek.policy.public_key_der),))
    return KD((kek_packet, lkh_wire.update_packet(new_kek.spi, updates)))


def build_push(kek, seq: int, sa_payload: GroupSA, kd_payload: KD, deletes=(), signer: Signer | None = None, *,
               certificates=(), rng=os.urandom) -> bytes:
    """The GROUPKEY-PUSH datagram under ``kek`` (a KEKKeys: ``spi``, ``key``, ``policy``) with SEQ ``seq``.

    ``deletes`` are Delete payloads, ``certificates`` CERT payloads; ``signer`` defaults to the KEK policy's key.
    ``seq`` must be above ``kek.seq`` (the last one sent); the caller records it once the message is sent.
    """
    if not kek.seq < seq <= 0xFFFFFFFF:
        raise ValueError(f"SEQ {seq} after {kek.seq}: it must rise and fit 32 bits (RFC 6407 section 5.8)")
    signer = signer or Signer.for_kek(kek)
    payloads = (SEQ(seq), *deletes, sa_payload, kd_payload, *certificates)
    header = Message(kek.spi[:8], kek.spi[8:], PUSH, int(Flags.ENCRYPTION), 0, payloads + (Signature(b""),))
    before_sig = encode_chain(payloads + (Signature(b""),), CTX)[: -4]  # the last Next Payload names the SIG
    chain_length = len(before_sig) + 4 + signer.size
    signature = signer.sign(signed_data(header, chain_length, before_sig))
    if len(signature) != signer.size:
        raise ValueError(f"a signature of {len(signature)} octets where {signer.size} were announced")
    body = encode_chain(payloads + (Signature(signature),), CTX)
    cipher = kek_cipher(kek.policy.key_bits)
    iv = bytes(rng(cipher.block_size))
    ciphertext = cipher.encrypt(kek.key, iv, pad(body, cipher.block_size))
    return header.header_bytes(len(iv) + len(ciphertext)) + iv + ciphertext


def open_push(datagram: bytes, spi: bytes, key: bytes, key_bits: int) -> tuple[Message, bytes]:
    """The header of a PUSH under the KEK (``spi``, ``key``) and its decrypted body (payload chain and padding).

    PushError(push_malformed) for what is not a PUSH or does not decrypt, PushError(push_unknown_kek) for a PUSH
    under another KEK.
    """
    try:
        header = decode_message(datagram, doi=DOI.GDOI)
    except DecodeError as e:
        raise PushError(f"not an ISAKMP message: {e.reason}", MALFORMED) from None
    if header.exchange_type != PUSH or header.message_id != 0:
        raise PushError(f"exchange {header.exchange_type}, Message ID {header.message_id}: not a PUSH", MALFORMED)
    if not header.encrypted:
        raise PushError("a GROUPKEY-PUSH in clear (RFC 6407 section 4: HDR*)", MALFORMED)
    if header.spi != spi:
        raise PushError(f"KEK SPI {header.spi.hex()} is not the current {spi.hex()}", UNKNOWN_KEK)
    cipher = kek_cipher(key_bits)
    iv, ciphertext = header.ciphertext[: cipher.block_size], header.ciphertext[cipher.block_size :]
    try:
        plaintext = cipher.decrypt(key, iv, ciphertext)
    except DecodeError as e:
        raise PushError(e.reason, MALFORMED) from None
    return header, plaintext


@attrs.frozen
class PushResult:
    """An accepted PUSH: its SEQ, the new keys (``registration``: TEKs and, on a KEK rekey, the new KEK; after an
    LKH update, the member's new LKH path) and the SPIs its Delete payloads retire."""

    seq: int
    registration: GroupRegistration
    deleted_teks: tuple[bytes, ...] = ()
    deleted_keks: tuple[bytes, ...] = ()

    @property
    def teks(self):
        return self.registration.teks

    @property
    def kek(self) -> KEKInfo | None:
        """The new KEK, or None when the PUSH keeps the current one."""
        return self.registration.kek

    def kek_after(self, current: KEKInfo) -> KEKInfo:
        """The KEK the next PUSH comes under (RFC 3547 section 4: the SEQ counter carries on across KEKs)."""
        return self.kek if self.kek is not None else current

    @property
    def lkh_path(self) -> tuple | None:
        """The member's new LKH path (leaf first) when the PUSH carried an LKH update, else None (keep yours)."""
        return self.registration.lkh_path or None

    def lkh_path_after(self, current: tuple) -> tuple:
        """The LKH path to follow the next eviction with."""
        return self.lkh_path if self.lkh_path is not None else current


def _deleted(deletes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    teks, keks = [], []
    for d in deletes:
        if d.doi != DOI.GDOI:
            raise PushError(f"a Delete of DOI {d.doi}", REFUSED)
        if d.protocol_id in (TEKProtocol.IPSEC_ESP, TEKProtocol.IPSEC_AH) and d.spi_size == TEK_SPI_SIZE:
            teks.extend(d.spis)
        elif d.protocol_id == KEK_DELETE_PROTOCOL and d.spi_size == KEK_SPI_SIZE:
            keks.extend(d.spis)
        else:
            raise PushError(f"a Delete of Protocol-ID {d.protocol_id} with {d.spi_size}-octet SPIs", REFUSED)
    return tuple(teks), tuple(keks)


def verify_push(datagram: bytes, kek_state: KEKInfo, last_seq: int, *, policy: MemberPolicy = MemberPolicy(),
                group=None, server=None, now: float = 0.0, lkh_path=()) -> PushResult:
    """Check a PUSH under ``kek_state`` and read its keys; PushError otherwise.

    In order: decrypt, decode and the grammar (push_malformed), the SIG with the KEK's signature key
    (push_bad_signature), SEQ above ``last_seq`` (push_replay: checked on authentic messages only, so the counter
    counts replays and not forgeries), then the SA and KD with the registration's readers (push_refused).
    ``lkh_path`` is the member's LKH path (from its registration, :attr:`GroupRegistration.lkh_path`): an eviction
    brings the new KEK's key through it, and a member it cannot bring the key to (the evicted one) gets
    push_refused.
    """
    header, plaintext = open_push(datagram, kek_state.spi, kek_state.key, kek_state.key_bits)
    try:
        message = header.with_plaintext(plaintext, DOI.GDOI, CTX)
        check(message, rule_for(PUSH, 1, doi=DOI.GDOI))
        spans = payload_spans(plaintext, header.next_payload)
    except DecodeError as e:
        raise PushError(e.reason, MALFORMED) from None
    _, sig_start, sig_end = spans[-1]
    data = signed_data(header, sig_end, plaintext[:sig_start])
    if not signature_holds(kek_state.signature_public_key, kek_state.signature_hash, data,
                           message.payloads[-1].signature_data):
        raise PushError("the SIG does not verify with the key server's key", BAD_SIGNATURE)
    seq = message.payloads[0].sequence_number
    if seq <= last_seq:
        raise PushError(f"SEQ {seq} is not above {last_seq}: a replay", REPLAY)
    deleted_teks, deleted_keks = _deleted(p for p in message.payloads if p.payload_type == PayloadType.D)
    sa = next(p for p in message.payloads if p.payload_type == PayloadType.SA)
    kd = next(p for p in message.payloads if p.payload_type == PayloadType.KD)
    if not isinstance(sa, GroupSA):
        raise PushError("the SA is not in the GDOI layout", MALFORMED)
    try:
        offered = read_policy(sa, policy, rekey=True)
        registration = read_keys(offered, kd, seq, group=group, server=server, now=now, asked_sender_ids=0,
                                 pfs=False, rekey=True, lkh_path=lkh_path)
    except RegistrationRefused as e:
        raise PushError(e.reason, REFUSED) from None
    return PushResult(seq, registration, deleted_teks, deleted_keks)
