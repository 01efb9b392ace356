#!/usr/bin/env python3
"""Coverage-guided fuzzing of the sans-IO codec with atheris (issue 9), and the contract the corpus is held to.

Every input is read five ways, so that one corpus file exercises every decoder:

A. the whole input as an ISAKMP message (its header's Length set to the input's size), under DOI 1 and 2;
   a message with the Encryption bit is decrypted with a fixed key and IV (AES-128-CBC and 3DES-CBC);
B. octets 28 onwards as the decrypted body of a message (``Message.with_plaintext``, padding allowed), then
   encrypted with the fixed AES key and decrypted again;
C. octets 28 onwards as the body of one payload of the type named by octet 16 (the header's Next Payload), under
   the exchange type of octet 18; :func:`check` with ``exhaustive=True`` tries every registered payload type;
D. octets 28 onwards as data attributes (RFC 2408 section 3.3), to the end and to a few octets before it;
E. octets 28 onwards as an ESP/AH TEK and an IEC 61850 TEK (RFC 6407 section 5.4.1; RFC 8052 section 2.2).

The contract (:func:`check` raises AssertionError, or lets the stray exception out, when it is broken): decoding
raises :class:`DecodeError` and nothing else; whatever decodes encodes back to the same octets, and decoding those
gives an equal object; what decodes holds no more elements (payloads, proposals, SPIs, attributes, ...) than the
input has octets, so no input amplifies into work or memory; :func:`grammar.check`, ``Identification.value()``
and ``Selector.value()`` on whatever decoded raise nothing but DecodeError.

    python fuzz/codec_fuzz.py --write-seeds SEEDS                   # the seed corpus, from tests/ and the pcap
    python fuzz/codec_fuzz.py WORK SEEDS fuzz/corpus/codec -max_total_time=2400 -max_len=4096   # libFuzzer flags

fuzz/README.md gives the whole procedure (several jobs, merging, the CI replay).
"""

import contextlib
import os
import sys

if __name__ == "__main__":  # run as a script: the repository root holds gdoiserver and tests
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__" and "--write-seeds" not in sys.argv:
    import atheris

    _instrumented = atheris.instrument_imports(include=["gdoiserver"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    import struct

    import attrs

    from gdoiserver.codec import attributes as _attributes
    from gdoiserver.codec import grammar
    from gdoiserver.codec.attributes import Attribute, decode_attributes, encode_attributes
    from gdoiserver.codec.cipher import CIPHERS, decrypt_message, encrypt_message, pad
    from gdoiserver.codec.constants import DOI, ExchangeType, Flags, OakleyEncryption, PayloadType
    from gdoiserver.codec.errors import DecodeError
    from gdoiserver.codec.gdoi import SAK, SAT, GroupSA, IEC61850TEK, IPsecTEK
    from gdoiserver.codec.message import HEADER_SIZE, Message, decode_message
    from gdoiserver.codec.payload import REGISTRY, context_for, decode_chain, encode_chain
    from gdoiserver.codec.payloads import Identification

#: The exchange types the corpus is replayed under: Main Mode, Aggressive, Informational, 32 and 33.
EXCHANGES = (ExchangeType.MAIN_MODE, ExchangeType.AGGRESSIVE, ExchangeType.INFORMATIONAL,
             ExchangeType.QUICK_MODE, ExchangeType.GROUPKEY_PUSH)
DOIS = (DOI.IPSEC, DOI.GDOI)
#: Every payload type registered under either DOI, and a type nobody registered (kept as UnknownPayload).
PAYLOAD_TYPES = tuple(sorted(REGISTRY.known_types(DOI.IPSEC) | REGISTRY.known_types(DOI.GDOI) | {14}))

# Fixed keys: RFC 3602 section 4 case #1 for AES-128-CBC; any 24 octets for 3DES-CBC (RFC 2451).
AES128 = CIPHERS[(OakleyEncryption.AES_CBC, 128)]
TDES = CIPHERS[(OakleyEncryption.TRIPLEDES_CBC, 192)]
KEYS = (
    (AES128, bytes.fromhex("06a9214036b8a15b512e03d534120006"), bytes.fromhex("3dafba429d9eb430b422da802c9fac41")),
    (TDES, bytes(range(1, 25)), bytes(range(8))),
)
_COOKIES = (b"\x01" * 8, b"\x02" * 8)

#: The TV attributes the decoder's cache is reset to before each input: types 1 to 16 with small values and the
#: usual key lengths and lifetimes, as a long-running server's cache would hold them.  Resetting it makes every
#: input's result independent of the inputs before it.
_WARM = {
    struct.pack("!HH", 0x8000 | t, v): Attribute(t, v)
    for t in range(1, 17)
    for v in (*range(17), 128, 192, 256, 3600, 28800)
}


def _reset_cache() -> None:
    cache = _attributes._TV_DECODED
    cache.clear()
    cache.update(_WARM)


def _values(payloads) -> None:
    """Read every identification inside ``payloads`` (ID payloads, SAK and SAT selectors) by its ID type."""
    for p in payloads:
        try:
            if isinstance(p, Identification):
                p.value()
            elif isinstance(p, GroupSA):
                _values(p.payloads)
            elif isinstance(p, SAK) or (isinstance(p, SAT) and isinstance(p.tek, IPsecTEK)):
                s = p if isinstance(p, SAK) else p.tek
                s.src.value()
                s.dst.value()
        except DecodeError:
            pass


def _grammar(message: Message) -> None:
    for rule in grammar.RULES.values():
        try:
            grammar.check(message, rule)
        except DecodeError:
            pass


def _items(obj) -> int:
    """How many elements the tuples of a decoded object hold, those of nested objects and attributes included."""
    if isinstance(obj, tuple):
        return len(obj) + sum(_items(x) for x in obj if not isinstance(x, (int, bytes)))
    if attrs.has(type(obj)):
        return sum(_items(getattr(obj, a.name)) for a in attrs.fields(type(obj)))
    return 0


def _bounded(what: str, decoded, octets: int) -> None:
    """No amplification: a decoded object holds no more elements than the octets it came from."""
    n = _items(decoded)
    if n > octets:
        raise AssertionError(f"{what}: {octets} octets decoded to {n} elements")


def _same(what: str, got, want) -> None:
    if got == want:
        return
    if isinstance(got, bytes) and isinstance(want, bytes):
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise AssertionError(f"{what}: {len(got)} octets against {len(want)}, first difference at offset {at}: "
                             f"{got[at:at + 8].hex()} != {want[at:at + 8].hex()}")
    raise AssertionError(f"{what}: {got!r:.300} != {want!r:.300}")


def _message(data: bytes, ctx) -> None:
    """View A: ``data`` as a message; re-encoding gives ``data``, decoding that gives the same message."""
    try:
        m = decode_message(data, ctx.doi, ctx)
    except DecodeError:
        return
    _bounded("message", m, len(data))
    encoded = m.encode(ctx)
    _same("message re-encoded", encoded, data)
    _same("message decoded again", decode_message(encoded, ctx.doi, ctx), m)
    if m.ciphertext is None:
        _values(m.payloads)
        _grammar(m)
        return
    for cipher, key, iv in KEYS:
        try:
            clear, next_iv = decrypt_message(m, key, iv, cipher, ctx.doi, ctx)
        except DecodeError:
            continue
        _same("next IV", next_iv, m.ciphertext[-cipher.block_size :])
        _same("decrypted body", clear.body(ctx), cipher.decrypt(key, iv, m.ciphertext))
        if clear.payloads:
            _same("re-encrypted message", encrypt_message(clear, key, iv, cipher, ctx)[0], data)
        _values(clear.payloads)
        _grammar(clear)


def _plaintext(data: bytes, ctx) -> None:
    """View B: octets 28 onwards as a decrypted body; then through AES-128-CBC with the fixed key and back."""
    cipher, key, iv = KEYS[0]
    body = pad(data[HEADER_SIZE:], cipher.block_size)
    nxt = data[16]
    shell = Message(*_COOKIES, ctx.exchange_type, Flags.ENCRYPTION, 7, ciphertext=b"", next_payload=nxt)
    try:
        m = shell.with_plaintext(body, ctx.doi, ctx)
    except DecodeError:
        return
    _bounded("decrypted body", m, len(body))
    _same("decrypted body re-encoded", m.body(ctx), body)
    _values(m.payloads)
    _grammar(m)
    if not m.payloads:
        return
    datagram, next_iv = encrypt_message(m, key, iv, cipher, ctx)
    again, after = decrypt_message(decode_message(datagram, ctx.doi, ctx), key, iv, cipher, ctx.doi, ctx)
    _same("decrypted after encryption", again, m)
    _same("next IV", after, next_iv)


def _payload(payload_type: int, body: bytes, ctx) -> None:
    """View C: ``body`` as the body of one payload of ``payload_type``."""
    framed = struct.pack("!BBH", 0, 0, len(body) + 4) + body
    try:
        payloads, end = decode_chain(payload_type, framed, ctx)
    except DecodeError:
        return
    _same("payload end", end, len(framed))
    _bounded(f"payload type {payload_type}", payloads, len(framed))
    encoded = encode_chain(payloads, ctx)
    _same(f"payload type {payload_type} re-encoded", encoded, framed)
    _same(f"payload type {payload_type} decoded again", decode_chain(payload_type, encoded, ctx)[0], payloads)
    _values(payloads)


def _attributes_view(data: bytes, start: int, end: int) -> None:
    """View D: data attributes filling ``data[start:end]``."""
    try:
        attributes = decode_attributes(data, start, end)
    except DecodeError:
        return
    _bounded("attributes", attributes, end - start)
    encoded = encode_attributes(attributes)
    _same(f"attributes [{start}:{end}] re-encoded", encoded, data[start:end])
    _same("attributes decoded again", decode_attributes(encoded), attributes)


def _teks(body: bytes, ctx) -> None:
    """View E: an ESP/AH TEK (either layout) and an IEC 61850 TEK read straight from ``body``."""
    for cls in (IPsecTEK, IEC61850TEK):
        try:
            tek = cls.decode(body, 0)
        except DecodeError:
            continue
        _bounded(cls.__name__, tek, len(body))
        encoded = tek.encode(ctx)
        _same(f"{cls.__name__} re-encoded", encoded, body)
        _same(f"{cls.__name__} decoded again", cls.decode(encoded, 0), tek)


def check(data: bytes, exhaustive: bool = False) -> None:
    """Hold the codec to its contract on ``data``; see the module notes.

    Fuzzing reads the exchange type and payload type from the input's own octets 18 and 16.  ``exhaustive`` (the
    CI corpus replay) tries every exchange type of :data:`EXCHANGES` and every type of :data:`PAYLOAD_TYPES`.
    """
    _reset_cache()
    data = bytes(data)
    if len(data) > 0xFFFF:
        data = data[:0xFFFF]
    exchanges = EXCHANGES if exhaustive else ()
    if len(data) >= HEADER_SIZE:
        sized = data[:24] + struct.pack("!I", len(data)) + data[HEADER_SIZE:]
        exchanges += (data[18],)
    else:
        sized = data
    body = data[HEADER_SIZE:]
    for doi in DOIS:
        for xchg in dict.fromkeys(exchanges or (0,)):
            ctx = context_for(doi, xchg)
            _message(data, ctx)
            if sized != data:
                _message(sized, ctx)
            if len(data) < HEADER_SIZE:
                continue
            _plaintext(data, ctx)
            types = PAYLOAD_TYPES if exhaustive else (data[16],)
            for payload_type in types:
                if payload_type == 1 or xchg == exchanges[0]:  # only the SA payload reads the exchange type
                    _payload(payload_type, body[:0xFFFB], ctx)
    if body:
        _teks(body, context_for(DOI.GDOI, 0))
    if len(data) > HEADER_SIZE:
        _attributes_view(data, HEADER_SIZE, len(data))
        trim = data[20] & 3
        if trim:
            _attributes_view(data, HEADER_SIZE, max(HEADER_SIZE, len(data) - trim))


# --- The seed corpus ------------------------------------------------------------------------------------------------


def _header(next_payload: int, exchange_type: int, body_length: int) -> bytes:
    return struct.pack("!8s8sBBBBII", *_COOKIES, next_payload, 0x10, exchange_type, 0, 0, HEADER_SIZE + body_length)


def seeds():
    """(name, octets) of the seed corpus: tests/corpus.py, the GDOI golden messages and the strongSwan capture
    (its encrypted messages also decrypted, with the Encryption bit both kept and cleared)."""
    import pathlib

    from gdoiserver.tools import pcap
    from gdoiserver.tools.decrypt import Decryptor, read_keylog
    from tests import corpus
    from tests import test_codec_gdoi as golden

    for e in corpus.all_messages():
        yield f"corpus-{e.name}", e.message.encode()
        if e.message.ciphertext is None and e.name in ("MM5", "QM1", "INFO-initial-contact"):
            for cipher, key, iv in KEYS:  # bodies that view A decrypts with the fixed keys
                datagram, _ = encrypt_message(e.message, key, iv, cipher)
                yield f"fixed-key-{cipher.name}-{e.name}", datagram
    yield "gdoi-push", golden.PUSH_MESSAGE
    # Golden GDOI payload bodies behind a header naming their type (views C, D and E read octets 28 onwards).
    P = PayloadType
    bodies = {"SEQ": P.SEQ, "GAP": P.GAP, "GAP_SENDER_ID": P.GAP, "SAK": P.SAK, "SAK_3547": P.SAK, "SAT_ESP": P.SAT,
              "SAT_ESP_3547": P.SAT, "SAT_AH": P.SAT, "SAT_ESP_GROUP_ATTRS": P.SAT, "SAT_IEC61850": P.SAT,
              "SAT_PRIVATE": P.SAT, "KD": P.KD, "KD_LKH_SID": P.KD, "POP": P.POP, "GROUP_ID": P.ID,
              "DELETE_TEK": P.D}
    for name, payload_type in bodies.items():
        body = getattr(golden, f"{name}_BODY")
        yield f"gdoi-body-{name}", _header(payload_type, ExchangeType.GROUPKEY_PUSH, len(body)) + body
        if payload_type == P.SAT:  # the TEK alone, for view E
            yield f"gdoi-tek-{name}", _header(0, ExchangeType.GROUPKEY_PUSH, len(body) - 1) + body[1:]
    for i, m in enumerate(golden.MessageTests().pull_messages(), 1):
        yield f"gdoi-pull{i}", m.encode(golden.PULL)
        yield f"fixed-key-{AES128.name}-gdoi-pull{i}", encrypt_message(m, *KEYS[0][1:], AES128, golden.PULL)[0]
    captures = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "captures"
    decryptor = Decryptor(read_keylog(captures / "strongswan-mm-am.keys"))
    for i, (_, octets) in enumerate(pcap.isakmp_messages(pcap.read_udp(captures / "strongswan-mm-am.pcap")), 1):
        yield f"strongswan-{i}", octets
        d = decryptor.decrypt(decode_message(octets))
        if d is not None and d.message is not None:
            clear = d.message
            yield f"strongswan-{i}-decrypted", clear.encode()
            yield f"strongswan-{i}-decrypted-clear", attrs.evolve(clear, flags=clear.flags & ~Flags.ENCRYPTION).encode()


def write_seeds(directory: str) -> int:
    import pathlib

    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, octets in seeds():
        (out / name).write_bytes(octets)
        n += 1
    return n


def main(argv) -> None:
    if "--write-seeds" in argv:
        print(write_seeds(argv[argv.index("--write-seeds") + 1]), "seed files written")
        return
    for f in (_values, _grammar, _items, _bounded, _message, _plaintext, _payload, _attributes_view, _teks, check):
        atheris.instrument_func(f)  # the harness's own branches (a decryption that succeeds) count as coverage
    atheris.Setup(argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
