"""The one error the codec raises: it carries the RFC 2408 Notify type to answer with."""

from gdoiserver.codec.constants import NotifyType


class DecodeError(Exception):
    """Bytes that are not a well-formed ISAKMP message or payload.

    ``notify`` is the Notify message type (RFC 2408 section 3.14.1) that a responder may answer with; ``reason``
    says what is wrong in words, without secrets; ``offset`` is where in the input the fault lies, if known.
    """

    def __init__(self, notify: NotifyType, reason: str, offset: int | None = None):
        self.notify = NotifyType(notify)
        self.reason = reason
        self.offset = offset
        where = "" if offset is None else f" at offset {offset}"
        super().__init__(f"{self.notify.name}: {reason}{where}")


class EncodeError(ValueError):
    """A payload object whose fields cannot be put on the wire (a value out of range, a field too long)."""
