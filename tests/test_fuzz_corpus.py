"""The CI regression run of the codec fuzzing corpus (issue 9), and each crash the fuzzer found as a named case.

Every file of ``fuzz/corpus/codec/`` goes through :func:`fuzz.codec_fuzz.check` in its exhaustive form: as a
message under DOI 1 and 2 and exchange types 2, 4, 5, 32 and 33 (with the Encryption bit, decrypted with a fixed
AES-128 and 3DES key), as a decrypted body through AES-128-CBC and back, as the body of every registered payload
type, as data attributes and as ESP/AH and IEC 61850 TEKs.  Only DecodeError may come out, and whatever decodes
must encode back to the same octets.  See fuzz/README.md for how the corpus is grown and minimized.
"""

import pathlib
import struct

from twisted.trial.unittest import SynchronousTestCase

from fuzz.codec_fuzz import DOIS, EXCHANGES, KEYS, check
from gdoiserver.codec import attributes as attributes_module
from gdoiserver.codec import decode_attributes, decode_chain, decode_message
from gdoiserver.codec.cipher import decrypt_message
from gdoiserver.codec.constants import DOI, ExchangeType, NotifyType, PayloadType
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.gdoi import SAT, GroupSA, IEC61850TEK, IPsecTEK
from gdoiserver.codec.message import HEADER_SIZE
from gdoiserver.codec.payload import REGISTRY, context_for
from gdoiserver.codec.payloads import SA, Delete, Nonce, Proposal
from tests import corpus as messages

CORPUS = pathlib.Path(__file__).resolve().parent.parent / "fuzz" / "corpus" / "codec"


def corpus_files() -> list[pathlib.Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_file())


def _classes(payloads) -> set[type]:
    """The classes of ``payloads`` and of what they nest (Proposals, Transforms, GDOI SA attribute payloads, TEKs)."""
    out = set()
    for p in payloads:
        out.add(type(p))
        if isinstance(p, SA):
            out |= _classes(p.proposals)
        elif isinstance(p, Proposal):
            out |= _classes(p.transforms)
        elif isinstance(p, GroupSA):
            out |= _classes(p.payloads)
        elif isinstance(p, SAT):
            out.add(type(p.tek))
    return out


class _KeepsAttributeCache:
    """Give back the decoder's TV attribute cache as it was: the harness and these cases reset or fill it."""

    def setUp(self):
        saved = dict(attributes_module._TV_DECODED)
        self.addCleanup(lambda: (attributes_module._TV_DECODED.clear(), attributes_module._TV_DECODED.update(saved)))


class CorpusReplayTests(_KeepsAttributeCache, SynchronousTestCase):
    """The checked-in corpus, replayed through the fuzzing harness's contract."""

    def test_every_file_keeps_the_contract(self):
        """Every corpus file, read every way under every DOI and exchange type, raises only DecodeError and what
        decodes re-encodes to the same octets (AssertionError or any other exception fails)."""
        files = corpus_files()
        self.assertGreater(len(files), 100)
        for path in files:
            try:
                check(path.read_bytes(), exhaustive=True)
            except Exception as e:
                self.fail(f"{path.name}: {type(e).__name__}: {e}")

    def test_corpus_reaches_every_payload_class(self):
        """Between them the corpus files decode, as messages or as one payload's body, to every registered payload
        class (GDOI's included) and both TEK forms: a corpus that lost its meaning fails here."""
        seen = set()
        for path in corpus_files():
            data = path.read_bytes()
            if len(data) < HEADER_SIZE:
                continue
            sized = data[:24] + struct.pack("!I", len(data)) + data[HEADER_SIZE:]
            body = data[HEADER_SIZE:]
            framed = struct.pack("!BBH", 0, 0, len(body) + 4) + body
            for doi in DOIS:
                for xchg in EXCHANGES:
                    ctx = context_for(doi, xchg)
                    for decode in (lambda: decode_message(sized, doi, ctx).payloads,
                                   lambda: decode_chain(data[16], framed, ctx)[0]):
                        try:
                            seen |= _classes(decode())
                        except DecodeError:
                            pass
        wanted = set(REGISTRY.table(1).values()) | set(REGISTRY.table(2).values()) | {GroupSA, IPsecTEK, IEC61850TEK}
        self.assertEqual({c.__name__ for c in wanted - seen}, set())

    def test_corpus_decrypts_under_the_fixed_keys(self):
        """The corpus holds messages that each fixed key (AES-128, 3DES) decrypts to payloads, a GROUPKEY-PULL
        among them, so that the replay takes the cipher's decrypt path through to a decoded body."""
        decrypted = set()
        for path in corpus_files():
            try:
                m = decode_message(path.read_bytes(), DOI.GDOI)
            except DecodeError:
                continue
            if m.ciphertext is None:
                continue
            for cipher, key, iv in KEYS:
                try:
                    clear, _ = decrypt_message(m, key, iv, cipher, DOI.GDOI)
                except DecodeError:
                    continue
                if clear.payloads:
                    decrypted.add((cipher.name, m.exchange_type))
        self.assertEqual({name for name, _ in decrypted}, {cipher.name for cipher, _, _ in KEYS})
        self.assertIn(ExchangeType.GROUPKEY_PULL, {xchg for _, xchg in decrypted})

    def test_corpus_stays_small(self):
        """The corpus stays under 2,000 files and 2 MB, so that replaying it keeps CI fast."""
        files = corpus_files()
        self.assertLess(len(files), 2000)
        self.assertLess(sum(p.stat().st_size for p in files), 2 * 1024 * 1024)

    def test_check_catches_a_broken_encoder(self):
        """The harness notices an encoder that no longer gives back what was decoded (here a Nonce that gains an
        octet), so the replay above can fail."""
        data = messages.by_name("MM3").message.encode()
        check(data)
        self.patch(Nonce, "encode_body", lambda self, ctx: self.nonce_data + b"\0")
        self.assertRaises(AssertionError, check, data)

    def test_check_catches_amplification(self):
        """The harness notices a decoder whose result outgrows its input (here a Delete that reads its twelve
        octets as 65,535 SPIs of no octets, as the codec once did), so the replay fails on such a flaw."""
        data = messages.by_name("INFO-delete-esp").message.encode()
        check(data)

        def decode_body(cls, body, ctx):
            return cls(1, 3, (b"",) * 0xFFFF, 0)

        self.patch(Delete, "decode_body", classmethod(decode_body))
        e = self.assertRaises(AssertionError, check, data)
        self.assertIn("decoded to", str(e))


def h(text: str) -> bytes:
    """Octets from commented hex: everything after '#' on a line is a comment, whitespace is ignored."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()).replace(" ", ""))


def _warm(*tv: bytes) -> None:
    """Put TV attributes in the decoder's cache, as an earlier peer's messages would."""
    for octets in tv:
        decode_attributes(octets)


class CrashRegressionTests(_KeepsAttributeCache, SynchronousTestCase):
    """Inputs the fuzzer broke the contract with, each kept as a case of its own."""

    def test_attribute_cache_stops_at_end(self):
        """crash-ecaa6f69: with TV attribute 8003 0004 in the cache, the one octet 80 (a run ending mid-attribute)
        decoded as that attribute, reading three octets past its end.  It is PAYLOAD-MALFORMED, cache or not."""
        data = h("80 030004")  # 80: the run of one octet; 03 00 04: the octets after its end
        _warm(data)
        with self.assertRaises(DecodeError) as e:
            decode_attributes(data, 0, 1)
        self.assertEqual(e.exception.reason, "truncated data attribute")

    def test_crash_ecaa6f69_input(self):
        """The fuzzer's input for crash-ecaa6f69 (attributes read to three octets before its end) keeps the
        contract."""
        check(h("""
            0101010101010101   # Initiator Cookie
            0202020202020202   # Responder Cookie
            16 10 21 ff        # Next Payload 22 (GAP), version 1.0, exchange 33, flags 0xff (refused as a message)
            ff000000           # Message ID: its first octet & 3 = 3 trims the attributes view to octet 28 alone
            00000020           # Length 32
            80 030004          # one octet of attributes (80), then three past the trimmed end
        """), exhaustive=True)

    def test_transform_attributes_stop_at_transform_end(self):
        """The same flaw on the wire: a Transform whose attributes end two octets into an attribute took two
        octets of the next Transform's header, once an earlier message had put 800e 0000 in the cache, and the SA
        encoded two octets longer than it came.  Now it is PAYLOAD-MALFORMED whatever the cache holds."""
        sa_body = h("""
            00000001 00000001  # DOI: IPsec; Situation: SIT_IDENTITY_ONLY
            00 00 001a         # Proposal: Next Payload none, RESERVED, Payload Length 26
            01 01 00 02        # Proposal #1, PROTO_ISAKMP, SPI Size 0, 2 Transforms
            03 00 000a         # Transform: Next Payload T, RESERVED, Payload Length 10 (2 octets of attributes)
            01 01 0000         # Transform #1, KEY_IKE, RESERVED2
            800e               # half an attribute: Key Length, and no value
            00 00 0008         # Transform: Next Payload none, RESERVED, Payload Length 8
            02 01 0000         # Transform #2, KEY_IKE, RESERVED2
        """)
        framed = struct.pack("!BBH", 0, 0, len(sa_body) + 4) + sa_body
        _warm(bytes.fromhex("800e0000"))
        with self.assertRaises(DecodeError) as e:
            decode_chain(1, framed, context_for(1, 2))
        self.assertEqual(e.exception.reason, "truncated data attribute")
        check(bytes(HEADER_SIZE) + sa_body, exhaustive=True)  # the SA body as view C reads it

    def test_delete_of_zero_size_spis_refused(self):
        """A Delete with SPI Size 0 and Number of SPIs 65535 (RFC 2408 section 3.15) is twelve octets that decoded
        to 65,535 SPIs of no octets: about 12 ms and 0.5 MB each, so one datagram of 5,456 of them held 2.7 GB
        and minutes of CPU.  An SPI of no octets names no SA: such a Delete is PAYLOAD-MALFORMED."""
        body = h("""
            00000001           # DOI: IPsec
            03                 # Protocol-ID: PROTO_IPSEC_ESP
            00                 # SPI Size: 0
            ffff               # Number of SPIs: 65535
        """)
        framed = struct.pack("!BBH", 0, 0, len(body) + 4) + body
        with self.assertRaises(DecodeError) as e:
            decode_chain(PayloadType.D, framed)
        self.assertEqual(e.exception.notify, NotifyType.PAYLOAD_MALFORMED)

