"""The control API: JSON over HTTP (twisted.web) in front of the key server's :class:`KeyServerControl`.

    GET  /v1/status                         the daemon, its groups, SAs and counters
    GET  /v1/sas                            the Phase 1 and Phase 2 SAs
    GET  /v1/groups/GROUP/members           a group's members
    POST /v1/groups/GROUP/rekey             rekey now
    POST /v1/groups/GROUP/evict             {"member": "IDENTITY"}
    POST /v1/groups/GROUP/readmit           {"member": "IDENTITY"}
    POST /v1/reload                         read the configuration again

Answers are JSON objects.  A refusal is {"error": "..."} with status 404 (no such group, member or endpoint), 400
(a bad request or configuration), 405 (wrong method) or 500 (a bug: the message names the exception type only, the
traceback goes to the log).  Every answer passes through :func:`public` first, so that no field named like a key and
no bytes value can leave, whatever the implementation returns.
"""

import json
import math
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from gdoiserver.config import ConfigError
from gdoiserver.logs import is_secret_name

API_PREFIX = "/v1"
#: The largest request body read (a member identity fits many times over).
MAX_BODY = 64 * 1024


class KeyServerControl(Protocol):
    """What the control API calls; the key server implements it.  Plain data in, plain JSON-able data out, never a
    key.  ``rekey``, ``evict``, ``readmit`` and ``reload`` may return a value or a Deferred."""

    def status(self) -> dict:
        """{"version", "uptime", "role", "groups": [{"name", "ids", "members", "stale", "evicted", "generation",
        "seq", "kek_spi", "last_rekey", "next_rekey", "rekey_transport"}], "sas": {"phase1", "phase2",
        "half_open"}, "counters": {name: int}}"""

    def members(self, group: str) -> list[dict]:
        """[{"identity", "address", "registered_at", "leaf", "last_seq_acked", "missed", "stale"}]; KeyError for an
        unknown group."""

    def rekey(self, group: str):
        """Fires {"group", "seq", "generation"}; KeyError for an unknown group."""

    def evict(self, group: str, member: str):
        """Fires {"group", "member", "seq"}; KeyError (group) or LookupError (member)."""

    def readmit(self, group: str, member: str):
        """Fires {"group", "member"}; KeyError (group) or LookupError (member)."""

    def sas(self) -> dict:
        """{"phase1": [{"peer", "identity", "cookies", "established_at", "expires_at", "proposal"}], "phase2": [...]}"""

    def reload(self):
        """Fires {"changed": [...], "unchanged": [...]}, or fails with ConfigError."""


class ControlError(Exception):
    """A refusal the operator should read: ``message`` and the HTTP status ``code``."""

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.message = message
        self.code = code


def public(value: Any, counts: bool = False) -> Any:
    """``value`` as JSON-able data with every field named like a secret (key, psk, ...) and every bytes value
    left out: the last guard before an answer leaves the daemon.  Under "counters", integer entries stay whatever
    their names (``phase1_failed.INVALID_KEY_INFORMATION`` names a Notify, not a key)."""
    if isinstance(value, dict):
        return {str(k): public(v, k == "counters") for k, v in value.items()
                if (counts and type(v) is int)
                or (not is_secret_name(str(k)) and not isinstance(v, (bytes, bytearray, memoryview)))}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [public(v) for v in value if not isinstance(v, (bytes, bytearray, memoryview))]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no infinity: "never"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # an enum, an address object: its text


def _about(d: defer.Deferred, group: str, member: str | None = None) -> defer.Deferred:
    """``d`` with a LookupError turned into a 404 naming the group (KeyError) or the member (another LookupError)."""

    def not_found(failure):
        failure.trap(LookupError)
        e = failure.value
        text = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else None
        if text and " " in text:
            message = text  # a sentence, not just the key (KeyError("video"))
        elif isinstance(e, KeyError) or member is None:
            message = f'unknown group "{group}"'
        else:
            message = f'unknown member "{member}" in group "{group}"'
        raise ControlError(message, 404)

    return d.addErrback(not_found)


class ControlResource(resource.Resource):
    """The API (module notes) over ``control``, a :class:`KeyServerControl`."""

    isLeaf = True
    log = Logger()

    def __init__(self, control: KeyServerControl):
        super().__init__()
        self.control = control
        # (method, path pattern) -> handler; "{group}" matches one path segment.
        self.routes = [
            ("GET", ("status",), self._status),
            ("GET", ("sas",), self._sas),
            ("GET", ("groups", "{group}", "members"), self._members),
            ("POST", ("groups", "{group}", "rekey"), self._rekey),
            ("POST", ("groups", "{group}", "evict"), self._evict),
            ("POST", ("groups", "{group}", "readmit"), self._readmit),
            ("POST", ("reload",), self._reload),
        ]

    # --- routing ---------------------------------------------------------------------------------------------------

    def render(self, request):
        try:
            handler, args = self._route(request)
            d = defer.maybeDeferred(handler, request, *args)
        except ControlError as e:
            d = defer.fail(e)
        finished = []
        request.notifyFinish().addBoth(finished.append)  # the client went away: write nothing more
        d.addCallback(self._answer, request, finished)
        d.addErrback(self._refuse, request, finished)
        return server.NOT_DONE_YET

    def _route(self, request) -> tuple:
        try:
            segments = tuple(s.decode("utf-8") for s in request.postpath)
            method = request.method.decode("ascii")
        except UnicodeDecodeError:
            raise ControlError("the path is not UTF-8", 400) from None
        prefix = tuple(API_PREFIX.strip("/").split("/"))
        if segments[-1:] == ("",):
            segments = segments[:-1]  # a trailing slash
        allowed = []
        if segments[: len(prefix)] == prefix:
            rest = segments[len(prefix):]
            for want, pattern, handler in self.routes:
                args = _match(pattern, rest)
                if args is None:
                    continue
                if want == method:
                    return handler, args
                allowed.append(want)
        if allowed:
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
            raise ControlError(f"{method} is not allowed here (use {' or '.join(allowed)})", 405)
        raise ControlError(f"no such endpoint: {'/' + '/'.join(segments)}", 404)

    # --- answers ---------------------------------------------------------------------------------------------------

    def _answer(self, value, request, finished) -> None:
        self._write(request, finished, 200, public(value))

    def _refuse(self, failure, request, finished) -> None:
        e = failure.value
        if isinstance(e, ControlError):
            code, message = e.code, e.message
        elif isinstance(e, ConfigError):
            code, message = 400, str(e)
        elif isinstance(e, ValueError):
            code, message = 400, str(e) or type(e).__name__
        else:
            self.log.failure("control API: {method} {path} failed", failure, method=_text(request.method),
                             path=_text(request.path))
            code, message = 500, f"internal error ({type(e).__name__}): see the daemon's log"
        if code != 500:
            self.log.info("control API: {method} {path} refused ({code}): {message}", method=_text(request.method),
                          path=_text(request.path), code=code, message=message)
        self._write(request, finished, code, {"error": message})

    @staticmethod
    def _write(request, finished, code: int, body: dict) -> None:
        if finished:
            return
        data = json.dumps(body, sort_keys=True, allow_nan=False, default=str).encode("utf-8") + b"\n"
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", str(len(data)).encode("ascii"))
        request.write(data)
        request.finish()

    # --- the endpoints ---------------------------------------------------------------------------------------------

    def _status(self, request):
        return self.control.status()

    def _sas(self, request):
        return self.control.sas()

    def _members(self, request, group: str):
        d = _about(defer.maybeDeferred(self.control.members, group), group)
        return d.addCallback(lambda members: {"group": group, "members": members})

    def _rekey(self, request, group: str):
        self.log.info("control API: rekey of group {group} requested", group=group)
        return _about(defer.maybeDeferred(self.control.rekey, group), group)

    def _evict(self, request, group: str):
        member = _member(request)
        self.log.info("control API: eviction of {member} from group {group} requested", group=group, member=member)
        return _about(defer.maybeDeferred(self.control.evict, group, member), group, member)

    def _readmit(self, request, group: str):
        member = _member(request)
        self.log.info("control API: readmission of {member} to group {group} requested", group=group, member=member)
        return _about(defer.maybeDeferred(self.control.readmit, group, member), group, member)

    def _reload(self, request):
        self.log.info("control API: configuration reload requested")
        return self.control.reload()


def _match(pattern: tuple, segments: tuple) -> tuple | None:
    if len(pattern) != len(segments):
        return None
    args = []
    for want, got in zip(pattern, segments):
        if want.startswith("{"):
            if not got:
                return None
            args.append(got)
        elif want != got:
            return None
    return tuple(args)


def _body(request) -> dict:
    """The request's JSON object."""
    content = request.content
    data = content.read(MAX_BODY + 1) if content is not None else b""
    if len(data) > MAX_BODY:
        raise ControlError(f"the request body is over {MAX_BODY} octets", 413)
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        raise ControlError("the request body is not JSON", 400) from None
    if not isinstance(body, dict):
        raise ControlError("the request body is not a JSON object", 400)
    return body


def _member(request) -> str:
    member = _body(request).get("member")
    if not isinstance(member, str) or not member:
        raise ControlError('the request needs {"member": "IDENTITY"}', 400)
    return member


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
