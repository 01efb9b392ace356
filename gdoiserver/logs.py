"""Log observers for ``server.log_format``: "text" (twisted.logger's text lines) and "json" (one JSON object per
line), each behind :class:`RedactingObserver`.

The redaction is defence in depth: no code logs a key on purpose (key material lives in ``repr=False`` fields).
Before an event is written, every field named like a secret (key, psk, secret, SKEYID, ...) and every value holding
more than 8 octets of bytes, at any depth of dicts, lists and tuples, is replaced by :data:`REDACTED`.  Eight octets
and fewer pass: cookies and SPIs are public and that short.

For twistd, :class:`ObservedService` makes the observer the application's log observer, so that twistd's
``--logfile`` and ``-n`` choose where the lines go and ``server.log_format`` how they look.
"""

import functools
import re
import sys
from typing import Any, TextIO

from twisted.application.service import MultiService
from twisted.logger import ILogObserver, formatEvent, jsonFileLogObserver, textFileLogObserver
from twisted.python import logfile
from zope.interface import implementer

REDACTED = "[redacted]"
#: The longest bytes value written as is: an ISAKMP cookie or an IPsec SPI.
MAX_PUBLIC_OCTETS = 8
#: Field names that say "secret": key, keys, psk, secret, password, passphrase, SKEYID(_d/_a/_e), KEYMAT, as a whole
#: name or as one of its parts between "_", "-" or ".", in any case ("ack_key", "PSK", "skeyid_e").
SECRET_NAME = re.compile(
    r"(?:^|[_.\-])(?:key|keys|psk|secret|secrets|password|passphrase|passwd|skeyid|skeyid_[dae]|keymat)"
    r"(?:$|[_.\-])", re.IGNORECASE,
)
#: Names that match :data:`SECRET_NAME` yet never hold a secret.
PUBLIC_NAMES = frozenset({"key_server", "key_servers", "key_bits", "key_id", "key_path", "key_type"})
#: How deep into nested containers values are checked (anything deeper is redacted whole).
MAX_DEPTH = 8

_BYTES = (bytes, bytearray, memoryview)


def is_secret_name(name: Any) -> bool:
    """Whether a field called ``name`` may hold key material."""
    return isinstance(name, str) and _secret_name(name)


@functools.lru_cache(maxsize=4096)  # field names are few: the regex runs once for each
def _secret_name(name: str) -> bool:
    return name not in PUBLIC_NAMES and SECRET_NAME.search(name) is not None


def redact_value(value: Any, depth: int = 0) -> Any:
    """``value`` with long bytes and secret-named fields replaced (a new object where something changed; the same
    object otherwise)."""
    if isinstance(value, _BYTES):
        return value if len(value) <= MAX_PUBLIC_OCTETS else REDACTED
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return REDACTED
        out = {k: REDACTED if is_secret_name(k) else redact_value(v, depth + 1) for k, v in value.items()}
        return value if all(out[k] is value[k] for k in value) else out
    if isinstance(value, (list, tuple, set, frozenset)):
        if depth >= MAX_DEPTH:
            return REDACTED
        items = [redact_value(v, depth + 1) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return list(items) if isinstance(value, list) else tuple(items)
    return value  # other objects log through their str/repr, which keep keys out (repr=False fields)


def redact(event: dict) -> dict:
    """A copy of a log event that is safe to write (the event itself is shared by every observer: never changed)."""
    out = dict(event)
    out.pop("log_flattened", None)  # another observer's flattening: made from the unredacted fields
    for name, value in event.items():
        if name.startswith("log_"):
            continue  # twisted.logger's own fields: format, level, namespace, source, time, failure, ...
        out[name] = REDACTED if is_secret_name(name) else redact_value(value)
    return out


@implementer(ILogObserver)
class RedactingObserver:
    """Hands each event, redacted, to ``observer``."""

    def __init__(self, observer):
        self.observer = observer

    def __call__(self, event: dict) -> None:
        self.observer(redact(event))


def text_observer(stream: TextIO) -> RedactingObserver:
    """twisted.logger's text lines ("2026-11-24T10:00:00+0000 [namespace#info] message")."""
    return RedactingObserver(textFileLogObserver(stream))


@implementer(ILogObserver)
class _JSONLines:
    """One JSON object per line: the event's fields (eventAsJSON), ``log_text``, the formatted message, and
    ``log_traceback`` for an event with a failure."""

    def __init__(self, stream: TextIO):
        self._observer = jsonFileLogObserver(stream, recordSeparator="")

    def __call__(self, event: dict) -> None:
        event = dict(event)  # eventAsJSON flattens (changes) the event it is given
        event["log_text"] = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None and hasattr(failure, "getTraceback"):
            event["log_traceback"] = failure.getTraceback()  # eventAsJSON keeps the type, not the message
        self._observer(event)


def json_observer(stream: TextIO) -> RedactingObserver:
    """One JSON object per line (twisted.logger's eventAsJSON, readable back with eventsFromJSONLogFile and
    recordSeparator=""), with the formatted message as ``log_text``."""
    return RedactingObserver(_JSONLines(stream))


OBSERVERS = {"text": text_observer, "json": json_observer}


def observer_for(log_format: str, stream: TextIO) -> RedactingObserver:
    """The observer ``server.log_format`` names, writing to ``stream``."""
    try:
        return OBSERVERS[log_format](stream)
    except KeyError:
        raise ValueError(f"unknown log format {log_format!r}: expected one of {', '.join(OBSERVERS)}") from None


def twistd_stream(logfile_option: str | None, nodaemon: bool) -> TextIO:
    """Where twistd would write its log: stdout with ``-n`` and no ``--logfile`` (or "-"), else the file
    (default twistd.log), rotated as twistd's own."""
    if logfile_option == "-" or (nodaemon and not logfile_option):
        return sys.stdout
    return logfile.LogFile.fromFullPath(logfile_option or "twistd.log")


def twistd_observer(log_format: str, twistd_options) -> RedactingObserver | None:
    """The observer for a twistd run: ``twistd_options`` are twistd's ServerOptions (a plugin's options'
    ``.parent``).  None when twistd should choose (``--syslog`` or ``--logger`` given)."""
    if "nodaemon" not in twistd_options:  # twist (python -m twisted): it has --log-format text|json of its own
        return None
    if twistd_options.get("syslog") or twistd_options.get("logger"):
        return None
    return observer_for(log_format, twistd_stream(twistd_options.get("logfile"), twistd_options.get("nodaemon")))


class ObservedService(MultiService):
    """A MultiService that, once parented to a twistd application, makes ``observer`` its ILogObserver component:
    twistd reads that component after the plugin made the service and logs through it.  None leaves twistd's own
    observer."""

    def __init__(self, observer=None):
        super().__init__()
        self.observer = observer

    def setServiceParent(self, parent):
        result = super().setServiceParent(parent)
        set_component = getattr(parent, "setComponent", None)
        if self.observer is not None and set_component is not None:
            set_component(ILogObserver, self.observer)
        return result


__all__ = ["REDACTED", "SECRET_NAME", "ObservedService", "RedactingObserver", "is_secret_name",
           "json_observer", "observer_for", "redact", "redact_value", "text_observer", "twistd_observer",
           "twistd_stream"]
