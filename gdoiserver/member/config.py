"""The group member's configuration file (TOML), checked into frozen attrs objects as the daemon's is.

    [member]
    listen = [ { address = "192.0.2.10", port = 848 } ]  # our UDP sockets (absent: see MemberSection.listen)
    nat_t_port = 4500                                   # bound next to each listen address when ike.nat_t is on
    mode = "main"                                       # Phase 1: "main" or "aggressive" (RFC 2409 section 5)
    phase1_doi = 2                                      # the Phase 1 SA's DOI: 2 (GDOI) or 1 (IPsec)

    [identity]
    id = "gm1.example.org"                              # our Phase 1 identity (absent: our address)

    [auth]
    psk_file = "/etc/gdoiserver/member.psk"             # mode 0600; or certificate, private_key and ca

    [[key_servers]]                                     # tried in this order until one registers us
    address = "192.0.2.1"
    port = 848
    id = "ks.example.org"                               # optional: the key server's Phase 1 identity must be this

    [[groups]]
    number = 1234                                       # ID_KEY_ID; or oid = "1.3.6.1.4.1.99999.1" (RFC 8052)

    [registration]
    pfs = false                                         # KE in GROUPKEY-PULL (RFC 6407 section 3.2)
    sender_ids = 1                                      # sender IDs to ask for counter-mode TEKs (RFC 6054)

    [rekey]
    multicast = true                                    # join the KEK's multicast group to hear GROUPKEY-PUSH
    interface = "eth0"                                  # join it there (a name or an address; absent: see Rekey)
    unknown_kek_limit = 3                               # PUSHes in a row under unknown KEKs before registering again

    [sink]
    path = "gdoi-member-sas.jsonl"                      # JSON lines, mode 0600
    debug_keys = false                                  # write the keys there too (debug only)
    xfrm = false                                        # install the TEKs in the Linux kernel (pyroute2)

``[ike]``, ``[security]`` and ``[keylog]`` are the daemon's tables (:mod:`gdoiserver.config`).  With a certificate
and no ``ike.proposals``, the proposals are the daemon's defaults with the signature method of our key.
"""

import socket

import attrs

from gdoiserver.codec.constants import OakleyAuth
from gdoiserver.config import (
    AUTHS,
    IKE,
    ID_TYPES,
    Config,
    ConfigError,
    IdentityConfig,
    Invalid,
    Keylog,
    Listen,
    Proposal,
    read_toml,
    Secret,
    Security,
    Server,
    _check_together,
    _identification,
    _show,
    array_of,
    boolean,
    integer,
    ip_address,
    number_in,
    one_of,
    phase1_proposal,
    policy_from_config,
    private_key_file,
    psk_file,
    readable_file,
    section,
    seconds,
    setting,
    table,
    text,
)
from gdoiserver.crypto import certs
from gdoiserver.doi.gdoi.registration import MemberPolicy
from gdoiserver.exchanges.factory import MODE_NAMES
from gdoiserver.exchanges.phase1 import Phase1Policy
from gdoiserver.group.config import oid
from gdoiserver.group.policy import GDOI_PORT, GroupId

DEFAULT_SINK_PATH = "gdoi-member-sas.jsonl"


def _fraction(low: float, high: float):
    def check(value, key):
        if type(value) not in (int, float) or not low <= value <= high:
            raise Invalid(key, f"got {_show(value)}, expected a number from {low:g} to {high:g}")
        return float(value)

    return check


def _listen_identity(listen: Listen):
    return None if listen.port == 0 else f"{listen.address} port {listen.port}"


@attrs.frozen
class MemberSection:
    #: Absent: GDOI's port (RFC 6407 section 2) on the address the kernel sends from towards each key server, as
    #: our address goes into NAT-D and, without ``identity.id``, into our ID.
    listen: tuple[Listen, ...] | None = setting(array_of(table(Listen), min_items=1, identity=_listen_identity),
                                                default=None)
    nat_t_port: int = setting(integer(0, 65535), default=4500)
    mode: str = setting(one_of(*MODE_NAMES), default="main")
    #: The DOI of our Phase 1 SA payload: 2, GDOI, as RFC 3547 section 2.1.1 requires; 1, the IPsec DOI, for key
    #: servers (and decoders such as tshark) that read Phase 1 only under it.
    phase1_doi: int = setting(number_in(1, 2), default=2)


@attrs.frozen
class Auth:
    """How we authenticate in Phase 1: a pre-shared key, or a certificate and its key; ``ca`` are the anchors the key
    server's certificate (Phase 1, or CERT and POP_R in GROUPKEY-PULL) must chain to."""

    psk_file: Secret | None = setting(psk_file, default=None)
    certificate: str | None = setting(readable_file, default=None)
    private_key: str | None = setting(private_key_file, default=None)
    ca: tuple[str, ...] = setting(array_of(readable_file), default=())


@attrs.frozen
class KeyServer:
    address: str = setting(ip_address)
    port: int = setting(integer(1, 65535), default=GDOI_PORT)
    id: str | None = setting(text, default=None)
    id_type: str | None = setting(one_of(*ID_TYPES), default=None)

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


def _key_server_identity(ks: KeyServer) -> str:
    return f"{ks.address} port {ks.port}"


@attrs.frozen
class GroupEntry:
    """A group to join, named by its group number (ID_KEY_ID) or its OID (ID_OID, RFC 8052)."""

    number: int | None = setting(integer(0, 0xFFFFFFFF), default=None)
    oid: str | None = setting(oid, default=None)
    name: str | None = setting(text, default=None)

    @property
    def group_id(self) -> GroupId:
        return GroupId(number=self.number) if self.number is not None else GroupId(oid=self.oid)

    def __str__(self) -> str:
        return f"{self.name!r} ({self.group_id})" if self.name else str(self.group_id)


@attrs.frozen
class Registration:
    """GROUPKEY-PULL and when to run it again: at ``reregister_margin`` of the TEKs' lifetime, less up to ``jitter``
    of it; after every key server failed, again after ``retry_delay`` seconds (plus up to ``jitter`` of it)."""

    pfs: bool = setting(boolean, default=False)
    sender_ids: int = setting(integer(1, 1024), default=1)
    require_kek: bool = setting(boolean, default=False)
    require_server_pop: bool = setting(boolean, default=False)
    reregister_margin: float = setting(_fraction(0.5, 0.99), default=0.9)
    jitter: float = setting(_fraction(0.0, 0.2), default=0.05)
    retry_delay: float = setting(seconds(1, 3600), default=30.0)


@attrs.frozen
class Rekey:
    """How the member hears GROUPKEY-PUSH (RFC 6407 section 4).  Rekeys sent by unicast arrive on the member's
    ISAKMP sockets; with ``multicast``, a running member also joins the multicast group the KEK names, on
    ``interface`` (a name such as "eth0" or an address of ours; absent: the interface of the address the member
    registered from).  ``unknown_kek_limit`` PUSHes in a row under KEKs the member does not hold make it register
    again."""

    multicast: bool = setting(boolean, default=True)
    interface: str | None = setting(text, default=None)
    unknown_kek_limit: int = setting(integer(1, 1000), default=3)


@attrs.frozen
class SinkSection:
    path: str = setting(text, default=DEFAULT_SINK_PATH)
    debug_keys: bool = setting(boolean, default=False)
    xfrm: bool = setting(boolean, default=False)


def _group_identity(g: GroupEntry):
    return None if g.number is None and g.oid is None else str(g.group_id)


@attrs.frozen
class MemberConfig:
    key_servers: tuple[KeyServer, ...] = setting(array_of(table(KeyServer), min_items=1,
                                                          identity=_key_server_identity))
    groups: tuple[GroupEntry, ...] = setting(array_of(table(GroupEntry), min_items=1, identity=_group_identity))
    member: MemberSection = section(MemberSection)
    identity: IdentityConfig = section(IdentityConfig)
    auth: Auth = section(Auth)
    registration: Registration = section(Registration)
    rekey: Rekey = section(Rekey)
    sink: SinkSection = section(SinkSection)
    ike: IKE = section(IKE)
    security: Security = section(Security)
    keylog: Keylog = section(Keylog)


@attrs.frozen
class MemberSetup:
    """What a checked configuration gives the member: the configuration, the Phase 1 policy, the GROUPKEY-PULL
    policy, and the daemon :class:`Config` its sockets and engine are built from."""

    config: MemberConfig
    phase1: Phase1Policy
    pull: MemberPolicy
    transport: Config
    credentials: certs.Credentials | None = attrs.field(default=None, repr=False)


# --- reading -------------------------------------------------------------------------------------------------------


def parse_member_config(data: dict, source: str = "<config>") -> MemberSetup:
    """Check a parsed TOML document; :class:`ConfigError` names ``source``, the key and the problem."""
    try:
        config = table(MemberConfig)(data, "")
        return _setup(config, data, source)
    except Invalid as e:
        raise ConfigError(source, e.key, e.problem) from None


def load_member_config(path: str) -> MemberSetup:
    """Read and check the member's TOML file at ``path``, or raise :class:`ConfigError`."""
    return parse_member_config(read_toml(path), path)


def _loaded(key: str, load, *args):
    try:
        return load(*args)
    except (OSError, ValueError) as e:  # CredentialsError is a ValueError
        raise Invalid(key, str(e)) from None


def _signature_proposals(method: int) -> tuple[Proposal, ...]:
    """The daemon's default suites with the signature method ``method`` (RFC 4754 pairs each ECDSA curve with its
    hash)."""
    name = next(n for n, m in AUTHS.items() if m == method)
    hashes = {"ecdsa384": "sha384", "ecdsa521": "sha512"}
    h = hashes.get(name, "sha256")
    return (Proposal("aes256", h, 14, name), Proposal("aes128", h, 19, name))


def _setup(config: MemberConfig, data: dict, source: str) -> MemberSetup:
    auth = config.auth
    if (auth.psk_file is None) == (auth.certificate is None):
        raise Invalid("auth", "needs exactly one of psk_file or certificate (with private_key and ca)")
    if (auth.certificate is None) != (auth.private_key is None):
        missing = "private_key" if auth.private_key is None else "certificate"
        raise Invalid(f"auth.{missing}", "missing: certificate and private_key go together")
    if auth.certificate is not None and not auth.ca:
        raise Invalid("auth.ca", "missing: a certificate needs the CAs the key server's certificate chains to")
    for i, ks in enumerate(config.key_servers):
        _identification(ks.id, ks.id_type, f"key_servers[{i}]")
    for i, g in enumerate(config.groups):
        if (g.number is None) == (g.oid is None):
            raise Invalid(f"groups[{i}]", "needs exactly one of number or oid")
    credentials = trust = None
    if auth.certificate is not None:
        credentials = _loaded("auth.certificate", certs.Credentials.load, auth.certificate, auth.private_key)
    if auth.ca:
        trust = _loaded("auth.ca", certs.TrustStore.load, list(auth.ca))
    ike = config.ike
    if credentials is not None and "proposals" not in data.get("ike", {}):
        ike = attrs.evolve(ike, proposals=_signature_proposals(credentials.auth_method))
    method = OakleyAuth.PRE_SHARED_KEY if credentials is None else credentials.auth_method
    if not any(phase1_proposal(p).auth == method for p in ike.proposals):
        what = "the pre-shared key" if credentials is None else "our certificate"
        raise Invalid("ike.proposals", f"none authenticates with {what} ({OakleyAuth(method).name})")
    listen = config.member.listen or _route_listen(config.key_servers)
    transport = Config(
        server=Server(listen=listen, nat_t_port=config.member.nat_t_port),
        security=config.security, keylog=config.keylog, ike=ike, identity=config.identity,
    )
    _check_together(transport)
    psk = None if auth.psk_file is None else auth.psk_file.value
    phase1 = attrs.evolve(
        policy_from_config(transport, source, credentials=credentials, trust=trust),
        # The member initiates only, to the key servers it names: its one key serves them all (Main Mode looks the
        # key up by address, Aggressive Mode by the responder's ID, RFC 2409 section 5.4).
        psk_for_address=lambda address: psk, psk_for_identity=lambda ident: psk,
    )
    r = config.registration
    pull = MemberPolicy(
        pfs=r.pfs, sender_ids=r.sender_ids, credentials=credentials, trust=trust,
        require_server_pop=r.require_server_pop, require_kek=r.require_kek,
        retransmit_initial=ike.retransmit_initial, retransmit_tries=ike.retransmit_tries,
        exchange_timeout=ike.exchange_timeout,
    )
    if r.require_server_pop and trust is None:
        raise Invalid("registration.require_server_pop", "needs auth.ca to check the key server's certificate")
    return MemberSetup(config, phase1, pull, transport, credentials)


def route_source(address: str) -> str:
    """The address the kernel sends from towards ``address`` (a connected UDP socket sends nothing); OSError when
    there is no route."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((address, GDOI_PORT))
        return s.getsockname()[0]


def _route_listen(key_servers) -> tuple[Listen, ...]:
    listens = {}
    for i, ks in enumerate(key_servers):
        family = ":" in ks.address
        if family in listens:
            continue
        try:
            listens[family] = Listen(route_source(ks.address), GDOI_PORT)
        except OSError as e:
            raise Invalid("member.listen", f"absent, and there is no route to key_servers[{i}] {ks} ({e.strerror or e})"
                          ": set it") from None
    return tuple(listens.values())


def key_server_identity(ks: KeyServer, index: int):
    """The ID payload a key server must present, or None when any authenticated one will do."""
    return _identification(ks.id, ks.id_type, f"key_servers[{index}]")
