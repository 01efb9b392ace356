"""Enroll this host in GDOI groups: one command, one config file.

    python -m gdoiserver.tools.gdoi_member --config FILE [--once] [--timeout S] [--quiet]

The member's configuration (``etc/member.toml``, :mod:`gdoiserver.member.config`) names the key servers, in
fallback order, the groups, our identity and the PSK or certificate.  Each registration (RFC 6407 GROUPKEY-PULL)
goes to the configured sink and, as one JSON line without keys, to stdout: the group, the key server, the TEKs
(SPI, transform, selectors, lifetime, sender IDs) and the KEK.

With ``--once`` every group is registered once and the command exits: 0 when every group registered, 1 when one
did not (a JSON line with ``"registered": false`` and the reasons says why), 2 for a bad command line or
configuration.  Without it the member stays enrolled, registering again before the TEKs expire, until it is
stopped (SIGINT or SIGTERM).  The log goes to stderr.
"""

import argparse
import json
import sys

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.task import react
from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner
from twisted.logger import textFileLogObserver

from gdoiserver.config import ConfigError
from gdoiserver.member.config import load_member_config
from gdoiserver.member.service import GroupMember, RegistrationFailed
from gdoiserver.member.sink import SinkError, registration_record

EXIT_REGISTERED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gdoiserver.tools.gdoi_member",
        description="Enroll this host in the GDOI groups of a member configuration and print each registration as "
        "one JSON line (never its keys).",
    )
    parser.add_argument("--config", required=True, help="the member's TOML configuration")
    parser.add_argument("--once", action="store_true", help="register every group once, print, and exit")
    parser.add_argument("--timeout", type=_positive, default=120.0,
                        help="with --once: seconds to wait for every group (default 120)")
    parser.add_argument("--quiet", action="store_true", help="log only warnings and errors to stderr")
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _emit(view: dict, out) -> None:
    out.write(json.dumps(view, sort_keys=True) + "\n")
    out.flush()


def registered_view(entry, registration) -> dict:
    return {"registered": True, "name": entry.name, **registration_record(registration)}


def failed_view(entry, error: Exception) -> dict:
    view = {"registered": False, "group": str(entry.group_id), "name": entry.name, "reason": str(error)}
    if isinstance(error, RegistrationFailed):
        view["attempts"] = error.attempts
    return view


def _start_logging(quiet: bool) -> None:
    level = LogLevel.warn if quiet else LogLevel.info
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(level)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


async def run(reactor, argv, out=None, *, start_logging: bool = True) -> int:
    """Run the command (see the module notes) and return its exit status."""
    out = sys.stdout if out is None else out
    args = _parser().parse_args(argv)
    try:
        setup = load_member_config(args.config)
        member = GroupMember(setup, reactor, automatic=not args.once)
    except (ConfigError, SinkError) as e:
        print(f"gdoi_member: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if start_logging:
        _start_logging(args.quiet)
    try:
        member.startService()
    except CannotListenError as e:
        _emit({"registered": False, "reason": f"cannot listen: {e}"}, out)
        return EXIT_FAILED
    try:
        if not args.once:
            member.on_registered.append(lambda entry, reg: _emit(registered_view(entry, reg), out))
            member.on_failed.append(lambda entry, error: _emit(failed_view(entry, error), out))
            stopped = defer.Deferred()
            reactor.addSystemEventTrigger("before", "shutdown", stopped.callback, None)
            await stopped
            return EXIT_REGISTERED
        status = EXIT_REGISTERED
        for entry in setup.config.groups:
            d = member.register(entry.group_id)
            d.addTimeout(args.timeout, reactor)
            try:
                registration = await d
            except (RegistrationFailed, defer.TimeoutError) as e:
                _emit(failed_view(entry, e), out)
                status = EXIT_FAILED
                continue
            _emit(registered_view(entry, registration), out)
        return status
    finally:
        await member.stopService()


async def _main(reactor, argv) -> None:
    raise SystemExit(await run(reactor, argv))


def main(argv=None) -> None:
    react(lambda reactor: defer.Deferred.fromCoroutine(_main(reactor, sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
