"""Print the ISAKMP messages of a pcap or pcapng capture as JSON lines, and check that each re-encodes exactly.

    python -m gdoiserver.tools.pcapdump FILE [--doi N] [--keylog KEYLOG]

One line per ISAKMP message (UDP 500, 848, and 4500 behind the non-ESP marker): frame number and time, addresses
and ports, the header, the payload chain and every unencrypted payload's fields.  With ``--keylog`` (one
``<initiator cookie hex>,<encryption key hex>`` line per ISAKMP SA, as Wireshark's ikev1_decryption_table and the
daemon's keylog have it, and one ``KEK <KEK SPI hex> <key hex> <key bits>`` line per GDOI KEK) encrypted messages
are decrypted too, GROUPKEY-PUSH messages under their KEK: their line shows the decrypted payloads with
``"decrypted": true`` and must re-encrypt to the captured octets, or carries ``decrypt_error`` with the reason.

Exit status: 0 when every message decodes and re-encodes (re-encrypts) to its own octets and, with --keylog, every
encrypted message decrypts; 1 when one does not (its line carries ``error`` or ``decrypt_error``); 2 when the
capture or the keylog cannot be read.
"""

import argparse
import json
import sys
from collections.abc import Callable

from gdoiserver.codec import DOI, Context, DecodeError, EncodeError, Message, decode_message
from gdoiserver.codec.payload import RFC3547, RFC6407
from gdoiserver.tools.decrypt import Decryption, Decryptor, KeylogError, kek_decryptors, read_keys
from gdoiserver.tools.jsonview import message_view
from gdoiserver.tools.pcap import CaptureError, Datagram, isakmp_messages, read_udp

#: IANA's UDP port for GDOI (gdoi 848/udp); messages to or from it are read under DOI 2 unless told otherwise.
GDOI_PORT = 848

#: The decryption hook.  It is called with (datagram, message, doi) for every decoded message in capture order, so
#: that it can follow each exchange (IKEv1 IVs chain from message to message, RFC 2409 appendix B).  For an
#: encrypted message it returns the message with its body decrypted (see :meth:`Message.with_plaintext`), or a
#: :class:`Decryption` (the decrypted message and the IV chain to re-encrypt it with, or why it does not decrypt),
#: or None when it has nothing to say; it may raise DecodeError when the plaintext does not decode.
#: :class:`gdoiserver.tools.decrypt.Decryptor` is one.
DecryptionHook = Callable[[Datagram, Message, int], Decryption | Message | None]


def message_doi(d: Datagram, doi: int | None = None) -> int:
    """The DOI to read a message under: ``doi`` if given, else GDOI on the GDOI port and the IPsec DOI elsewhere."""
    if doi is not None:
        return doi
    return DOI.GDOI if GDOI_PORT in (d.sport, d.dport) else DOI.IPSEC


def _error(e: DecodeError) -> dict:
    return {"notify": e.notify.name, "reason": e.reason, "offset": e.offset}


def _reencode_error(message: Message, data: bytes, doi: int, chain=None) -> dict | None:
    """None when ``message`` encodes back to ``data`` (encrypted under the IV chain ``chain`` if given); GDOI
    messages may be in either RFC's layout."""
    verb = "re-encrypt" if chain is not None else "re-encode"
    failure = None
    for layout in (RFC6407, RFC3547) if doi == DOI.GDOI else (RFC6407,):
        ctx = Context(doi=doi, exchange_type=message.exchange_type, gdoi_format=layout)
        try:
            again = chain.encrypt(message, ctx)[0] if chain is not None else message.encode(ctx)
        except EncodeError as e:
            failure = failure or {"reason": f"does not {verb}: {e}", "offset": None}
            continue
        if again == data:
            return None
        offset = next((i for i, (a, b) in enumerate(zip(again, data)) if a != b), min(len(again), len(data)))
        failure = failure or {"reason": f"{verb}s to different octets ({len(again)} for {len(data)})",
                              "offset": offset}
    return failure


def describe(d: Datagram, data: bytes, doi: int | None = None, decryptor: DecryptionHook | None = None) -> dict:
    """The JSON line for one ISAKMP message ``data`` carried by ``d``; it holds ``error`` when the check fails and
    ``decrypt_error`` when ``decryptor`` cannot decrypt it."""
    doi = message_doi(d, doi)
    line = {"frame": d.frame, "time": d.time, "src": d.src, "sport": d.sport, "dst": d.dst, "dport": d.dport,
            "doi": doi, "length": len(data)}
    if len(data) != len(d.payload):
        line["non_esp_marker"] = True
    try:
        message = decode_message(data, doi)
    except DecodeError as e:
        line["error"] = _error(e)
        return line
    line.update(message_view(message, doi))
    failure = _reencode_error(message, data, doi)
    if failure:
        line["error"] = failure
    if decryptor is not None:
        try:
            result = decryptor(d, message, doi)
        except DecodeError as e:
            line.setdefault("error", _error(e))
            return line
        if isinstance(result, Message):
            result = Decryption(result)
        if result is not None and message.encrypted:
            _show_decryption(line, result, data, doi)
    return line


def _show_decryption(line: dict, result: Decryption, data: bytes, doi: int) -> None:
    if result.retransmission:
        line["retransmission"] = True
    if result.error is not None:
        line["decrypt_error"] = result.error
        return
    view = message_view(result.message, doi)
    line.update(chain=view["chain"], payloads=view["payloads"], decrypted=True)
    if "padding" in view:
        line["padding"] = view["padding"]
    if result.chain is not None:  # the round trip of an encrypted message: decrypt, decode, encode, encrypt
        failure = _reencode_error(result.message, data, doi, result.chain)
        if failure:
            line.setdefault("error", failure)


def dump(source, out, doi: int | None = None, decryptor: DecryptionHook | None = None, notes=None) -> int:
    """Write one JSON line per ISAKMP message of the capture ``source`` to ``out``; return 1 if any failed to
    decode, re-encode or decrypt, else 0.

    Raises :class:`CaptureError` (or OSError) when the capture cannot be read; lines already written stay.
    """
    status = 0
    for d, data in isakmp_messages(read_udp(source, notes)):
        line = describe(d, data, doi, decryptor)
        if "error" in line or "decrypt_error" in line:
            status = 1
        out.write(json.dumps(line) + "\n")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gdoiserver.tools.pcapdump",
        description="Print the ISAKMP messages of a pcap or pcapng capture as JSON lines and check that each "
        "decodes and re-encodes to the same octets (exit 1 if not, or if --keylog is given and an encrypted message "
        "does not decrypt; 2 if the capture or the keylog cannot be read).",
    )
    parser.add_argument("file", help="pcap or pcapng capture")
    parser.add_argument("--doi", type=int, help="read every message under this DOI (default: 2 on UDP 848, else 1)")
    parser.add_argument("--keylog", metavar="KEYLOG", help="decrypt with the keys of this file: one "
                        "'<initiator cookie hex>,<encryption key hex>' line per ISAKMP SA and one "
                        "'KEK <KEK SPI hex> <key hex> <key bits>' line per GDOI KEK (# starts a comment)")
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported by argparse
        return e.code if isinstance(e.code, int) else 2

    def note(message, path=args.file):
        print(f"pcapdump: {path}: {message}", file=sys.stderr)

    decryptor = None
    if args.keylog is not None:
        try:
            keys = read_keys(args.keylog)
            decryptor = Decryptor(keys.phase1, kek_decryptors(keys.keks))
        except KeylogError as e:
            note(e.reason, f"{e.source}:{e.line}")
            return 2
        except OSError as e:
            note(e.strerror or e, args.keylog)
            return 2
    try:
        return dump(args.file, sys.stdout, args.doi, decryptor, notes=note)
    except CaptureError as e:
        note(e)
    except OSError as e:
        note(e.strerror or e)
    return 2


if __name__ == "__main__":
    sys.exit(main())
