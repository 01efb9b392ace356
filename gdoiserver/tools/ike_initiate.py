"""Initiate one IKEv1 Phase 1 with a peer and report the ISAKMP SA: "does a Phase 1 with this peer work?"

    python -m gdoiserver.tools.ike_initiate --config FILE --peer ADDR[:PORT] [--mode main|aggressive]
                                            [--timeout S] [--local ADDR] [--quiet]

The daemon's configuration gives the Phase 1 policy (proposals, pre-shared keys, certificates, our identity,
NAT-T) and the sockets: every ``server.listen`` address is bound, with its NAT-T port, as the daemon binds them,
and the keylog is written when ``keylog.path`` is set.  One exchange (RFC 2409 section 5: Main Mode, or
Aggressive Mode) is started from ``--local`` (default: the listener of the peer's address family on a non-NAT-T
port) to the peer (default port 500).

On success one JSON line goes to stdout: the cookies, the chosen proposal, both IDs, the addresses after any NAT-T
float, the NAT-D findings and the lifetime.  Keys never appear.  On failure (the peer refused, a check failed, no
answer within ``--timeout`` seconds) one JSON line with ``"established": false`` and the reason.  The engine's log
goes to stderr.

Exit status: 0 when the ISAKMP SA is established, 1 when it is not, 2 for a bad command line or configuration.
The SA is left to the peer: nothing is deleted on exit.
"""

import argparse
import ipaddress
import json
import os
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import CannotListenError
from twisted.internet.task import react
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from gdoiserver.codec.constants import IDType, NotifyType
from gdoiserver.config import AUTHS, ENCRYPTIONS, HASHES, ConfigError, load_config, policy_from_config
from gdoiserver.exchanges.factory import MODE_NAMES, Phase1Factory
from gdoiserver.net.ike import Phase1Failed
from gdoiserver.net.protocol import format_address
from gdoiserver.service import GDOIService

IKE_PORT = 500
EXIT_ESTABLISHED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# The configuration's names for the numbers of RFC 2409 appendix A, to show the chosen proposal as it is written.
_ENCRYPTION_NAMES = {number: name for name, number in ENCRYPTIONS.items()}
_HASH_NAMES = {number: name for name, number in HASHES.items()}
_AUTH_NAMES = {number: name for name, number in AUTHS.items()}


class UsageError(Exception):
    """A command-line value that cannot be used; exit status 2."""


def parse_peer(text: str) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` -> (address, port); the port defaults to 500."""
    host, port = text, IKE_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"--peer {text!r}: expected [IPv6] or [IPv6]:PORT")
        port = rest[1:] if rest else port
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
        port = int(port)
    except ValueError:
        raise UsageError(f"--peer {text!r}: expected an IP address with an optional :PORT") from None
    if not 0 < port < 65536:
        raise UsageError(f"--peer {text!r}: port {port} is out of range")
    return str(address), port


def _identity(ident) -> dict:
    """An ID payload as {"type", "value"} (RFC 2407 section 4.6.2.1 names)."""
    try:
        type_name = IDType(ident.id_type).name
    except ValueError:
        type_name = ident.id_type
    try:
        value = ident.value()
    except Exception:  # a malformed subnet mask and the like: show the octets
        value = ident.data
    return {"type": type_name, "value": value.hex() if isinstance(value, bytes) else str(value)}


def _certificate(der: bytes) -> dict:
    cert = x509.load_der_x509_certificate(der)
    return {"subject": cert.subject.rfc4514_string(), "sha256": cert.fingerprint(hashes.SHA256()).hex()}


def describe_sa(sa, mode: str, seconds: float) -> dict:
    """The JSON view of an established :class:`~gdoiserver.exchanges.phase1.ISAKMPSA`, without any key."""
    p = sa.proposal
    view = {
        "established": True,
        "mode": mode,
        "initiator_cookie": sa.initiator_cookie.hex(),
        "responder_cookie": sa.responder_cookie.hex(),
        "local": format_address(*sa.local),
        "peer": format_address(*sa.peer),
        "local_id": _identity(sa.local_id),
        "peer_id": _identity(sa.peer_id),
        "proposal": {
            "encryption": _ENCRYPTION_NAMES.get((p.encryption, p.key_length), p.encryption),
            "hash": _HASH_NAMES.get(p.hash, p.hash),
            "group": p.group,
            "auth": _AUTH_NAMES.get(p.auth, p.auth),
        },
        "lifetime": p.lifetime,
        "nat_t": sa.nat_t,
        "local_behind_nat": sa.local_behind_nat,
        "peer_behind_nat": sa.peer_behind_nat,
        "peer_vendor_ids": [v.hex() for v in sa.peer_vendor_ids],
        "seconds": round(seconds, 3),
    }
    if sa.peer_certificate is not None:
        view["peer_certificate"] = _certificate(sa.peer_certificate)
    return view


def describe_failure(reason: str, notify: int | None, seconds: float) -> dict:
    view = {"established": False, "reason": reason, "seconds": round(seconds, 3)}
    if notify is not None:
        try:
            view["notify"] = NotifyType(notify).name
        except ValueError:
            view["notify"] = notify
    return view


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gdoiserver.tools.ike_initiate",
        description="Initiate one IKEv1 Phase 1 with a peer under a gdoiserver configuration and print the ISAKMP SA"
        " as one JSON line (never its keys).",
    )
    parser.add_argument("--config", required=True, help="the daemon's TOML configuration")
    parser.add_argument("--peer", required=True, type=_peer_argument, help="ADDR[:PORT] or [IPv6][:PORT]")
    parser.add_argument("--mode", choices=sorted(MODE_NAMES), default="main", help="the exchange (default: main)")
    parser.add_argument("--timeout", type=_positive, default=30.0, help="seconds to wait for the SA (default 30)")
    parser.add_argument("--local", type=_address, help="our address to initiate from (one of server.listen)")
    parser.add_argument("--quiet", action="store_true", help="log only warnings and errors to stderr")
    return parser


def _peer_argument(text: str) -> tuple[str, int]:
    try:
        return parse_peer(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _local_for(service: GDOIService, address: str | None, peer: tuple[str, int]) -> tuple[str, int] | None:
    """(address, port) of our non-NAT-T listener on ``address``; without one, None (the engine picks) once a
    listener of the peer's address family is known to exist."""
    bound = [p.local_address for p in service.protocols if p.local_address is not None and not p.is_nat_t]
    if address is None:
        version = ipaddress.ip_address(peer[0]).version
        if not any(ipaddress.ip_address(b[0]).version == version for b in bound):
            raise UsageError(f"no server.listen address is IPv{version} like the peer {format_address(*peer)}")
        return None
    for b in bound:
        if ipaddress.ip_address(b[0]) == ipaddress.ip_address(address):
            return b
    raise UsageError(f"--local {address}: no server.listen entry (other than the NAT-T port) has that address")


def _emit(view: dict) -> None:
    sys.stdout.write(json.dumps(view) + "\n")
    sys.stdout.flush()


def _start_logging(quiet: bool) -> None:
    level = LogLevel.warn if quiet else LogLevel.info
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(level)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


async def main(reactor, argv=None) -> None:
    """Run one Phase 1 (see the module notes); ends with SystemExit carrying the exit status."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        policy = policy_from_config(config, args.config)
    except ConfigError as e:
        print(f"ike_initiate: configuration error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    _start_logging(args.quiet)
    service = GDOIService(config, reactor, factory=Phase1Factory(policy), rng=os.urandom)
    started = time.monotonic()
    try:
        try:
            service.startService()
        except CannotListenError as e:
            _emit(describe_failure(f"cannot listen: {e}", None, 0.0))
            raise SystemExit(EXIT_FAILED) from None
        local = _local_for(service, args.local, args.peer)
        result = service.engine.initiate(args.peer, local, mode=args.mode)
        result.addTimeout(args.timeout, reactor)
        try:
            sa = await result
        except Phase1Failed as e:
            _emit(describe_failure(e.reason, e.notify, time.monotonic() - started))
            raise SystemExit(EXIT_FAILED) from None
        except DeferredTimeout:
            reason = f"no ISAKMP SA with {format_address(*args.peer)} within {args.timeout:g} s"
            _emit(describe_failure(reason, None, time.monotonic() - started))
            raise SystemExit(EXIT_FAILED) from None
        _emit(describe_sa(sa, args.mode, time.monotonic() - started))
    except UsageError as e:
        print(f"ike_initiate: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    finally:
        await service.stopService()
    raise SystemExit(EXIT_ESTABLISHED)


if __name__ == "__main__":
    react(main, (sys.argv[1:],))
