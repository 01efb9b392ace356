"""Print the ISAKMP messages of a pcap or pcapng capture as JSON lines, and check that each re-encodes exactly.

    python -m gdoiserver.tools.pcapdump FILE [--doi N]

One line per ISAKMP message (UDP 500, 848, and 4500 behind the non-ESP marker): frame number and time, addresses
and ports, the header, the payload chain and every unencrypted payload's fields.  Exit status: 0 when every message
decodes and re-encodes to its own octets, 1 when one does not (its line carries ``error``), 2 when the capture
cannot be read.
"""

import argparse
import json
import sys
from collections.abc import Callable

from gdoiserver.codec import DOI, Context, DecodeError, EncodeError, Message, decode_message
from gdoiserver.codec.payload import RFC3547, RFC6407
from gdoiserver.tools.jsonview import message_view
from gdoiserver.tools.pcap import CaptureError, Datagram, isakmp_messages, read_udp

#: IANA's UDP port for GDOI (gdoi 848/udp); messages to or from it are read under DOI 2 unless told otherwise.
GDOI_PORT = 848

#: The decryption hook.  It is called with (datagram, message, doi) for every decoded message in capture order, so
#: that it can follow each exchange (IKEv1 IVs chain from message to message, RFC 2409 appendix B).  For an
#: encrypted message it returns the message with its body decrypted (see :meth:`Message.with_plaintext`), or None
#: when it holds no key for it; it raises DecodeError when the plaintext does not decode.
Decryptor = Callable[[Datagram, Message, int], Message | None]


def message_doi(d: Datagram, doi: int | None = None) -> int:
    """The DOI to read a message under: ``doi`` if given, else GDOI on the GDOI port and the IPsec DOI elsewhere."""
    if doi is not None:
        return doi
    return DOI.GDOI if GDOI_PORT in (d.sport, d.dport) else DOI.IPSEC


def _error(e: DecodeError) -> dict:
    return {"notify": e.notify.name, "reason": e.reason, "offset": e.offset}


def _reencode_error(message: Message, data: bytes, doi: int) -> dict | None:
    """None when ``message`` encodes back to ``data``; GDOI messages may be in either RFC's layout."""
    failure = None
    for layout in (RFC6407, RFC3547) if doi == DOI.GDOI else (RFC6407,):
        try:
            again = message.encode(Context(doi=doi, exchange_type=message.exchange_type, gdoi_format=layout))
        except EncodeError as e:
            failure = failure or {"reason": f"does not re-encode: {e}", "offset": None}
            continue
        if again == data:
            return None
        offset = next((i for i, (a, b) in enumerate(zip(again, data)) if a != b), min(len(again), len(data)))
        failure = failure or {"reason": f"re-encodes to different octets ({len(again)} for {len(data)})",
                              "offset": offset}
    return failure


def describe(d: Datagram, data: bytes, doi: int | None = None, decryptor: Decryptor | None = None) -> dict:
    """The JSON line for one ISAKMP message ``data`` carried by ``d``; it holds ``error`` when the check fails."""
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
            clear = decryptor(d, message, doi)
        except DecodeError as e:
            line.setdefault("error", _error(e))
            return line
        if clear is not None and message.encrypted:
            view = message_view(clear, doi)
            line.update(chain=view["chain"], payloads=view["payloads"], decrypted=True)
            if "padding" in view:
                line["padding"] = view["padding"]
    return line


def dump(source, out, doi: int | None = None, decryptor: Decryptor | None = None, notes=None) -> int:
    """Write one JSON line per ISAKMP message of the capture ``source`` to ``out``; return 1 if any failed, else 0.

    Raises :class:`CaptureError` (or OSError) when the capture cannot be read; lines already written stay.
    """
    status = 0
    for d, data in isakmp_messages(read_udp(source, notes)):
        line = describe(d, data, doi, decryptor)
        if "error" in line:
            status = 1
        out.write(json.dumps(line) + "\n")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gdoiserver.tools.pcapdump",
        description="Print the ISAKMP messages of a pcap or pcapng capture as JSON lines and check that each "
        "decodes and re-encodes to the same octets (exit 1 if not, 2 if the capture cannot be read).",
    )
    parser.add_argument("file", help="pcap or pcapng capture")
    parser.add_argument("--doi", type=int, help="read every message under this DOI (default: 2 on UDP 848, else 1)")
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported by argparse
        return e.code if isinstance(e.code, int) else 2

    def note(message):
        print(f"pcapdump: {args.file}: {message}", file=sys.stderr)

    try:
        return dump(args.file, sys.stdout, args.doi, notes=note)
    except CaptureError as e:
        note(e)
    except OSError as e:
        note(e.strerror or e)
    return 2


if __name__ == "__main__":
    sys.exit(main())
