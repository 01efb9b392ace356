"""The server configuration: a TOML file read with :mod:`tomllib` into frozen attrs objects.

The schema is the attrs classes below.  Each field carries a *check* (``setting(check)``): a function of the TOML
value and its dotted key that returns the value to keep or raises :class:`Invalid`.  :func:`table` turns a class
into the check of a TOML table, so that a later section is one more class and one more field.  Keys that no field
names are errors, so that a misspelt key never passes silently.
"""

import ipaddress
import os
import stat
import tomllib
from typing import Any, Callable

import attrs

from gdoiserver.codec.constants import DPD_VENDOR_ID, IDType, OakleyAuth, OakleyEncryption, OakleyHash
from gdoiserver.codec.payloads import Identification
from gdoiserver.crypto import certs
from gdoiserver.exchanges.phase1 import Phase1Policy, Phase1Proposal

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


def seconds(low: float, high: float) -> Check:
    """A duration in seconds, integer or decimal."""

    def check(value, key):
        if type(value) not in (int, float) or not low <= value <= high:
            raise _wrong(key, value, f"a number of seconds from {low:g} to {high:g}")
        return float(value)

    return check


def number_in(*choices: int) -> Check:
    def check(value, key):
        if type(value) is not int or value not in choices:
            raise _wrong(key, value, "one of " + ", ".join(map(str, choices)))
        return value

    return check


def peer_address(value, key) -> str:
    """An address, a network in CIDR form, or "any"; kept canonical ("192.0.2.0/24", "2001:db8::1")."""
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        if value == "any":
            return value
        if "/" in value:
            return str(ipaddress.ip_network(value, strict=True))
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _wrong(key, value, 'an IP address, a network such as 192.0.2.0/24 (no host bits), or "any"') from None


@attrs.frozen
class Secret:
    """A pre-shared key and where it came from.  The key itself is never shown: not by repr, not in a message."""

    source: str
    value: bytes = attrs.field(repr=False)


def _private_file(path: str, key: str) -> bytes:
    """The content of a file that holds a secret.  It must be a regular file that neither group nor others may read
    or write (mode 0600 or stricter), so that a key put in the wrong file is refused before it is used."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block us
    except OSError as e:
        raise Invalid(key, f"cannot read {_show(path)}: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Invalid(key, f"{_show(path)} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise Invalid(
                key, f"{_show(path)} has mode {mode:04o}, expected 0600 or stricter (chmod 600 {path}): it holds a"
                " secret"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def _psk(data: bytes) -> bytes:
    """A PSK as written in a file or variable: one trailing newline dropped; a "0x" prefix means hexadecimal."""
    data = data[:-1] if data.endswith(b"\n") else data
    data = data[:-1] if data.endswith(b"\r") else data
    if data[:2].lower() == b"0x":
        return bytes.fromhex(data[2:].decode("ascii"))
    return data


def psk_file(value, key) -> Secret:
    path = text(value, key)
    try:
        psk = _psk(_private_file(path, key))
    except ValueError:  # UnicodeDecodeError too
        raise Invalid(key, f"{_show(path)} starts with 0x but is not hexadecimal") from None
    if not psk:
        raise Invalid(key, f"{_show(path)} is empty")
    return Secret(f"file {path}", psk)


def psk_env(value, key) -> Secret:
    name = text(value, key)
    raw = os.environb.get(os.fsencode(name))
    if raw is None:
        raise Invalid(key, f"the environment variable {_show(name)} is not set")
    try:
        psk = _psk(raw)
    except ValueError:
        raise Invalid(key, f"the environment variable {_show(name)} starts with 0x but is not hexadecimal") from None
    if not psk:
        raise Invalid(key, f"the environment variable {_show(name)} is empty")
    return Secret(f"environment variable {name}", psk)


def readable_file(value, key) -> str:
    path = text(value, key)
    if not os.access(path, os.R_OK) or not os.path.isfile(path):
        raise Invalid(key, f"cannot read {_show(path)}: not a readable file")
    return path


def private_key_file(value, key) -> str:
    path = text(value, key)
    _private_file(path, key)
    return path


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
    #: The NAT-T port (RFC 3947 section 4), bound on each listen address when ike.nat_t is on; 0: a free port.
    nat_t_port: int = setting(integer(0, 65535), default=4500)


@attrs.frozen
class Security:
    """Opt-ins to algorithms kept only for old peers (MODP groups 2 and 5; 3DES)."""

    allow_weak_dh_groups: bool = setting(boolean, default=False)
    allow_legacy_3des: bool = setting(boolean, default=False)


@attrs.frozen
class Limits:
    # The smallest ISAKMP message is its 28-octet header (RFC 2408 section 3.1).
    max_datagram_size: int = setting(integer(28, 65535), default=65535)


@attrs.frozen
class Store:
    """The embedded key store (SQLite): groups, keys, SEQ high-water marks and members survive restarts.  A
    relative path is relative to the cwd; the file is made with mode 0600.  ``seq_block``: SEQ numbers reserved
    (written) ahead of use, so that a crash never repeats one."""

    path: str = setting(text, default="gdoiserver-state.db")
    seq_block: int = setting(integer(1, 1 << 20), default=64)


#: The longest path a UNIX socket address holds (Linux: sun_path is 108 octets, one of them the final NUL).
UNIX_PATH_MAX = 107


def socket_path(value, key) -> str:
    """A path a UNIX socket can be bound at."""
    path = text(value, key)
    if "\0" in path or len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise _wrong(key, value, f"a path of at most {UNIX_PATH_MAX} octets without NUL (the limit of a UNIX socket "
                     "address)")
    return path


@attrs.frozen
class Control:
    """The operator's control socket (``gdoictl``): a UNIX socket made with mode 0600, in a directory made with mode
    0700 when it does not exist.  A relative path is relative to the cwd.  Unset: no control socket (the example
    configs set ``DEFAULT_CONTROL_SOCKET``, where ``gdoictl`` looks by default)."""

    socket: str | None = setting(socket_path, default=None)


#: Where the example configs put the control socket, and where gdoictl looks without --socket or --config.
DEFAULT_CONTROL_SOCKET = "/run/gdoiserver/gdoiserver.sock"


def loopback_endpoint(value, key) -> str:
    """"address:port" on a loopback address, IPv6 in brackets ("[::1]:9848"); kept canonical.  Port 0 asks the
    system for a free port (for tests)."""
    expected = ('"address:port" on a loopback address, such as "127.0.0.1:9848" or "[::1]:9848" (the endpoint has '
                "no authentication)")
    try:
        host, port = split_endpoint(value)
    except ValueError:
        raise _wrong(key, value, expected) from None
    if not ipaddress.ip_address(host).is_loopback:
        raise _wrong(key, value, expected)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """("address", port) of "address:port" or "[v6 address]:port"; ValueError when it is neither."""
    if not isinstance(endpoint, str):
        raise ValueError(endpoint)
    host, sep, port = endpoint.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ipaddress.ip_address(host).version != 6:
            raise ValueError(endpoint)
    elif ":" in host:
        raise ValueError(endpoint)  # an IPv6 address needs brackets
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(endpoint)
    return str(ipaddress.ip_address(host)), int(port)


@attrs.frozen
class Metrics:
    """The Prometheus text endpoint (HTTP, no authentication): ``listen`` is "address:port" on a loopback address
    ("[::1]:port" for IPv6); absent: no endpoint."""

    listen: str | None = setting(loopback_endpoint, default=None)

    def endpoint(self) -> tuple[str, int] | None:
        """(address, port) to listen on, or None."""
        return None if self.listen is None else split_endpoint(self.listen)


@attrs.frozen
class Keylog:
    """Where to write session keys for Wireshark (absent: nowhere).  A relative path is relative to the cwd."""

    path: str | None = setting(text, default=None)


# Phase 1 proposals (RFC 2409 appendix A): the names a config uses and the numbers on the wire.
ENCRYPTIONS = {
    "aes128": (OakleyEncryption.AES_CBC, 128),
    "aes192": (OakleyEncryption.AES_CBC, 192),
    "aes256": (OakleyEncryption.AES_CBC, 256),
    "3des": (OakleyEncryption.TRIPLEDES_CBC, None),
}
HASHES = {"sha1": OakleyHash.SHA, "sha256": OakleyHash.SHA2_256, "sha384": OakleyHash.SHA2_384,
          "sha512": OakleyHash.SHA2_512}
#: ECDSA methods name a curve and a hash together (RFC 4754 section 3); plain "ecdsa" takes the proposal's hash.
AUTHS = {"psk": OakleyAuth.PRE_SHARED_KEY, "rsa": OakleyAuth.RSA_SIGNATURES, "ecdsa256": OakleyAuth.ECDSA_SHA256_P256,
         "ecdsa384": OakleyAuth.ECDSA_SHA384_P384, "ecdsa521": OakleyAuth.ECDSA_SHA512_P521}
_ECDSA_BY_HASH = {"sha256": "ecdsa256", "sha384": "ecdsa384", "sha512": "ecdsa521"}
GROUPS = (14, 15, 16, 19, 20, 21)
WEAK_GROUPS = (2, 5)  # MODP 1024 and 1536 bits (Logjam): only with security.allow_weak_dh_groups
AUTH_NAMES = ("psk", "rsa", "ecdsa", "ecdsa256", "ecdsa384", "ecdsa521")


@attrs.frozen
class Proposal:
    """One acceptable Phase 1 transform; the list's order is the order of preference."""

    encryption: str = setting(one_of(*ENCRYPTIONS))
    hash: str = setting(one_of(*HASHES))
    group: int = setting(number_in(*GROUPS, *WEAK_GROUPS))
    auth: str = setting(one_of(*AUTH_NAMES))
    lifetime: int = setting(integer(60, 7 * 86400), default=28800)

    def name(self) -> str:
        return f"{self.encryption}-{self.hash}-group{self.group}-{self.auth}"


DEFAULT_PROPOSALS = (Proposal("aes256", "sha256", 14, "psk"), Proposal("aes128", "sha256", 19, "psk"))


@attrs.frozen
class IKE:
    """Phase 1 (RFC 2409): proposals, retransmission, limits on half-open SAs, NAT-T and DPD."""

    proposals: tuple[Proposal, ...] = setting(
        array_of(table(Proposal), min_items=1, identity=Proposal.name), default=DEFAULT_PROPOSALS
    )
    retransmit_initial: float = setting(seconds(0.1, 60), default=2.0)
    retransmit_tries: int = setting(integer(0, 20), default=5)
    exchange_timeout: float = setting(seconds(1, 3600), default=60.0)
    halfopen_per_peer: int = setting(integer(1, 1_000_000), default=32)
    halfopen_total: int = setting(integer(1, 1_000_000), default=4096)
    nat_t: bool = setting(boolean, default=True)
    #: Dead Peer Detection (RFC 3706): seconds of silence before R-U-THERE; 0 turns it off.
    dpd_delay: int = setting(integer(0, 86400), default=30)
    #: Seconds the key server keeps a member's Phase 1 SA after its last registration under it (then it sends a
    #: Delete): rekeys and their acknowledgements need no Phase 1 SA (RFC 6407 section 4), and each SA costs
    #: memory and DPD traffic.  0 keeps every SA for its whole lifetime.
    registration_sa_linger: float = setting(seconds(0, 86400), default=60.0)


#: ID types a config may name (RFC 2407 section 4.6.2.1).
ID_TYPES = {"ipv4_addr": IDType.IPV4_ADDR, "ipv6_addr": IDType.IPV6_ADDR, "fqdn": IDType.FQDN,
            "user_fqdn": IDType.USER_FQDN, "key_id": IDType.KEY_ID}


@attrs.frozen
class IdentityConfig:
    """Our Phase 1 identity.  Without ``id_type`` it follows from ``id``: an IP address, user@fqdn or an FQDN."""

    id: str | None = setting(text, default=None)
    id_type: str | None = setting(one_of(*ID_TYPES), default=None)


@attrs.frozen
class Peer:
    """A peer, matched by ``address`` (Main Mode: the PSK is chosen before the ID is seen) and/or by ``id``
    (Aggressive Mode and signatures).  ``certificate``/``private_key`` are ours for this peer; ``ca`` the anchors
    its certificate must chain to; ``crl`` CRL files (PEM or DER) of those CAs or of intermediates below them: a
    certificate they list is refused, and so is every certificate of an issuer whose CRL is out of date."""

    address: str | None = setting(peer_address, default=None)
    id: str | None = setting(text, default=None)
    id_type: str | None = setting(one_of(*ID_TYPES), default=None)
    auth: str | None = setting(one_of(*AUTH_NAMES), default=None)
    psk_file: Secret | None = setting(psk_file, default=None)
    psk_env: Secret | None = setting(psk_env, default=None)
    certificate: str | None = setting(readable_file, default=None)
    private_key: str | None = setting(private_key_file, default=None)
    ca: tuple[str, ...] = setting(array_of(readable_file), default=())
    crl: tuple[str, ...] = setting(array_of(readable_file), default=())

    @property
    def psk(self) -> Secret | None:
        return self.psk_file or self.psk_env


def _groups(value, key):
    """The ``[[groups]]`` tables as group policies (:mod:`gdoiserver.group.config`, imported here as it builds on
    this module)."""
    from gdoiserver.group.config import groups

    return groups(value, key)


def _ipsec(value, key):
    """The ``[ipsec]`` table: the IPsec DOI's policies and SA sinks (:mod:`gdoiserver.doi.ipsec.config`, imported
    here as it builds on this module).  Absent: None, which that module reads as its defaults."""
    from gdoiserver.doi.ipsec.config import ipsec_table

    return ipsec_table(value, key)


@attrs.frozen
class Config:
    server: Server = section(Server)
    security: Security = section(Security)
    limits: Limits = section(Limits)
    keylog: Keylog = section(Keylog)
    store: Store = section(Store)
    control: Control = section(Control)
    metrics: Metrics = section(Metrics)
    ike: IKE = section(IKE)
    identity: IdentityConfig = section(IdentityConfig)
    peers: tuple[Peer, ...] = setting(array_of(table(Peer)), default=())
    groups: tuple = setting(_groups, default=())
    ipsec: Any = setting(_ipsec, default=None)


def parse_config(data: dict, source: str = "<config>") -> Config:
    """Check a parsed TOML document against the schema; ``source`` names it in errors."""
    try:
        config = table(Config)(data, "")
        _check_together(config)
        return config
    except Invalid as e:
        raise ConfigError(source, e.key, e.problem) from None


def _check_together(config: Config) -> None:
    """The rules that tie several keys together."""
    security = config.security
    for i, p in enumerate(config.ike.proposals):
        key = f"ike.proposals[{i}]"
        if p.encryption == "3des" and not security.allow_legacy_3des:
            raise _wrong(f"{key}.encryption", p.encryption, '"aes128", "aes192" or "aes256" (3DES needs '
                         "security.allow_legacy_3des = true)")
        if p.group in WEAK_GROUPS and not security.allow_weak_dh_groups:
            raise _wrong(f"{key}.group", p.group, "one of " + ", ".join(map(str, GROUPS)) + " (MODP groups 2 and 5 "
                         "need security.allow_weak_dh_groups = true)")
        if p.auth == "ecdsa" and p.hash not in _ECDSA_BY_HASH:
            raise _wrong(f"{key}.auth", p.auth, '"ecdsa" with hash sha256, sha384 or sha512 (RFC 4754 section 3), or '
                         '"ecdsa256", "ecdsa384", "ecdsa521" to name the curve')
    if config.ike.halfopen_per_peer > config.ike.halfopen_total:
        raise Invalid("ike.halfopen_per_peer", f"{config.ike.halfopen_per_peer} is more than ike.halfopen_total "
                      f"({config.ike.halfopen_total})")
    _identification(config.identity.id, config.identity.id_type, "identity")
    signers = [(i, (p.certificate, p.private_key)) for i, p in enumerate(config.peers) if p.certificate is not None]
    for i, pair in signers[1:]:
        if pair != signers[0][1]:
            raise Invalid(f"peers[{i}].certificate", f"differs from peers[{signers[0][0]}]'s: one certificate and key "
                          "serve every peer for now")
    seen: dict[tuple, int] = {}
    for i, peer in enumerate(config.peers):
        key = f"peers[{i}]"
        ident = _check_peer(peer, key)
        which = (peer.address, None if ident is None else _id_key(ident))
        if which in seen:
            address = "no address" if peer.address is None else f"address {_show(peer.address)}"
            named = "no id" if peer.id is None else f"id {_show(peer.id)}"
            raise Invalid(key, f"{address} and {named} duplicate peers[{seen[which]}]")
        seen[which] = i


def _check_peer(peer: Peer, key: str) -> Identification | None:
    """Check one ``[[peers]]`` entry; its ID payload, if it names one."""
    if peer.address is None and peer.id is None:
        raise Invalid(key, "has neither address nor id: one of them says which peer the entry is for")
    ident = _identification(peer.id, peer.id_type, key)
    if peer.psk_file is not None and peer.psk_env is not None:
        raise Invalid(f"{key}.psk_env", "psk_file is set too: give the pre-shared key one way")
    signed = peer.auth is not None and peer.auth != "psk"
    if peer.auth == "psk" and peer.psk is None:
        raise Invalid(f"{key}.auth", '"psk" needs psk_file or psk_env')
    if signed and peer.psk is not None:
        raise Invalid(f"{key}.auth", f"{_show(peer.auth)} authenticates with signatures, yet a pre-shared key is set")
    if (peer.certificate is None) != (peer.private_key is None):
        missing = "private_key" if peer.private_key is None else "certificate"
        raise Invalid(f"{key}.{missing}", "missing: certificate and private_key go together")
    if signed and (peer.certificate is None or not peer.ca):
        missing = "certificate" if peer.certificate is None else "ca"
        raise Invalid(f"{key}.{missing}", f"missing: auth {_show(peer.auth)} needs certificate, private_key and ca")
    if peer.crl and not peer.ca:
        raise Invalid(f"{key}.crl", "is set without ca: CRLs serve the CAs a peer's certificate chains to")
    return ident


def _identification(value: str | None, id_type: str | None, key: str) -> Identification | None:
    """The ID payload (RFC 2407 section 4.6.2) for an ``id`` and its ``id_type`` (None: guessed from the value)."""
    where = f"{key}.id" if key else "id"
    if value is None:
        if id_type is not None:
            raise Invalid(f"{key}.id_type" if key else "id_type", "is set without id")
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    if id_type is None:
        id_type = ("ipv4_addr" if address.version == 4 else "ipv6_addr") if address else (
            "user_fqdn" if "@" in value else "fqdn")
    if id_type in ("ipv4_addr", "ipv6_addr"):
        if address is None or address.version != (4 if id_type == "ipv4_addr" else 6):
            raise _wrong(where, value, f"an {'IPv4' if id_type == 'ipv4_addr' else 'IPv6'} address (id_type {id_type})")
        return Identification(ID_TYPES[id_type], 0, 0, address.packed)
    if id_type != "key_id" and (not value.isascii() or " " in value or (id_type == "fqdn") == ("@" in value)
                                or address is not None):
        shape = "user@domain.example" if id_type == "user_fqdn" else "a domain name such as gdoi.example.org"
        raise _wrong(where, value, f"{shape} in ASCII (id_type {id_type}; an address takes ipv4_addr or ipv6_addr)")
    return Identification(ID_TYPES[id_type], 0, 0, value.encode("utf-8"))


def read_toml(path: str) -> dict:
    """The TOML document at ``path``, or :class:`ConfigError` naming the file and what is wrong with it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, "", f"cannot read the file: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: not UTF-8 at octet {e.start}") from None


def load_config(path: str) -> Config:
    """Read and check the TOML file at ``path``, or raise :class:`ConfigError`."""
    return parse_config(read_toml(path), path)


# --- from the configuration to the Phase 1 policy -------------------------------------------------------------------


def phase1_proposal(p: Proposal) -> Phase1Proposal:
    """The Phase 1 transform (RFC 2409 appendix A numbers) a configured proposal names."""
    encryption, key_length = ENCRYPTIONS[p.encryption]
    auth = AUTHS[_ECDSA_BY_HASH[p.hash] if p.auth == "ecdsa" else p.auth]
    return Phase1Proposal(encryption, key_length, HASHES[p.hash], auth, p.group, p.lifetime)


def local_identification(config: Config) -> Identification | None:
    return _identification(config.identity.id, config.identity.id_type, "identity")


class PeerTable:
    """The ``[[peers]]`` entries, looked up by address (exact beats network, longer prefix beats shorter, both beat
    "any"; among equals the first in the file) or by identity (the first entry whose id matches)."""

    def __init__(self, peers: tuple[Peer, ...]):
        self.peers = peers
        self._ids = [(_id_key(_identification(p.id, p.id_type, "")), p) for p in peers if p.id is not None]

    def for_address(self, address: str) -> Peer | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        best, best_rank = None, -1
        for peer in self.peers:
            rank = _address_rank(peer.address, ip)
            if rank > best_rank:
                best, best_rank = peer, rank
        return best

    def for_identity(self, ident: Identification) -> Peer | None:
        key = _id_key(ident)
        return next((peer for k, peer in self._ids if k == key), None)

    def psk_for_address(self, address: str) -> bytes | None:
        """The PSK of the most specific entry for ``address`` (Main Mode, RFC 2409 section 5.4)."""
        peer = self.for_address(address)
        return None if peer is None or peer.psk is None else peer.psk.value

    def psk_for_identity(self, ident: Identification) -> bytes | None:
        """The PSK of the entry for the peer's ID payload (Aggressive Mode)."""
        peer = self.for_identity(ident)
        return None if peer is None or peer.psk is None else peer.psk.value


def _address_rank(pattern: str | None, ip) -> int:
    """How specifically ``pattern`` names ``ip``: -1 not at all, 0 "any", 1 + prefix length for a network, 1000 an
    exact address."""
    if pattern is None:
        return -1
    if pattern == "any":
        return 0
    if "/" in pattern:
        net = ipaddress.ip_network(pattern)
        return 1 + net.prefixlen if net.version == ip.version and ip in net else -1
    return 1000 if ipaddress.ip_address(pattern) == ip else -1


def _id_key(ident: Identification) -> tuple:
    """Identities compare by type and data; domain names without regard to case (RFC 4343)."""
    data = ident.data.lower() if ident.id_type in (IDType.FQDN, IDType.USER_FQDN) else ident.data
    return (ident.id_type, data)


def policy_from_config(config: Config, source: str = "<config>", **extra) -> Phase1Policy:
    """The :class:`Phase1Policy` a configuration describes; ``extra`` overrides fields.

    The certificate and private key of the ``[[peers]]`` entries become ``credentials`` (one pair for all peers:
    the policy holds one) and all their ``ca`` files one ``trust`` store, which holds their ``crl`` files too; a
    file that does not load raises :class:`ConfigError` naming ``source`` and the key.  We always answer
    R-U-THERE, so we always announce DPD (RFC 3706 section 5).
    """
    peers = PeerTable(config.peers)
    ike = config.ike
    extra.setdefault("vendor_ids", (DPD_VENDOR_ID,))
    extra.setdefault("nat_t_port", config.server.nat_t_port)
    signer = next(((i, p) for i, p in enumerate(config.peers) if p.certificate is not None), None)
    if signer is not None and "credentials" not in extra:
        i, peer = signer
        extra["credentials"] = _loaded(source, f"peers[{i}].certificate", certs.Credentials.load, peer.certificate,
                                       peer.private_key)
    anchors = [(f"peers[{i}].ca[{j}]", path) for i, p in enumerate(config.peers) for j, path in enumerate(p.ca)]
    if anchors and "trust" not in extra:
        loaded = [_loaded(source, key, certs.TrustStore.load, [path]).certificates for key, path in anchors]
        trust = certs.TrustStore(tuple(c for group in loaded for c in group))
        for i, p in enumerate(config.peers):
            for j, path in enumerate(p.crl):
                trust = _loaded(source, f"peers[{i}].crl[{j}]", trust.with_crls, path)
        extra["trust"] = trust
    return Phase1Policy(
        proposals=tuple(phase1_proposal(p) for p in ike.proposals),
        psk_for_address=peers.psk_for_address,
        psk_for_identity=peers.psk_for_identity,
        local_id=local_identification(config),
        allow_weak_groups=config.security.allow_weak_dh_groups,
        allow_legacy_3des=config.security.allow_legacy_3des,
        nat_t=ike.nat_t,
        retransmit_initial=ike.retransmit_initial,
        retransmit_tries=ike.retransmit_tries,
        exchange_timeout=ike.exchange_timeout,
        **extra,
    )


def _loaded(source: str, key: str, load, *args):
    """``load(*args)``, its failure (the file names itself) a :class:`ConfigError` at ``key``."""
    try:
        return load(*args)
    except (OSError, ValueError) as e:  # CredentialsError is a ValueError
        raise ConfigError(source, key, str(e)) from None
