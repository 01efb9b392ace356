"""The Informational exchange under an ISAKMP SA (gdoiserver.exchanges.informational; RFC 2408 4.8, RFC 2409 5.7).

Both ends of one ISAKMP SA are built here from keys derived for fixed inputs (:func:`sa_pair`): what one end
builds, the other processes.  HASH(1), the IV and the plaintext are checked against hmac, hashlib and the
cryptography package used directly, and the whole message against tshark's decryption of a short synthetic Main
Mode followed by Informational messages.
"""

import hashlib
import hmac
import struct

import attrs
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from gdoiserver.codec import KE, SA, Attribute, Delete, Hash, Identification, Message, Nonce, Notification, Proposal
from gdoiserver.codec import Transform, decode_message
from gdoiserver.codec.cipher import IVChain, cipher_for
from gdoiserver.codec.payload import context_for, encode_chain
from gdoiserver.codec.constants import (
    DOI,
    ExchangeType,
    Flags,
    LifeType,
    NotifyType,
    OakleyAttr,
    OakleyAuth,
    OakleyEncryption,
    OakleyGroup,
    OakleyHash,
    PayloadType,
    ProtocolID,
    Situation,
    TransformID,
)
from gdoiserver.crypto.keys import derive_phase1_keys, skeyid_preshared
from gdoiserver.crypto.prf import hash_algorithm
from gdoiserver.exchanges import informational as info
from gdoiserver.exchanges.effects import Count, Send
from gdoiserver.exchanges.informational import (
    DeleteReceived,
    Dropped,
    Hint,
    NotifyReceived,
    Received,
    RUThere,
    RUThereAck,
)
from gdoiserver.exchanges.phase1 import INITIATOR, RESPONDER, ISAKMPSA, Phase1Proposal
from gdoiserver.tools.pcap import Datagram, write_pcap
from tests import tshark

ICOOKIE = bytes.fromhex("0011223344556677")
RCOOKIE = bytes.fromhex("8899aabbccddeeff")
INITIATOR_ADDR, RESPONDER_ADDR = ("127.0.0.1", 500), ("127.0.0.2", 500)
AES, TDES = OakleyEncryption.AES_CBC, OakleyEncryption.TRIPLEDES_CBC
G_XI, G_XR = b"\x5a" * 256, b"\xa5" * 256  # stand for the KE payloads of MODP-2048
LAST_PHASE1_BLOCK = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")


def octets(label: str, size: int) -> bytes:
    return hashlib.shake_256(label.encode()).digest(size)


class Random:
    """A deterministic ``rng(n)``: scripted chunks first, then a SHAKE-256 stream of ``label``."""

    def __init__(self, label: str = "rng", script=()):
        self.label, self.script, self.calls = label, list(script), 0

    def __call__(self, n: int) -> bytes:
        if self.script:
            chunk = self.script.pop(0)
            assert len(chunk) == n, (chunk, n)
            return chunk
        self.calls += 1
        return octets(f"{self.label} {self.calls}", n)


def sa_pair(
    encryption=AES, key_length=256, hash_=OakleyHash.SHA2_256, *, doi=DOI.IPSEC, lifetime=3600, established_at=100.0,
    psk=b"informational test psk", nat_t=False,
) -> tuple[ISAKMPSA, ISAKMPSA]:
    """The initiator's and the responder's view of one ISAKMP SA, keyed from fixed inputs (RFC 2409 section 5)."""
    h = hash_algorithm(hash_)
    cipher = cipher_for(encryption, key_length if encryption == AES else None)
    skeyid = skeyid_preshared(h, psk, octets("Ni_b", 32), octets("Nr_b", 32))
    keys = derive_phase1_keys(h, skeyid, octets("g^xy", 256), ICOOKIE, RCOOKIE, G_XI, G_XR, cipher.key_size,
                              cipher.block_size)
    chain = IVChain(cipher, keys.enc_key, hash_, LAST_PHASE1_BLOCK[: cipher.block_size])
    proposal = Phase1Proposal(encryption, key_length if encryption == AES else None, hash_,
                              OakleyAuth.PRE_SHARED_KEY, OakleyGroup.MODP_2048, lifetime)
    initiator = ISAKMPSA(ICOOKIE, RCOOKIE, INITIATOR, doi, proposal, keys, chain, INITIATOR_ADDR, RESPONDER_ADDR,
                         Identification.of("initiator.example"), Identification.of("responder.example"),
                         established_at, nat_t)
    responder = attrs.evolve(initiator, role=RESPONDER, local=initiator.peer, peer=initiator.local,
                             local_id=initiator.peer_id, peer_id=initiator.local_id)
    return initiator, responder


def reference_decrypt(sa: ISAKMPSA, datagram: bytes) -> bytes:
    """The plaintext body of an AES datagram, decrypted with the cryptography package from IV = hash(last Phase 1
    block | M-ID) (RFC 2409 appendix B), written out here apart from the module under test."""
    mid = datagram[20:24]
    digest = {OakleyHash.SHA: hashlib.sha1, OakleyHash.SHA2_256: hashlib.sha256, OakleyHash.SHA2_384: hashlib.sha384,
              OakleyHash.SHA2_512: hashlib.sha512}[sa.proposal.hash]
    assert sa.proposal.encryption == AES
    iv = digest(sa.last_iv.iv + mid).digest()[:16]
    d = Cipher(algorithms.AES(sa.keys.enc_key), modes.CBC(iv)).decryptor()
    return d.update(datagram[28:]) + d.finalize()


def encrypt_body(sa: ISAKMPSA, mid: int, payloads, hash_over=None) -> bytes:
    """An Informational datagram with the given payloads after HASH(1), hashed over ``hash_over`` payloads
    (default: the same ones): a way to write messages whose hash is wrong on purpose."""
    ctx = context_for(sa.doi, ExchangeType.INFORMATIONAL)
    nd = encode_chain(tuple(hash_over if hash_over is not None else payloads), ctx)
    digest = info.hash_1(sa, mid, nd)
    message = Message(ICOOKIE, RCOOKIE, ExchangeType.INFORMATIONAL, 0, mid, (Hash(digest), *payloads))
    data, _ = sa.last_iv.for_message_id(mid).encrypt(message, ctx)
    return data


def process(sa: ISAKMPSA, datagram: bytes):
    return info.process(sa, decode_message(datagram, sa.doi))


class BuildTests(unittest.TestCase):
    """Outgoing Informational messages (RFC 2409 section 5.7)."""

    def test_plaintext_field_by_field(self):
        """An R-U-THERE under an AES-256/SHA2-256 SA: the header in clear, then HASH(1) and the Notify encrypted
        from IV = sha256(last Phase 1 block | M-ID), HASH(1) = HMAC-SHA256(SKEYID_a, M-ID | N), zero padding."""
        sa, _ = sa_pair()
        n = Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.R_U_THERE, sa.spi, bytes.fromhex("2a3b4c5d"))
        data = info.build(sa, [n], Random(script=[bytes.fromhex("01020304")]))
        header = bytes.fromhex(
            "0011223344556677"  # initiator cookie
            "8899aabbccddeeff"  # responder cookie
            "08"  # next payload: HASH
            "10"  # version 1.0
            "05"  # exchange type: Informational
            "01"  # flags: Encryption
            "01020304"  # M-ID, the four octets the rng gave
            "0000006c"  # length: 28 + 80 = 108
        )
        self.assertEqual(data[:28], header)
        n_bytes = bytes.fromhex(
            "00000020"  # generic header: next payload none, RESERVED, length 32
            "00000001"  # DOI 1 (IPsec)
            "01"  # protocol ISAKMP
            "10"  # SPI size 16
            "8d28"  # notify type 36136 (R-U-THERE)
            "00112233445566778899aabbccddeeff"  # SPI: CKY-I | CKY-R
            "2a3b4c5d"  # notification data: the sequence number
        )
        expected_hash = hmac.new(sa.keys.skeyid_a, bytes.fromhex("01020304") + n_bytes, hashlib.sha256).digest()
        plaintext = (
            bytes.fromhex("0b000024")  # HASH payload: next payload N (11), RESERVED, length 36
            + expected_hash
            + n_bytes
            + bytes(12)  # 68 octets so far; 12 octets of 0x00 reach 80, whole AES blocks (RFC 2409 appendix B)
        )
        self.assertEqual(len(data), 28 + 80)
        self.assertEqual(reference_decrypt(sa, data), plaintext)

    def test_hash_covers_every_payload_after_hash(self):
        """With several payloads HASH(1) covers all of them in order, generic headers included (hmac over the
        decrypted octets between the HASH payload and the padding)."""
        sa, _ = sa_pair(hash_=OakleyHash.SHA2_512)
        payloads = [info.initial_contact(sa), info.delete_ipsec(sa, ProtocolID.IPSEC_ESP, [b"\1\2\3\4", b"\5\6\7\x08"])]
        data = info.build(sa, payloads, Random())
        plaintext = reference_decrypt(sa, data)
        self.assertEqual(plaintext[:4], bytes((11, 0, 0, 68)))  # next N, length 4 + 64
        n_len = struct.unpack("!H", plaintext[70:72])[0]
        d_len = struct.unpack("!H", plaintext[68 + n_len + 2 : 68 + n_len + 4])[0]
        self.assertEqual(plaintext[68 + n_len], 0)  # the Delete ends the chain
        nd = plaintext[68 : 68 + n_len + d_len]
        self.assertEqual(plaintext[68], 12)  # the Notify's next payload: D
        self.assertEqual(plaintext[4:68], hmac.new(sa.keys.skeyid_a, data[20:24] + nd, hashlib.sha512).digest())

    def test_message_id_is_random_and_not_zero(self):
        """The M-ID comes from the rng; zero (Phase 1's M-ID) is drawn again; each message has a new one."""
        sa, _ = sa_pair()
        rng = Random(script=[bytes(4), bytes(4), bytes.fromhex("cafebabe")])
        data = info.build(sa, [info.initial_contact(sa)], rng)
        self.assertEqual(data[20:24], bytes.fromhex("cafebabe"))
        second = info.build(sa, [info.initial_contact(sa)], rng)
        self.assertNotIn(second[20:24], (bytes(4), data[20:24]))

    def test_rng_that_gives_only_zero(self):
        """A random source stuck on zero raises instead of looping or sending M-ID 0."""
        sa, _ = sa_pair()
        self.assertRaises(ValueError, info.build, sa, [info.initial_contact(sa)], lambda n: bytes(n))

    def test_no_payload(self):
        """An Informational message needs a Notify or Delete."""
        sa, _ = sa_pair()
        self.assertRaises(ValueError, info.build, sa, [], Random())

    def test_send_effect(self):
        """send() addresses the datagram to the SA's peer from its local address, over NAT-T if the SA floated."""
        sa, _ = sa_pair(nat_t=True)
        effect = info.send(sa, [info.initial_contact(sa)], Random(script=[bytes.fromhex("00000007")]))
        self.assertIsInstance(effect, Send)
        self.assertEqual((effect.peer, effect.local, effect.nat_t), (RESPONDER_ADDR, INITIATOR_ADDR, True))
        self.assertEqual(effect.data[20:24], bytes.fromhex("00000007"))

    def test_payload_helpers(self):
        """INITIAL-CONTACT and the ISAKMP Delete name the SA by its cookies with protocol ISAKMP (RFC 2407
        4.6.3.3, RFC 2408 3.15); an IPsec Delete carries the given SPIs and refuses protocol ISAKMP."""
        sa, _ = sa_pair(doi=DOI.GDOI)
        self.assertEqual(info.initial_contact(sa),
                         Notification(DOI.GDOI, ProtocolID.ISAKMP, NotifyType.INITIAL_CONTACT, ICOOKIE + RCOOKIE))
        self.assertEqual(info.delete_isakmp(sa), Delete(DOI.GDOI, ProtocolID.ISAKMP, (ICOOKIE + RCOOKIE,), 16))
        self.assertEqual(info.delete_ipsec(sa, ProtocolID.IPSEC_AH, [b"abcd"]),
                         Delete(DOI.GDOI, ProtocolID.IPSEC_AH, (b"abcd",), 4))
        self.assertRaises(ValueError, info.delete_ipsec, sa, ProtocolID.ISAKMP, [sa.spi])


class RoundTripTests(unittest.TestCase):
    """What one end builds, the other end of the same SA processes."""

    def test_initiator_to_responder(self):
        """INITIAL-CONTACT from the initiator reaches the responder as a NotifyReceived with the right M-ID."""
        a, b = sa_pair()
        data = info.build(a, [info.initial_contact(a)], Random(script=[bytes.fromhex("11223344")]))
        result = process(b, data)
        self.assertEqual(result, Received(0x11223344, (
            NotifyReceived(NotifyType.INITIAL_CONTACT, ProtocolID.ISAKMP, ICOOKIE + RCOOKIE, b""),)))
        self.assertEqual(result.effects, (Count("informational_received"),))

    def test_responder_to_initiator(self):
        """A Delete of the ISAKMP SA from the responder reaches the initiator as DeleteReceived(ISAKMP, cookies)."""
        a, b = sa_pair()
        result = process(a, info.build(b, [info.delete_isakmp(b)], Random()))
        self.assertEqual(result.items, (DeleteReceived(ProtocolID.ISAKMP, (ICOOKIE + RCOOKIE,)),))

    def test_every_cipher_and_hash(self):
        """Round trips with AES-128/192/256, 3DES and SHA-1, SHA2-256/384/512 (block sizes 16 and 8)."""
        for enc, bits, h in ((AES, 128, OakleyHash.SHA), (AES, 192, OakleyHash.SHA2_384),
                             (AES, 256, OakleyHash.SHA2_512), (TDES, 192, OakleyHash.SHA2_256)):
            a, b = sa_pair(enc, bits, h)
            payloads = [info.notify(a, NotifyType.R_U_THERE, b"\0\0\0\1"),
                        info.delete_ipsec(a, ProtocolID.IPSEC_ESP, [b"\xaa\xbb\xcc\xdd"])]
            result = process(b, info.build(a, payloads, Random(str(h))))
            self.assertEqual(result.items, (RUThere(1), DeleteReceived(ProtocolID.IPSEC_ESP, (b"\xaa\xbb\xcc\xdd",))),
                             (enc, bits, h))

    def test_gdoi_sa(self):
        """Under a GDOI (DOI 2) ISAKMP SA the payloads carry DOI 2 and decode under it."""
        a, b = sa_pair(doi=DOI.GDOI)
        data = info.build(a, [info.delete_isakmp(a)], Random())
        self.assertEqual(reference_decrypt(a, data)[4 + 32 + 4 : 4 + 32 + 8], struct.pack("!I", DOI.GDOI))
        self.assertEqual(process(b, data).items, (DeleteReceived(ProtocolID.ISAKMP, (a.spi,)),))

    def test_dpd_items(self):
        """R-U-THERE and R-U-THERE-ACK come back typed with their sequence numbers; an empty SPI is accepted."""
        a, b = sa_pair()
        payloads = [info.notify(a, NotifyType.R_U_THERE, bytes.fromhex("7fffffff")),
                    Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.R_U_THERE_ACK, b"", b"\0\0\0\x09")]
        self.assertEqual(process(b, info.build(a, payloads, Random())).items, (RUThere(0x7FFFFFFF), RUThereAck(9)))

    def test_malformed_dpd_notifies(self):
        """A DPD notify with a 3-octet sequence, another SA's SPI or protocol ESP yields no item, only a Count."""
        a, b = sa_pair()
        bad = [info.notify(a, NotifyType.R_U_THERE, b"\0\0\1"),
               Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.R_U_THERE, b"x" * 16, b"\0\0\0\1"),
               Notification(DOI.IPSEC, ProtocolID.IPSEC_ESP, NotifyType.R_U_THERE_ACK, a.spi, b"\0\0\0\1")]
        for n in bad:
            result = process(b, info.build(a, [n], Random()))
            self.assertEqual(result.items, (), n)
            self.assertEqual(result.effects, (Count("informational_received"), Count("dpd_malformed")), n)

    @settings(max_examples=100, deadline=None)
    @given(notify_type=st.integers(1, 0xFFFF).filter(lambda t: t not in (NotifyType.R_U_THERE,
                                                                         NotifyType.R_U_THERE_ACK)),
           data=st.binary(max_size=300), spi=st.binary(max_size=16), seed=st.integers(0, 2**32),
           initiator_sends=st.booleans())
    def test_any_notify_round_trips(self, notify_type, data, spi, seed, initiator_sends):
        """Any Notify type, SPI and data, sent either way, comes back as it was sent."""
        a, b = sa_pair()
        sender, receiver = (a, b) if initiator_sends else (b, a)
        n = Notification(DOI.IPSEC, ProtocolID.ISAKMP, notify_type, spi, data)
        result = process(receiver, info.build(sender, [n], Random(str(seed))))
        self.assertEqual(result.items, (NotifyReceived(notify_type, ProtocolID.ISAKMP, spi, data),))

    def test_replay_is_not_detected_here(self):
        """The same datagram processed twice verifies twice: Informational has no replay protection (hence the
        DPD sequence numbers and the INITIAL-CONTACT time check)."""
        a, b = sa_pair()
        data = info.build(a, [info.initial_contact(a)], Random())
        self.assertEqual(process(b, data), process(b, data))


class DropTests(unittest.TestCase):
    """Messages that fail are dropped with a reason and a Count, and never answered."""

    def assertDropped(self, result, counter):
        self.assertIsInstance(result, Dropped)
        self.assertEqual(result.effects, (Count(counter),))
        self.assertFalse(any(isinstance(e, Send) for e in result.effects))

    def test_wrong_hash(self):
        """HASH(1) computed over other payloads than those sent: dropped as a bad hash."""
        a, b = sa_pair()
        sent = [info.notify(a, NotifyType.INITIAL_CONTACT)]
        hashed = [info.delete_isakmp(a)]
        result = process(b, encrypt_body(a, 77, sent, hash_over=hashed))
        self.assertDropped(result, "informational_bad_hash")
        self.assertIn("HASH(1)", result.reason)

    def test_hash_of_another_message_id(self):
        """A HASH(1) made for another M-ID does not verify: the M-ID is under the hash."""
        a, b = sa_pair()
        good = encrypt_body(a, 77, [info.initial_contact(a)])
        self.assertIsInstance(process(b, good), Received)
        moved = Message(ICOOKIE, RCOOKIE, ExchangeType.INFORMATIONAL, 0, 78, decrypted_payloads(a, good))
        data, _ = a.last_iv.for_message_id(78).encrypt(moved)
        self.assertDropped(process(b, data), "informational_bad_hash")

    def test_wrong_skeyid_a(self):
        """A peer with the same cipher key but another SKEYID_a: decrypts, then fails HASH(1)."""
        a, b = sa_pair()
        other = attrs.evolve(b, keys=attrs.evolve(b.keys, skeyid_a=bytes(32)))
        self.assertDropped(process(other, info.build(a, [info.initial_contact(a)], Random())),
                           "informational_bad_hash")

    def test_flipped_ciphertext_bit_in_hash_or_data(self):
        """A bit flipped in ciphertext block k garbles plaintext block k and flips the same bit of block k+1.
        Flipping the second block garbles hash octets only; flipping the fourth garbles the SPI and one data
        octet: the payload chain still decodes and HASH(1) fails."""
        a, b = sa_pair()
        data = info.build(a, [info.notify(a, NotifyType.R_U_THERE, b"\0\0\0\1")], Random())
        for block in (1, 3):
            tampered = bytearray(data)
            tampered[28 + 16 * block] ^= 0x01
            self.assertDropped(process(b, bytes(tampered)), "informational_bad_hash")

    def test_truncated_ciphertext(self):
        """Ciphertext that is not whole blocks: a decode error."""
        a, b = sa_pair()
        data = info.build(a, [info.initial_contact(a)], Random())
        short = data[:-3]
        short = short[:24] + struct.pack("!I", len(short)) + short[28:]
        self.assertDropped(process(b, short), "informational_decode_error")

    def test_plaintext_with_reserved_bits(self):
        """A body that decrypts to a payload with RESERVED set: a decode error, HASH(1) never computed."""
        a, b = sa_pair()
        chain = a.last_iv.for_message_id(5)
        body = bytes((11, 1, 0, 8)) + bytes(4) + bytes((0, 0, 0, 8)) + bytes(4)  # HASH with RESERVED 1, then N
        header = Message(ICOOKIE, RCOOKIE, ExchangeType.INFORMATIONAL, Flags.ENCRYPTION, 5, ciphertext=b"",
                         next_payload=PayloadType.HASH).header_bytes(16)
        data = header + chain.cipher.encrypt(chain.key, chain.iv, body)
        result = process(b, data)
        self.assertDropped(result, "informational_decode_error")
        self.assertIn("RESERVED", result.reason)

    def test_grammar(self):
        """HDR*, HASH(1), N/D is the only protected form: no HASH, a HASH alone, a Nonce after it are dropped
        (RFC 2409 section 5.7, gdoiserver.codec.grammar)."""
        a, b = sa_pair()
        n = info.initial_contact(a)
        h = Hash(bytes(32))
        for payloads in ((n,), (h,), (h, Nonce(b"n" * 16)), (h, n, h), (n, h)):
            message = Message(ICOOKIE, RCOOKIE, ExchangeType.INFORMATIONAL, 0, 9, payloads)
            data, _ = a.last_iv.for_message_id(9).encrypt(message)
            self.assertDropped(process(b, data), "informational_decode_error")

    def test_not_informational(self):
        """An encrypted Quick Mode message handed to process() is dropped, not read as Informational."""
        a, b = sa_pair()
        data = bytearray(info.build(a, [info.initial_contact(a)], Random()))
        data[18] = ExchangeType.QUICK_MODE
        self.assertDropped(process(b, bytes(data)), "informational_not_informational")

    def test_other_cookies(self):
        """A message with another SA's cookies is dropped."""
        a, b = sa_pair()
        data = info.build(a, [info.initial_contact(a)], Random())
        self.assertDropped(process(b, b"\x01" * 8 + data[8:]), "informational_wrong_cookies")

    def test_message_id_zero(self):
        """A protected Informational with M-ID 0 (Phase 1's) is dropped."""
        a, b = sa_pair()
        data = info.build(a, [info.initial_contact(a)], Random())
        self.assertDropped(process(b, data[:20] + bytes(4) + data[24:]), "informational_decode_error")

    def test_reason_shows_no_key(self):
        """Drop reasons name the fault and never key material."""
        a, b = sa_pair()
        result = process(b, encrypt_body(a, 3, [info.initial_contact(a)], hash_over=[info.delete_isakmp(a)]))
        for secret in (a.keys.skeyid_a, a.keys.enc_key, a.keys.skeyid_e):
            self.assertNotIn(secret.hex(), result.reason)
            self.assertNotIn(repr(secret), repr(result))


def decrypted_payloads(sa, datagram):
    """The payloads of a datagram, HASH(1) included, decrypted with its M-ID's chain."""
    chain = sa.last_iv.for_message_id(int.from_bytes(datagram[20:24], "big"))
    return chain.decrypt(decode_message(datagram))[0].payloads


class UnprotectedTests(unittest.TestCase):
    """Informational messages in the clear (RFC 2409 section 5.7): hints at most."""

    def clear(self, *payloads) -> Message:
        return decode_message(Message(ICOOKIE, RCOOKIE, ExchangeType.INFORMATIONAL, 0, 0, payloads).encode())

    def test_error_notify_is_a_hint(self):
        """NO-PROPOSAL-CHOSEN in the clear comes back as a Hint with its type, a reason and a Count."""
        result = info.process_unprotected(self.clear(Notification(DOI.IPSEC, ProtocolID.ISAKMP,
                                                                   NotifyType.NO_PROPOSAL_CHOSEN)))
        self.assertEqual(result.notify_types, (NotifyType.NO_PROPOSAL_CHOSEN,))
        self.assertIn("NO_PROPOSAL_CHOSEN", result.reason)
        self.assertEqual(result.effects, (Count("informational_unprotected_hint"),))

    def test_under_an_established_sa(self):
        """INVALID-COOKIE in the clear under an established SA: a Hint, never a Received."""
        _, b = sa_pair()
        result = info.process(b, self.clear(Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.INVALID_COOKIE)))
        self.assertIsInstance(result, Hint)
        self.assertEqual(result.notify_types, (NotifyType.INVALID_COOKIE,))

    def test_delete_and_status_in_clear_ignored(self):
        """A Delete or a status Notify (INITIAL-CONTACT) in the clear is dropped: it would act on an SA."""
        a, _ = sa_pair()
        for payload in (info.delete_isakmp(a), info.initial_contact(a)):
            result = info.process_unprotected(self.clear(payload))
            self.assertEqual(result.effects, (Count("informational_unprotected_ignored"),))

    def test_clear_with_hash(self):
        """HASH in a clear Informational has no place (HDR, N/D): a decode error."""
        result = info.process_unprotected(self.clear(Hash(bytes(20)), Notification(DOI.IPSEC, 1, 14)))
        self.assertEqual(result.effects, (Count("informational_decode_error"),))

    def test_encrypted_without_sa(self):
        """An encrypted Informational with no SA to read it is dropped."""
        a, _ = sa_pair()
        result = info.process_unprotected(decode_message(info.build(a, [info.initial_contact(a)], Random())))
        self.assertEqual(result.effects, (Count("informational_no_sa"),))


class InitialContactTests(unittest.TestCase):
    """Which SAs an authenticated INITIAL-CONTACT replaces (RFC 2407 section 4.6.3.3)."""

    def test_victims(self):
        """Older SAs with the same peer identity and address go (whatever the port); the new SA itself, SAs of
        another identity or address, and SAs established after the new one stay."""
        _, new = sa_pair(established_at=500.0)
        new = attrs.evolve(new, responder_cookie=b"N" * 8)

        def old(tag, **kw):
            return attrs.evolve(new, initiator_cookie=tag.encode() * 8, **kw)

        same = old("a", established_at=100.0)
        floated = old("b", established_at=200.0, peer=("127.0.0.1", 4500))
        other_id = old("c", established_at=100.0, peer_id=Identification.of("someone.example"))
        other_addr = old("d", established_at=100.0, peer=("127.0.0.9", 500))
        later = old("e", established_at=600.0)
        found = info.initial_contact_victims(new, [same, new, floated, other_id, other_addr, later])
        self.assertEqual(found, [same, floated])

    def test_identity_port_and_protocol_ignored(self):
        """The ID's protocol and port fields do not make another identity (only ID type and data count)."""
        _, new = sa_pair(established_at=500.0)
        twin = attrs.evolve(new, initiator_cookie=b"t" * 8, established_at=1.0,
                            peer_id=attrs.evolve(new.peer_id, protocol_id=17, port=500))
        self.assertEqual(info.initial_contact_victims(new, [twin]), [twin])
        other_type = attrs.evolve(twin, peer_id=attrs.evolve(new.peer_id, id_type=3))
        self.assertEqual(info.initial_contact_victims(new, [other_type]), [])


def synthetic_main_mode(a: ISAKMPSA) -> tuple[list[Datagram], ISAKMPSA, ISAKMPSA]:
    """A short Main Mode in the shape tshark follows: MM1/MM2 carry the SA (cipher and hash), MM3/MM4 the KE
    data (the first IV), MM5/MM6 are encrypted along the Phase 1 chain.  Returns the datagrams and both ends'
    SAs with ``last_iv`` after MM6.  The ID and HASH contents are placeholders: tshark checks neither."""
    I, R = INITIATOR_ADDR[0], RESPONDER_ADDR[0]
    mm = ExchangeType.MAIN_MODE
    transform = Transform(1, TransformID.KEY_IKE, (
        Attribute(OakleyAttr.ENCRYPTION_ALGORITHM, a.proposal.encryption),
        Attribute(OakleyAttr.KEY_LENGTH, a.proposal.key_length),
        Attribute(OakleyAttr.HASH_ALGORITHM, a.proposal.hash),
        Attribute(OakleyAttr.AUTHENTICATION_METHOD, OakleyAuth.PRE_SHARED_KEY),
        Attribute(OakleyAttr.GROUP_DESCRIPTION, OakleyGroup.MODP_2048),
        Attribute(OakleyAttr.LIFE_TYPE, LifeType.SECONDS),
        Attribute.number(OakleyAttr.LIFE_DURATION, a.proposal.lifetime),
    ))
    sa = SA(DOI.IPSEC, Situation.IDENTITY_ONLY, (Proposal(1, ProtocolID.ISAKMP, b"", (transform,)),))
    chain = IVChain.phase1(a.last_iv.cipher, a.keys.enc_key, a.proposal.hash, G_XI, G_XR)
    size = hash_algorithm(a.proposal.hash).digest_size
    mm5, chain = chain.encrypt(Message(ICOOKIE, RCOOKIE, mm, payloads=(a.local_id, Hash(b"i" * size))))
    mm6, chain = chain.encrypt(Message(ICOOKIE, RCOOKIE, mm, payloads=(a.peer_id, Hash(b"r" * size))))
    messages = [
        (I, Message(ICOOKIE, bytes(8), mm, payloads=(sa,)).encode()),
        (R, Message(ICOOKIE, RCOOKIE, mm, payloads=(sa,)).encode()),
        (I, Message(ICOOKIE, RCOOKIE, mm, payloads=(KE(G_XI), Nonce(octets("Ni_b", 32)))).encode()),
        (R, Message(ICOOKIE, RCOOKIE, mm, payloads=(KE(G_XR), Nonce(octets("Nr_b", 32)))).encode()),
        (I, mm5),
        (R, mm6),
    ]
    datagrams = [Datagram(src, R if src == I else I, 500, 500, data, float(i))
                 for i, (src, data) in enumerate(messages)]
    initiator = attrs.evolve(a, last_iv=chain)
    responder = attrs.evolve(initiator, role=RESPONDER, local=a.peer, peer=a.local, local_id=a.peer_id,
                             peer_id=a.local_id)
    return datagrams, initiator, responder


class TsharkTests(unittest.TestCase):
    """tshark decrypts our Informational messages with the keylog line ``<CKY-I hex>,<Ka hex>``.

    Wireshark cannot decrypt a lone Informational: it takes the cipher and hash from a Phase 1 SA payload, the
    first IV from both KE payloads (telling initiator from responder by IP address), and the last Phase 1 CBC
    block from the encrypted Phase 1 messages it decrypted before.  So the capture holds a short synthetic Main
    Mode first (:func:`synthetic_main_mode`), 127.0.0.1 initiator and 127.0.0.2 responder.
    """

    def test_tshark_decrypts_informational(self):
        """R-U-THERE from the initiator, R-U-THERE-ACK and a Delete of the ISAKMP SA from the responder: tshark
        decrypts each and shows the Notify types, the sequence numbers and the Delete, with nothing malformed;
        with a wrong key it shows none of them."""
        tshark.require_tshark()
        for enc, bits, h in ((AES, 256, OakleyHash.SHA2_256), (AES, 128, OakleyHash.SHA)):
            self.check_capture(*sa_pair(enc, bits, h))

    def check_capture(self, a0, _):
        datagrams, a, b = synthetic_main_mode(a0)
        rng = Random("tshark")
        infos = [
            (a, info.send(a, [info.notify(a, NotifyType.R_U_THERE, struct.pack("!I", 0x01020304))], rng)),
            (b, info.send(b, [info.notify(b, NotifyType.R_U_THERE_ACK, struct.pack("!I", 0x01020304))], rng)),
            (b, info.send(b, [info.delete_isakmp(b)], rng)),
        ]
        for sa, send in infos:
            datagrams.append(Datagram(sa.local[0], sa.peer[0], 500, 500, send.data, float(len(datagrams))))
        pcap = self.mktemp()
        write_pcap(pcap, datagrams)
        key = f"uat:ikev1_decryption_table:{ICOOKIE.hex()},{a.keys.enc_key.hex()}"
        decoded = tshark.packets(pcap, "-o", key)
        self.assertEqual(tshark.problems(pcap, "-o", key), [])
        self.assertEqual([tshark.field_values(p, "isakmp.notify.msgtype") for p in decoded[6:]],
                         [[str(NotifyType.R_U_THERE.value)], [str(NotifyType.R_U_THERE_ACK.value)], []])
        self.assertEqual(tshark.field_values(decoded[6], "isakmp.notify.data.dpd.are_you_there"), ["16909060"])
        self.assertEqual(tshark.field_values(decoded[7], "isakmp.notify.data.dpd.are_you_there_ack"), ["16909060"])
        self.assertEqual(tshark.field_values(decoded[8], "isakmp.delete.spi"), [(ICOOKIE + RCOOKIE).hex(":")])
        # The same capture with a wrong key: nothing of the Informational payloads is seen.
        wrong = f"uat:ikev1_decryption_table:{ICOOKIE.hex()},{bytes(len(a.keys.enc_key)).hex()}"
        blind = tshark.packets(pcap, "-o", wrong)
        self.assertEqual([tshark.field_values(p, "isakmp.notify.msgtype") for p in blind[6:]], [[], [], []])

