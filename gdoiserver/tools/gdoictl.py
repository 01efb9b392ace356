"""gdoictl: the operator's command line for a running gdoiserver, over its control socket, and an offline check of
configuration files.

    gdoictl [--socket PATH | --config FILE] [--json] COMMAND
      status                    uptime, groups, members, SAs, last and next rekey, counters
      members GROUP             each member: identity, address, registration, last rekey acknowledged
      rekey GROUP               rekey the group now
      evict GROUP MEMBER        evict a member (LKH, RFC 6407 section 5.6.3): it is refused until readmitted
      readmit GROUP MEMBER      let an evicted member register again
      sas                       the Phase 1 and Phase 2 SAs
      reload                    read the configuration again
      check-config FILE         check a key server or member configuration (offline), as start-up does

Exit status: 0 done; 1 the daemon refused (the message says why); 69 (EX_UNAVAILABLE) the socket cannot be
reached; 78 (EX_CONFIG) check-config found an error; 73 (EX_CANTCREAT) check-config found the key store unusable
(as start-up would: the configuration itself is good).  The JSON API is HTTP over the UNIX socket
(:mod:`gdoiserver.control.api`); this client needs only the standard library.  No answer holds key material.
"""

import argparse
import http.client
import json
import os
import socket
import sys
import time
import urllib.parse
from typing import Any

from gdoiserver.config import DEFAULT_CONTROL_SOCKET, ConfigError, Control, Invalid, read_toml, table

EX_REFUSED = 1
EX_UNAVAILABLE = getattr(os, "EX_UNAVAILABLE", 69)
EX_CONFIG = getattr(os, "EX_CONFIG", 78)
EX_CANTCREAT = getattr(os, "EX_CANTCREAT", 73)
DEFAULT_SOCKET = DEFAULT_CONTROL_SOCKET
API = "/v1"


class Unreachable(Exception):
    """The control socket cannot be reached: the message says what happened and what to try."""


class Refused(Exception):
    """The daemon answered with an error: its message and the HTTP status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message = message
        self.status = status


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a UNIX stream socket."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    """The control API's calls; each returns the decoded JSON answer or raises :class:`Refused` or
    :class:`Unreachable`."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float = 60.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        connection = _UnixHTTPConnection(self.socket_path, self.timeout)
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            connection.request(method, API + path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (socket.timeout, TimeoutError):
            raise Unreachable(f"no answer on {self.socket_path} within {self.timeout:g} s (is the daemon busy or "
                              "stuck?)") from None
        except PermissionError as e:
            raise Unreachable(f"cannot reach the daemon at {self.socket_path}: {e.strerror} (the socket admits only "
                              "its owner: run gdoictl as the daemon's user)") from None
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise Unreachable(f"cannot reach the daemon at {self.socket_path}: {reason} (is gdoiserver running? "
                              "--socket PATH or --config FILE names its control socket)") from None
        finally:
            connection.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            raise Unreachable(f"{self.socket_path} answered {response.status} with something other than JSON: is "
                              "it a gdoiserver control socket?") from None
        if response.status != 200:
            message = answer.get("error") if isinstance(answer, dict) else None
            raise Refused(str(message or f"HTTP status {response.status}"), response.status)
        return answer

    def status(self) -> dict:
        return self.call("GET", "/status")

    def sas(self) -> dict:
        return self.call("GET", "/sas")

    def members(self, group: str) -> dict:
        return self.call("GET", f"/groups/{_segment(group)}/members")

    def rekey(self, group: str) -> dict:
        return self.call("POST", f"/groups/{_segment(group)}/rekey", {})

    def evict(self, group: str, member: str) -> dict:
        return self.call("POST", f"/groups/{_segment(group)}/evict", {"member": member})

    def readmit(self, group: str, member: str) -> dict:
        return self.call("POST", f"/groups/{_segment(group)}/readmit", {"member": member})

    def reload(self) -> dict:
        return self.call("POST", "/reload", {})


def _segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# --- readable output -----------------------------------------------------------------------------------------------


def table_text(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns aligned on the widest cell, two spaces apart (the last column unpadded)."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """"2d 03h", "1h 02m", "5m 03s", "42s"."""
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


def when(t: float | None, now: float) -> str:
    """A UNIX time in UTC, and how far from ``now``: "2026-11-24 10:00:00Z (5m 00s ago)"."""
    if t is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))
    delta = t - now
    if abs(delta) < 1:
        return f"{stamp} (now)"
    return f"{stamp} (in {duration(delta)})" if delta > 0 else f"{stamp} ({duration(-delta)} ago)"


def _address(entry: dict) -> str:
    address, port = entry.get("address"), entry.get("port")
    if address is None:
        return "-"
    if port is None:
        return str(address)
    return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"


def _count(value) -> Any:
    return len(value) if isinstance(value, (list, tuple)) else value


def _cell(key: str, value, now: float) -> Any:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.endswith("_at") and isinstance(value, (int, float)):
        return when(value, now)
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return value


def format_status(status: dict, now: float) -> str:
    role = status.get("role", "key server")
    lines = [f"gdoiserver {status.get('version', '?')} ({role}), up {duration(status.get('uptime', 0))}"]
    sas = status.get("sas") or {}
    lines.append(f"SAs: {sas.get('phase1', 0)} Phase 1, {sas.get('phase2', 0)} Phase 2, "
                 f"{sas.get('half_open', 0)} half-open")
    groups = status.get("groups") or []
    lines += ["", f"Groups ({len(groups)}):"]
    if groups:
        rows = [[g.get("name"), ", ".join(map(str, g.get("ids") or [])) or "-", g.get("members"), g.get("stale"),
                 _count(g.get("evicted")), g.get("generation"), g.get("seq"), g.get("kek_spi"),
                 when(g.get("last_rekey"), now), when(g.get("next_rekey"), now), g.get("rekey_transport")]
                for g in groups]
        lines.append(table_text(["GROUP", "ID", "MEMBERS", "STALE", "EVICTED", "GEN", "SEQ", "KEK SPI",
                                 "LAST REKEY", "NEXT REKEY", "REKEY TRANSPORT"], rows))
    counters = status.get("counters") or {}
    lines += ["", f"Counters ({len(counters)}):"]
    if counters:
        lines.append(table_text(["COUNTER", "VALUE"], [[k, counters[k]] for k in sorted(counters)]))
    return "\n".join(lines)


def format_members(answer: dict, now: float) -> str:
    members = answer.get("members") or []
    lines = [f"Group {answer.get('group')}: {len(members)} member{'' if len(members) == 1 else 's'}"]
    if members:
        sent = any("last_seq_sent" in m for m in members)
        headers = ["IDENTITY", "ADDRESS", "REGISTERED", "LEAF"] + (["LAST SEQ SENT"] if sent else []) + [
            "LAST SEQ ACKED", "MISSED", "STATE"]
        rows = [[m.get("identity"), _address(m), when(m.get("registered_at"), now), m.get("leaf")]
                + ([m.get("last_seq_sent")] if sent else [])
                + [m.get("last_seq_acked"), m.get("missed"), "stale" if m.get("stale") else "ok"] for m in members]
        lines.append(table_text(headers, rows))
    return "\n".join(lines)


def format_rekey(answer: dict, now: float) -> str:
    return (f"group {answer.get('group')} rekeyed: SEQ {answer.get('seq')}, generation "
            f"{answer.get('generation', '-')}")


def format_evict(answer: dict, now: float) -> str:
    seq = answer.get("seq")
    return (f"member {answer.get('member')} evicted from group {answer.get('group')}"
            + (f" (SEQ {seq})" if seq is not None else "") + ": refused until readmitted")


def format_readmit(answer: dict, now: float) -> str:
    return f"member {answer.get('member')} readmitted to group {answer.get('group')}: it may register again"


def format_sas(answer: dict, now: float) -> str:
    lines = []
    phase1 = answer.get("phase1") or []
    lines.append(f"Phase 1 SAs ({len(phase1)}):")
    if phase1:
        lines.append(table_text(
            ["PEER", "IDENTITY", "COOKIES", "ESTABLISHED", "EXPIRES", "PROPOSAL"],
            [[sa.get("peer"), sa.get("identity"), sa.get("cookies"), when(sa.get("established_at"), now),
              when(sa.get("expires_at"), now), sa.get("proposal")] for sa in phase1]))
    phase2 = answer.get("phase2") or []
    lines += ["", f"Phase 2 SAs ({len(phase2)}):"]
    if phase2:
        keys = list(dict.fromkeys(k for sa in phase2 for k in sa))
        lines.append(table_text([k.upper().replace("_", " ") for k in keys],
                                [[_cell(k, sa.get(k), now) for k in keys] for sa in phase2]))
    return "\n".join(lines)


def format_reload(answer: dict, now: float) -> str:
    changed = answer.get("changed") or []
    unchanged = answer.get("unchanged") or []
    return (f"configuration reloaded: {len(changed)} changed ({', '.join(map(str, changed)) or 'nothing'}), "
            f"{len(unchanged)} unchanged")


# --- check-config --------------------------------------------------------------------------------------------------


def is_member_config(data: dict) -> bool:
    """Whether a parsed TOML document is a member's: it has a table only the member's schema has ([[key_servers]],
    [member], [auth], ...)."""
    import attrs

    from gdoiserver.config import Config
    from gdoiserver.member.config import MemberConfig

    only_member = {f.name for f in attrs.fields(MemberConfig)} - {f.name for f in attrs.fields(Config)}
    return any(name in data for name in only_member)


class StoreProblem(Exception):
    """The key store a valid configuration names cannot be opened: start-up would end with EX_CANTCREAT (73)."""


def check_config(path: str, member: bool | None = None) -> str:
    """Check the configuration at ``path`` with the checks start-up runs (:func:`gdoiserver.tap.load`, or
    :func:`gdoiserver.member.tap.load`); the one-line summary, or :class:`ConfigError`, or :class:`StoreProblem`
    when the key store could not be opened.  ``member``: True or False forces the kind; None tells it by content."""
    if member is None:
        member = is_member_config(read_toml(path))
    return _check_member(path) if member else _check_server(path)


def _check_server(path: str) -> str:
    from gdoiserver.doi.ipsec.sa_sink import SinkError
    from gdoiserver.store.base import StoreError
    from gdoiserver.tap import load

    try:
        config, _ = load(path)
    except SinkError as e:  # [ipsec] xfrm = true where the kernel cannot take SAs
        raise ConfigError(path, "ipsec.xfrm", str(e)) from None
    if any(g.kek is not None for g in config.groups):  # the key server opens its store only for rekeyed groups
        try:
            check_store(config.store.path)
        except StoreError as e:
            raise StoreProblem(str(e)) from None
    groups = ", ".join(g.name for g in config.groups)
    return (f"{path}: OK: key server, {len(config.server.listen)} listen addresses, {len(config.ike.proposals)} "
            f"Phase 1 proposals, {len(config.peers)} peers, {len(config.groups)} groups"
            + (f" ({groups})" if groups else "")
            + f", control socket {config.control.socket or 'off'}, metrics {config.metrics.listen or 'off'}")


def _check_member(path: str) -> str:
    from gdoiserver.member.tap import load

    setup, sink = load(path)
    sink.close()
    config = setup.config
    auth = "certificate" if config.auth.certificate is not None else "pre-shared key"
    groups = ", ".join(str(g) for g in config.groups)
    return (f"{path}: OK: group member, {len(config.key_servers)} key servers, {len(config.groups)} groups "
            f"({groups}), {auth}, Phase 1 {config.member.mode} mode")


def check_store(path: str) -> None:
    """What opening the key store at ``path`` checks before it changes anything (:mod:`gdoiserver.store.sqlite`),
    with nothing created, locked or written, so that it may run beside the daemon that holds the store.  Raises
    StoreError in start-up's words."""
    import sqlite3

    from gdoiserver.store import sqlite
    from gdoiserver.store.base import StoreError

    path = os.path.abspath(path)
    directory = existing = os.path.dirname(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing != directory:  # start-up makes the missing directories (mode 0700)
        first = os.path.join(existing, os.path.relpath(directory, existing).split(os.sep)[0])
        if not os.path.isdir(existing):
            raise StoreError(f"{first}: cannot create the key store's directory: Not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StoreError(f"{first}: cannot create the key store's directory: Permission denied")
        return
    if not os.path.lexists(path):
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StoreError(f"{path}: cannot create the key store: Permission denied")
        return
    if not os.path.exists(path):
        raise StoreError(f"{path}: a symbolic link to a missing file; give the key store's real path")
    for name in (path, *(path + side for side in sqlite._SIDE_FILES)):
        sqlite._refuse_loose(name)  # a regular file, and no access for group or others
    if not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"{path}: cannot use the key store: Permission denied")
    if os.stat(path).st_size == 0:
        return  # made by a start-up that stopped before SQLite wrote to it: a fresh store
    # immutable=1: no lock taken, no WAL or SHM file made (the running daemon's latest transactions may be missing:
    # only the file's identity and schema version are read).
    uri = "file:" + urllib.parse.quote(path) + "?mode=ro&immutable=1"
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            application_id = connection.execute("PRAGMA application_id").fetchone()[0]
            tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if application_id == 0 and tables == 0:
                return
            if application_id != sqlite.APPLICATION_ID:
                raise StoreError(f"{path}: an SQLite database but not a gdoiserver key store")
            rows = connection.execute("SELECT version FROM schema_version").fetchall()
        finally:
            connection.close()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: not a gdoiserver key store (not an SQLite database, or corrupt: {e})") from None
    if rows != [(sqlite.SCHEMA_VERSION,)]:
        found = rows[0][0] if len(rows) == 1 else f"{len(rows)} versions"
        raise StoreError(f"{path}: key store schema {found}, this gdoiserver knows {sqlite.SCHEMA_VERSION}")


# --- the command line ----------------------------------------------------------------------------------------------


def socket_from_config(path: str) -> str:
    """The ``control.socket`` of the configuration at ``path`` (only that table is read, so that secrets the
    operator may not read do not stand in the way)."""
    data = read_toml(path)
    try:
        return table(Control)(data.get("control", {}), "control").socket
    except Invalid as e:
        raise ConfigError(path, e.key, e.problem) from None


COMMANDS = {
    "status": (lambda c, a: c.status(), format_status),
    "members": (lambda c, a: c.members(a.group), format_members),
    "rekey": (lambda c, a: c.rekey(a.group), format_rekey),
    "evict": (lambda c, a: c.evict(a.group, a.member), format_evict),
    "readmit": (lambda c, a: c.readmit(a.group, a.member), format_readmit),
    "sas": (lambda c, a: c.sas(), format_sas),
    "reload": (lambda c, a: c.reload(), format_reload),
}


def _common_options(p: argparse.ArgumentParser, top: bool) -> argparse.ArgumentParser:
    """--socket/--config, --json and --timeout, accepted before or after the command (after it, without defaults,
    so that they do not undo what was given before it)."""
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", default=default(None), help="the daemon's control socket "
                       f"(default: control.socket of --config, or {DEFAULT_SOCKET})")
    where.add_argument("--config", metavar="FILE", default=default(None),
                       help="the daemon's configuration, to find its control socket")
    p.add_argument("--json", action="store_true", default=default(False), help="print the JSON answer as it came")
    p.add_argument("--timeout", type=float, metavar="SECONDS", default=default(60.0),
                   help="wait this long for an answer (default 60)")
    return p


def parser() -> argparse.ArgumentParser:
    top = _common_options(argparse.ArgumentParser(
        prog="gdoictl", description="Control a running gdoiserver over its UNIX socket, or check a configuration "
        "file.", epilog="Exit status: 0 done, 1 refused by the daemon, 69 socket unreachable, 78 configuration "
        "error, 73 key store unusable (check-config)."), top=True)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return _common_options(sub.add_parser(name, help=text, description=text), top=False)

    command("status", "uptime, groups, members, SAs, rekeys and counters")
    command("members", "the members of a group").add_argument("group", metavar="GROUP")
    command("rekey", "rekey a group now").add_argument("group", metavar="GROUP")
    for name, text in [("evict", "evict a member (refused until readmitted)"),
                       ("readmit", "let an evicted member register again")]:
        p = command(name, text)
        p.add_argument("group", metavar="GROUP")
        p.add_argument("member", metavar="MEMBER", help="the member's identity, as `members` shows it")
    command("sas", "the Phase 1 and Phase 2 SAs")
    command("reload", "read the configuration again (members and keys stay)")
    check = sub.add_parser("check-config", help="check a configuration file as start-up does (offline)",
                           description="Check a key server or member configuration file as start-up does.")
    check.add_argument("file", metavar="FILE")
    kind = check.add_mutually_exclusive_group()
    kind.add_argument("--member", dest="member", action="store_true", default=None,
                      help="a group member's configuration (default: told by its content)")
    kind.add_argument("--key-server", dest="member", action="store_false", help="a key server's configuration")
    return top


def main(argv: list[str] | None = None, out=None, err=None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    args = parser().parse_args(argv)
    if args.command == "check-config":
        try:
            print(check_config(args.file, args.member), file=out)
        except ConfigError as e:
            print(f"gdoictl: configuration error: {e}", file=err)
            return EX_CONFIG
        except StoreProblem as e:
            print(f"gdoictl: key store error (store.path): {e}", file=err)
            return EX_CANTCREAT
        return 0
    try:
        path = args.socket or (socket_from_config(args.config) if args.config else DEFAULT_SOCKET)
    except ConfigError as e:
        print(f"gdoictl: configuration error: {e}", file=err)
        return EX_CONFIG
    call, show = COMMANDS[args.command]
    try:
        answer = call(Client(path, args.timeout), args)
    except Unreachable as e:
        print(f"gdoictl: {e}", file=err)
        return EX_UNAVAILABLE
    except Refused as e:
        print(f"gdoictl: {e.message}", file=err)
        return EX_REFUSED
    print(json.dumps(answer, indent=2, sort_keys=True) if args.json else show(answer, time.time()), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
