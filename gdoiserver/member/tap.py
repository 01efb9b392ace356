"""``twistd gdoi-member`` (and ``twist gdoi-member``): the group member as a daemon."""

import os
import sys

from twisted.logger import Logger
from twisted.python import usage

from gdoiserver.config import ConfigError
from gdoiserver.member.config import load_member_config
from gdoiserver.member.sink import SinkError, sink_for

DEFAULT_CONFIG = os.path.join("etc", "member.toml")
log = Logger()


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = ("Enroll this host in GDOI groups (RFC 6407) with the key servers of a TOML file, keep it enrolled, "
                "and hand the group keys to an SA sink.")
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The member's TOML configuration file."],
    ]


def load(path: str):
    """The member's checked configuration and its SA sink, as start-up and ``gdoictl check-config`` make them; a
    sink that cannot work (the kernel refuses XFRM) is a :class:`ConfigError` at ``sink.xfrm``.  The caller owns
    the sink (``close()`` it when not used)."""
    setup = load_member_config(path)
    try:
        sink = sink_for(setup.config.sink)
    except SinkError as e:
        raise ConfigError(path, "sink.xfrm", str(e)) from None
    return setup, sink


def makeService(options: Options):
    """The group member configured from ``--config``.  A configuration error, or a sink that cannot work, ends the
    process here with one line on stderr and exit status EX_CONFIG (78)."""
    from gdoiserver.member.service import GroupMember

    try:
        setup, sink = load(options["config"])
    except ConfigError as e:
        print(f"gdoi-member: configuration error: {e}", file=sys.stderr)
        raise SystemExit(os.EX_CONFIG) from None
    from twisted.internet import reactor

    member = GroupMember(setup, reactor, sink=sink)
    log.info("configuration read from {path}", path=options["config"])
    return member
