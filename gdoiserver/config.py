"""The server configuration: a TOML file read with :mod:`tomllib` into frozen attrs objects.

The schema is the attrs classes below.  Each field carries a *check* (``setting(check)``): a function of the TOML
value and its dotted key that returns the value to keep or raises :class:`Invalid`.  :func:`table` turns a class
into the check of a TOML table, so that a later section is one more class and one more field.  Keys that no field
names are errors, so that a misspelt key never passes silently.
"""

import ipaddress
import tomllib
from typing import Any, Callable

import attrs

Check = Callable[[Any, str], Any]
_CHECK = "gdoiserver.config.check"


class ConfigError(Exception):
    """A configuration file that cannot be used: which file, which key (a dotted path) and what is wrong."""

    def __init__(self, source: str, key: str, problem: str):
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


class Invalid(Exception):
    """Raised by a check: ``key`` is the dotted path of the bad value, ``problem`` says what is wrong."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


def _show(value) -> str:
    """A TOML value as the user wrote it, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _wrong(key: str, value, expected: str) -> Invalid:
    return Invalid(key, f"got {_show(value)}, expected {expected}")


# --- checks: each takes (value, key) and returns the value to keep -------------------------------------------------


def integer(low: int, high: int) -> Check:
    def check(value, key):
        if type(value) is not int or not low <= value <= high:  # bool is an int subclass: refuse it too
            raise _wrong(key, value, f"an integer from {low} to {high}")
        return value

    return check


def boolean(value, key):
    if not isinstance(value, bool):
        raise _wrong(key, value, "true or false")
    return value


def one_of(*choices: str) -> Check:
    def check(value, key):
        if not isinstance(value, str) or value not in choices:
            raise _wrong(key, value, "one of " + ", ".join(_show(c) for c in choices))
        return value

    return check


def text(value, key):
    if not isinstance(value, str) or not value:
        raise _wrong(key, value, "a non-empty string")
    return value


def ip_address(value, key) -> str:
    """An IPv4 or IPv6 address literal, kept in its canonical (compressed) form."""
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _wrong(key, value, "an IPv4 or IPv6 address literal such as 127.0.0.1 or ::1") from None


def array_of(item: Check, min_items: int = 0, identity: Callable[[Any], Any] | None = None) -> Check:
    """An array whose items each pass ``item``.

    ``identity`` maps an item to a string that must be unique in the array (None exempts the item).
    """

    def check(value, key):
        if not isinstance(value, list):
            raise _wrong(key, value, f"an array of {min_items} or more items" if min_items else "an array")
        if len(value) < min_items:
            raise Invalid(key, f"has {len(value)} items, expected at least {min_items}")
        items, seen = [], {}
        for i, raw in enumerate(value):
            it = item(raw, f"{key}[{i}]")
            ident = identity(it) if identity else None
            if ident is not None:
                if ident in seen:
                    raise Invalid(f"{key}[{i}]", f"{ident} duplicates {key}[{seen[ident]}]")
                seen[ident] = i
            items.append(it)
        return tuple(items)

    return check


def table(cls: type) -> Check:
    """The check of a TOML table holding the fields of the attrs class ``cls`` (missing keys take defaults)."""

    def check(value, key):
        if not isinstance(value, dict):
            raise _wrong(key, value, "a table")
        fields = attrs.fields(cls)
        names = [f.name for f in fields]
        for name in value:
            if name not in names:
                raise Invalid(_join(key, name), "unknown key (expected one of: " + ", ".join(names) + ")")
        kwargs = {}
        for f in fields:
            sub = _join(key, f.name)
            if f.name in value:
                kwargs[f.name] = f.metadata[_CHECK](value[f.name], sub)
            elif f.default is attrs.NOTHING:
                raise Invalid(sub, "missing (this key is required)")
        return cls(**kwargs)

    return check


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def setting(check: Check, **kwargs):
    """An attrs field read from TOML through ``check``; ``default`` or ``factory`` make the key optional."""
    return attrs.field(metadata={_CHECK: check}, **kwargs)


def section(cls: type):
    """A field holding a whole TOML table of class ``cls``; absent, every key takes its default."""
    return setting(table(cls), factory=cls)


# --- the schema ----------------------------------------------------------------------------------------------------


@attrs.frozen
class Listen:
    """One UDP socket to receive ISAKMP on.  Port 0 asks the system for a free port (for tests)."""

    address: str = setting(ip_address)
    port: int = setting(integer(0, 65535))


DEFAULT_LISTEN = (Listen("127.0.0.1", 500), Listen("127.0.0.1", 848))


def _listen_identity(listen: Listen):
    return None if listen.port == 0 else f"{listen.address} port {listen.port}"


@attrs.frozen
class Server:
    listen: tuple[Listen, ...] = setting(
        array_of(table(Listen), min_items=1, identity=_listen_identity), default=DEFAULT_LISTEN
    )
    log_format: str = setting(one_of("text", "json"), default="text")


@attrs.frozen
class Security:
    """Opt-ins to algorithms kept only for old peers (MODP groups 1, 2 and 5; 3DES)."""

    allow_weak_dh_groups: bool = setting(boolean, default=False)
    allow_legacy_3des: bool = setting(boolean, default=False)


@attrs.frozen
class Limits:
    # The smallest ISAKMP message is its 28-octet header (RFC 2408 section 3.1).
    max_datagram_size: int = setting(integer(28, 65535), default=65535)


@attrs.frozen
class Keylog:
    """Where to write session keys for Wireshark (absent: nowhere).  A relative path is relative to the cwd."""

    path: str | None = setting(text, default=None)


@attrs.frozen
class Config:
    server: Server = section(Server)
    security: Security = section(Security)
    limits: Limits = section(Limits)
    keylog: Keylog = section(Keylog)


def parse_config(data: dict, source: str = "<config>") -> Config:
    """Check a parsed TOML document against the schema; ``source`` names it in errors."""
    try:
        return table(Config)(data, "")
    except Invalid as e:
        raise ConfigError(source, e.key, e.problem) from None


def load_config(path: str) -> Config:
    """Read and check the TOML file at ``path``, or raise :class:`ConfigError`."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, "", f"cannot read the file: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: not UTF-8 at octet {e.start}") from None
    return parse_config(data, path)
