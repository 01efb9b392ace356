"""The TOML configuration: what parses, and how each kind of error names the file, the key and the problem."""

import ipaddress
import os

import attrs
from twisted.trial import unittest

from gdoiserver.codec.constants import DPD_VENDOR_ID, IDType
from gdoiserver.codec.payloads import Identification
from gdoiserver.config import (
    DEFAULT_LISTEN,
    Config,
    ConfigError,
    Invalid,
    Listen,
    integer,
    load_config,
    parse_config,
    policy_from_config,
    setting,
    table,
)
from gdoiserver.crypto import certs
from gdoiserver.exchanges.phase1 import Phase1Proposal
from tests import pki

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOOD = """\
[server]
listen = [
    { address = "127.0.0.1", port = 500 },
    { address = "0:0:0:0:0:0:0:1", port = 848 },
]
log_format = "json"

[security]
allow_weak_dh_groups = true

[limits]
max_datagram_size = 9000

[keylog]
path = "/tmp/keys.log"
"""


class LoadConfigTests(unittest.TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp() + ".toml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def error(self, text: str) -> ConfigError:
        path = self.write(text)
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(e.source, path)
        self.assertTrue(str(e).startswith(path + ": "), str(e))
        return e

    def test_good_config(self):
        """A config that sets every key parses into the frozen objects, addresses in canonical form."""
        config = load_config(self.write(GOOD))
        self.assertEqual(config.server.listen, (Listen("127.0.0.1", 500), Listen("::1", 848)))
        self.assertEqual(config.server.log_format, "json")
        self.assertTrue(config.security.allow_weak_dh_groups)
        self.assertFalse(config.security.allow_legacy_3des)
        self.assertEqual(config.limits.max_datagram_size, 9000)
        self.assertEqual(config.keylog.path, "/tmp/keys.log")

    def test_frozen(self):
        """Parsed configuration objects cannot be changed."""
        config = load_config(self.write(GOOD))
        self.assertRaises(AttributeError, setattr, config.limits, "max_datagram_size", 1)

    def test_array_of_tables_form(self):
        """`[[server.listen]]` tables mean the same as the inline-table array."""
        config = load_config(self.write('[[server.listen]]\naddress = "::"\nport = 500\n'))
        self.assertEqual(config.server.listen, (Listen("::", 500),))

    def test_empty_file_takes_defaults(self):
        """An empty file gives the defaults: 127.0.0.1 ports 500 and 848, text logs, no weak algorithms, no keylog."""
        config = load_config(self.write(""))
        self.assertEqual(config, Config())
        self.assertEqual(config.server.listen, DEFAULT_LISTEN)
        self.assertEqual(config.server.log_format, "text")
        self.assertFalse(config.security.allow_weak_dh_groups)
        self.assertEqual(config.limits.max_datagram_size, 65535)
        self.assertIsNone(config.keylog.path)

    def test_shipped_example(self):
        """etc/gdoiserver.toml parses and listens on 127.0.0.1 ports 500 and 848 with nothing weak allowed."""
        config = load_config(os.path.join(REPO, "etc", "gdoiserver.toml"))
        self.assertIn(Listen("127.0.0.1", 500), config.server.listen)
        self.assertIn(Listen("127.0.0.1", 848), config.server.listen)
        self.assertEqual(config.security, Config().security)

    def test_missing_file(self):
        """A file that does not exist is named with the reason it cannot be read."""
        path = self.mktemp()
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(e), f"{path}: cannot read the file: No such file or directory")

    def test_toml_syntax_error(self):
        """Bad TOML syntax names the file and the line and column."""
        e = self.error('[server]\nlog_format = "text"\nlisten = [\n  { address = "127.0.0.1" port = 500 },\n]\n')
        self.assertIn("not valid TOML", str(e))
        self.assertIn("line 4", str(e))

    def test_not_utf8(self):
        """A file that is not UTF-8 is refused as not valid TOML rather than with a traceback."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'[keylog]\npath = "\xff"\n')
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("not valid TOML", str(e))

    def test_unknown_key(self):
        """A key the schema does not have is named with its dotted path and the keys that are allowed."""
        e = self.error("[server]\nlog_fromat = 'json'\n")
        self.assertEqual(e.key, "server.log_fromat")
        self.assertEqual(e.problem, "unknown key (expected one of: listen, log_format, nat_t_port)")

    def test_unknown_section(self):
        """An unknown top-level table is named too."""
        e = self.error("[grups]\nx = 1\n")
        self.assertEqual(e.key, "grups")
        self.assertIn("unknown key", e.problem)

    def test_unknown_key_in_listen_item(self):
        """An unknown key inside one listen entry is named with the entry's index."""
        e = self.error('[server]\nlisten = [{ address = "::1", port = 500, proto = "udp" }]\n')
        self.assertEqual(e.key, "server.listen[0].proto")

    def test_wrong_type(self):
        """A value of the wrong type is shown as written, with what was expected."""
        e = self.error('[security]\nallow_weak_dh_groups = "no"\n')
        self.assertEqual(str(e), f'{e.source}: security.allow_weak_dh_groups: got "no", expected true or false')

    def test_boolean_is_not_an_integer(self):
        """`true` is refused where an integer is expected (Python's bool being an int must not leak through)."""
        e = self.error("[limits]\nmax_datagram_size = true\n")
        self.assertEqual(e.problem, "got true, expected an integer from 28 to 65535")

    def test_section_not_a_table(self):
        """A section given as a plain value is refused as not a table."""
        e = self.error("limits = 5\n")
        self.assertEqual((e.key, e.problem), ("limits", "got 5, expected a table"))

    def test_port_out_of_range(self):
        """A port above 65535 is refused, naming the listen entry and the range."""
        e = self.error('[server]\nlisten = [{ address = "127.0.0.1", port = 500 }, { address = "::1", port = 65536 }]')
        self.assertEqual(str(e), f"{e.source}: server.listen[1].port: got 65536, expected an integer from 0 to 65535")

    def test_negative_port(self):
        """A negative port is refused."""
        e = self.error('[server]\nlisten = [{ address = "127.0.0.1", port = -1 }]\n')
        self.assertEqual(e.key, "server.listen[0].port")

    def test_bad_address(self):
        """An address that is not an IP literal (a host name here) is refused."""
        e = self.error('[server]\nlisten = [{ address = "localhost", port = 500 }]\n')
        self.assertEqual(e.key, "server.listen[0].address")
        self.assertIn('got "localhost", expected an IPv4 or IPv6 address literal', e.problem)

    def test_address_must_be_a_string(self):
        """An integer is not taken as an IPv4 address even though ipaddress would accept it."""
        e = self.error('[server]\nlisten = [{ address = 2130706433, port = 500 }]\n')
        self.assertEqual(e.key, "server.listen[0].address")

    def test_missing_required_key(self):
        """A listen entry without a port names the missing key."""
        e = self.error('[server]\nlisten = [{ address = "127.0.0.1" }]\n')
        self.assertEqual((e.key, e.problem), ("server.listen[0].port", "missing (this key is required)"))

    def test_empty_listen(self):
        """An empty listen array is refused: the server would hear nothing."""
        e = self.error("[server]\nlisten = []\n")
        self.assertEqual(e.key, "server.listen")
        self.assertIn("at least 1", e.problem)

    def test_listen_not_an_array(self):
        """A single table where an array is expected is refused."""
        e = self.error('[server]\nlisten = { address = "127.0.0.1", port = 500 }\n')
        self.assertEqual(e.problem, "got a table, expected an array of 1 or more items")

    def test_duplicate_listen(self):
        """The same address and port twice, even spelled differently, is refused naming both entries."""
        e = self.error('[server]\nlisten = [{ address = "::1", port = 500 }, { address = "0::1", port = 500 }]\n')
        self.assertEqual((e.key, e.problem), ("server.listen[1]", "::1 port 500 duplicates server.listen[0]"))

    def test_port_zero_may_repeat(self):
        """Port 0 (any free port) may appear twice on one address: each binding gets its own port."""
        config = parse_config({"server": {"listen": [{"address": "127.0.0.1", "port": 0}] * 2}})
        self.assertEqual(len(config.server.listen), 2)

    def test_bad_choice(self):
        """log_format accepts only the listed choices, and says which."""
        e = self.error('[server]\nlog_format = "xml"\n')
        self.assertEqual(e.problem, 'got "xml", expected one of "text", "json"')

    def test_datagram_limit_below_header(self):
        """max_datagram_size below the 28-octet ISAKMP header is refused."""
        e = self.error("[limits]\nmax_datagram_size = 27\n")
        self.assertEqual(e.key, "limits.max_datagram_size")

    def test_empty_keylog_path(self):
        """An empty keylog path is refused rather than taken as a file name."""
        e = self.error('[keylog]\npath = ""\n')
        self.assertEqual((e.key, e.problem), ("keylog.path", 'got "", expected a non-empty string'))

    def test_parse_config_names_source(self):
        """parse_config names the source it is given, for configs that do not come from a file."""
        e = self.assertRaises(ConfigError, parse_config, {"limits": {"max_datagram_size": 1}}, "inline")
        self.assertEqual(str(e), "inline: limits.max_datagram_size: got 1, expected an integer from 28 to 65535")


class SchemaHelperTests(unittest.TestCase):
    def test_table_reads_a_new_class(self):
        """table() reads any attrs class declared with setting(): how later sections join the schema."""
        @attrs.frozen
        class Group:
            id: int = setting(integer(1, 10))
            rekey: int = setting(integer(0, 5), default=3)

        self.assertEqual(table(Group)({"id": 4}, "groups[0]"), Group(4, 3))
        e = self.assertRaises(Invalid, table(Group), {"id": 4, "rekey": 9}, "groups[0]")
        self.assertEqual(e.key, "groups[0].rekey")



class ControlMetricsConfigTests(unittest.TestCase):
    def test_defaults(self):
        """Without [control] and [metrics]: no control socket and no metrics endpoint."""
        config = parse_config({})
        self.assertIsNone(config.control.socket)
        self.assertIsNone(config.metrics.listen)
        self.assertIsNone(config.metrics.endpoint())

    def test_metrics_loopback_forms(self):
        """metrics.listen takes an IPv4 or bracketed IPv6 loopback address and a port, kept canonical."""
        for given, listen, endpoint in [
            ("127.0.0.1:9848", "127.0.0.1:9848", ("127.0.0.1", 9848)),
            ("127.1.2.3:0", "127.1.2.3:0", ("127.1.2.3", 0)),
            ("[::1]:9848", "[::1]:9848", ("::1", 9848)),
            ("[0:0:0:0:0:0:0:1]:65535", "[::1]:65535", ("::1", 65535)),
        ]:
            metrics = parse_config({"metrics": {"listen": given}}).metrics
            self.assertEqual((metrics.listen, metrics.endpoint()), (listen, endpoint), given)

    def test_metrics_refuses_other_addresses(self):
        """A non-loopback address, a name, a missing or bad port, or an IPv6 address without brackets is refused
        with the key, the value and the expected form."""
        for bad in ["0.0.0.0:9848", "192.0.2.1:9848", "[::]:9848", "localhost:9848", "127.0.0.1", "127.0.0.1:",
                    "127.0.0.1:65536", "127.0.0.1:-1", "::1:9848", "[127.0.0.1]:9848", "127.0.0.1:98x", 9848]:
            e = self.assertRaises(ConfigError, parse_config, {"metrics": {"listen": bad}}, "m.toml")
            self.assertEqual(e.key, "metrics.listen", bad)
            self.assertIn("expected \"address:port\" on a loopback address", e.problem)
        e = self.assertRaises(ConfigError, parse_config, {"metrics": {"listen": "0.0.0.0:9848"}}, "m.toml")
        self.assertEqual(str(e), 'm.toml: metrics.listen: got "0.0.0.0:9848", expected "address:port" on a loopback '
                         'address, such as "127.0.0.1:9848" or "[::1]:9848" (the endpoint has no authentication)')

    def test_control_socket(self):
        """control.socket takes a path; an empty one, a non-string or one too long for a UNIX socket address is
        refused."""
        self.assertEqual(parse_config({"control": {"socket": "/run/gdoi/ctl.sock"}}).control.socket,
                         "/run/gdoi/ctl.sock")
        self.assertEqual(parse_config({"control": {"socket": "a" * 107}}).control.socket, "a" * 107)
        for bad in ["", 1, "a" * 108, "bad\0path"]:
            e = self.assertRaises(ConfigError, parse_config, {"control": {"socket": bad}})
            self.assertEqual(e.key, "control.socket", repr(bad))
        e = self.assertRaises(ConfigError, parse_config, {"control": {"socket": "a" * 108}})
        self.assertIn("at most 107 octets", e.problem)

    def test_unknown_control_key(self):
        """A misspelt key in [control] or [metrics] is named rather than ignored."""
        e = self.assertRaises(ConfigError, parse_config, {"control": {"path": "x"}})
        self.assertEqual(e.key, "control.path")
        e = self.assertRaises(ConfigError, parse_config, {"metrics": {"address": "127.0.0.1:1"}})
        self.assertEqual(e.key, "metrics.address")


PSK = b"correct horse battery staple"


class Phase1ConfigTests(unittest.TestCase):
    """[ike], [identity] and [[peers]]: parsing, every error, the PSK files, and the Phase 1 policy built from them."""

    def write(self, text: str) -> str:
        path = self.mktemp() + ".toml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def secret_file(self, content: bytes = PSK, mode: int = 0o600) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, mode)
        return path

    def error(self, text: str) -> ConfigError:
        path = self.write(text)
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertTrue(str(e).startswith(path + ": "), str(e))
        return e

    def peer(self, **keys) -> str:
        return "[[peers]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())

    def test_defaults(self):
        """Without [ike] the server offers AES-256/SHA2-256/MODP-2048 and AES-128/SHA2-256/ECP-256 with PSKs, NAT-T
        on port 4500 and DPD after 30 s; the policy carries the RFC 2409 numbers."""
        config = parse_config({})
        self.assertEqual(config.server.nat_t_port, 4500)
        self.assertEqual((config.ike.nat_t, config.ike.dpd_delay, config.ike.retransmit_tries), (True, 30, 5))
        policy = policy_from_config(config)
        self.assertEqual(policy.proposals, (Phase1Proposal(7, 256, 4, 1, 14, 28800), Phase1Proposal(7, 128, 4, 1, 19,
                                                                                                    28800)))
        self.assertIsNone(policy.local_id)
        self.assertIsNone(policy.psk_for_address("192.0.2.1"))

    def test_full_configuration(self):
        """Every new key set: the values parse and reach the policy."""
        psk = self.secret_file()
        issued = pki.hierarchy("p256", sans=("ks.example.org",))
        key = pki.write_key(os.path.abspath(self.mktemp()), issued.leaf.key)
        cert = pki.write_certificates(os.path.abspath(self.mktemp()), issued.leaf.certificate,
                                      issued.intermediate.certificate)
        ca = pki.write_certificates(os.path.abspath(self.mktemp()), issued.root.certificate)
        text = (
            "[server]\nnat_t_port = 4501\n"
            "[security]\nallow_legacy_3des = true\nallow_weak_dh_groups = true\n"
            "[ike]\nproposals = [\n"
            '  { encryption = "aes256", hash = "sha512", group = 21, auth = "ecdsa", lifetime = 3600 },\n'
            '  { encryption = "aes192", hash = "sha384", group = 20, auth = "rsa" },\n'
            '  { encryption = "3des", hash = "sha1", group = 5, auth = "psk" },\n'
            '  { encryption = "aes128", hash = "sha256", group = 15, auth = "ecdsa384" },\n]\n'
            "retransmit_initial = 0.5\nretransmit_tries = 3\nexchange_timeout = 30\nhalfopen_per_peer = 4\n"
            "halfopen_total = 64\nnat_t = false\ndpd_delay = 0\n"
            '[identity]\nid = "KeyServer.example.org"\n'
            + self.peer(address="192.0.2.0/24", psk_file=psk)
            + self.peer(id="member@example.org", auth="ecdsa", certificate=cert, private_key=key, ca=[ca])
        )
        config = load_config(self.write(text))
        self.assertEqual(config.server.nat_t_port, 4501)
        self.assertEqual(config.ike.exchange_timeout, 30.0)
        self.assertEqual(config.peers[1].ca, (ca,))
        policy = policy_from_config(config)
        self.assertEqual(policy.proposals, (
            Phase1Proposal(7, 256, 6, 11, 21, 3600),  # ecdsa with SHA2-512: ECDSA-521 (RFC 4754 section 3)
            Phase1Proposal(7, 192, 5, 3, 20, 28800),  # rsa
            Phase1Proposal(5, None, 2, 1, 5, 28800),
            Phase1Proposal(7, 128, 4, 10, 15, 28800),
        ))
        self.assertEqual(
            (policy.retransmit_initial, policy.retransmit_tries, policy.exchange_timeout, policy.nat_t),
            (0.5, 3, 30.0, False),
        )
        self.assertTrue(policy.allow_weak_groups and policy.allow_legacy_3des)
        self.assertEqual(policy.local_id, Identification(IDType.FQDN, 0, 0, b"KeyServer.example.org"))
        self.assertEqual(policy.psk_for_address("192.0.2.77"), PSK)
        self.assertEqual(policy.credentials.certificate, issued.leaf.certificate)
        self.assertEqual(policy.credentials.chain, (issued.intermediate.certificate,))
        self.assertEqual(policy.trust.certificates, (issued.root.certificate,))
        self.assertEqual(policy.vendor_ids, (DPD_VENDOR_ID,))
        self.assertEqual(policy.nat_t_port, 4501)

    def test_credentials_errors(self):
        """A certificate that does not load, or a second, different certificate, is refused naming the key."""
        issued = pki.hierarchy("p256")
        key = pki.write_key(os.path.abspath(self.mktemp()), issued.leaf.key)
        cert = pki.write_certificates(os.path.abspath(self.mktemp()), issued.leaf.certificate)
        other = pki.write_certificates(os.path.abspath(self.mktemp()), issued.intermediate.certificate)
        garbage = self.secret_file(b"not a certificate", 0o644)
        peers = [{"address": "any", "certificate": garbage, "private_key": key}]
        e = self.assertRaises(ConfigError, policy_from_config, parse_config({"peers": peers}), "gdoi.toml")
        self.assertEqual((e.source, e.key), ("gdoi.toml", "peers[0].certificate"))
        self.assertIn(garbage, e.problem)
        peers = [{"address": "any", "certificate": cert, "private_key": key, "ca": [garbage]}]
        e = self.assertRaises(ConfigError, policy_from_config, parse_config({"peers": peers}))
        self.assertEqual(e.key, "peers[0].ca[0]")
        peers = [{"address": "any", "certificate": cert, "private_key": key},
                 {"id": "a.example", "certificate": cert, "private_key": key},
                 {"id": "b.example", "certificate": other, "private_key": key}]
        e = self.assertRaises(ConfigError, parse_config, {"peers": peers})
        self.assertEqual(e.key, "peers[2].certificate")
        self.assertIn("one certificate and key serve every peer", e.problem)

    def test_crl_files(self):
        """``crl`` (PEM, several CRLs, or DER) beside ``ca`` puts every CRL of every entry into the one trust store
        the policy checks certificates with: a listed certificate is refused there."""
        issued = pki.hierarchy("p256")
        leaf = issued.leaf.certificate
        ca = pki.write_certificates(os.path.abspath(self.mktemp()), issued.root.certificate)
        pem = pki.write_crls(os.path.abspath(self.mktemp()), pki.crl(issued.root, []),
                             pki.crl(issued.intermediate, [leaf]))
        der = pki.write_crls(os.path.abspath(self.mktemp()), pki.crl(issued.intermediate, [], number=2), der=True)
        text = (self.peer(address="192.0.2.1", ca=[ca], crl=[pem]) + self.peer(address="192.0.2.2", ca=[ca], crl=[der])
                + self.peer(address="192.0.2.3", ca=[ca]))
        config = load_config(self.write(text))
        self.assertEqual([p.crl for p in config.peers], [(pem,), (der,), ()])
        trust = policy_from_config(config).trust
        self.assertEqual(len(trust.crls), 3)
        with self.assertRaises(certs.CertificateError) as cm:
            certs.validate_chain(trust, leaf, [issued.intermediate.certificate], pki.NOW)
        self.assertIn("was revoked", cm.exception.reason)

    def test_crl_errors(self):
        """A CRL file that is missing, not a CRL, or not signed by the CA it names is refused naming its key;
        ``crl`` without ``ca`` is refused at parse time."""
        issued = pki.hierarchy("p256")
        ca = pki.write_certificates(os.path.abspath(self.mktemp()), issued.root.certificate)
        good = pki.write_crls(os.path.abspath(self.mktemp()), pki.crl(issued.root, []))
        forged_crl = pki.crl(issued.root, [], signing_key=pki.key("p256", 6))
        forged = pki.write_crls(os.path.abspath(self.mktemp()), forged_crl)
        garbage = self.secret_file(b"not a CRL", 0o644)
        e = self.error(self.peer(address="any", ca=[ca], crl=["/nonexistent/x.crl"]))
        self.assertEqual(e.key, "peers[0].crl[0]")
        e = self.error(self.peer(address="any", crl=[good]))
        self.assertEqual(e.key, "peers[0].crl")
        self.assertIn("without ca", e.problem)
        for path, words in ((garbage, "not a PEM or DER X.509 CRL"), (forged, "not signed by the CA certificate")):
            peers = [{"address": "192.0.2.1", "ca": [ca]}, {"address": "any", "ca": [ca], "crl": [good, path]}]
            e = self.assertRaises(ConfigError, policy_from_config, parse_config({"peers": peers}), "gdoi.toml")
            self.assertEqual((e.source, e.key), ("gdoi.toml", "peers[1].crl[1]"))
            self.assertIn(path, e.problem)
            self.assertIn(words, e.problem)

    def test_psk_file_mode(self):
        """A PSK file that group or others may read (0644) is refused, naming the key, the file and its mode; the
        PSK is not in the message."""
        path = self.secret_file(mode=0o644)
        e = self.error(self.peer(address="any", psk_file=path))
        self.assertEqual(e.key, "peers[0].psk_file")
        self.assertIn(f'"{path}" has mode 0644, expected 0600 or stricter', e.problem)
        self.assertNotIn(PSK.decode(), str(e))
        e = self.error(self.peer(address="any", psk_file=self.secret_file(mode=0o640)))
        self.assertIn("mode 0640", e.problem)
        config = parse_config({"peers": [{"address": "any", "psk_file": self.secret_file(mode=0o400)}]})
        self.assertEqual(policy_from_config(config).psk_for_address("192.0.2.1"), PSK)

    def test_psk_file_problems(self):
        """A missing, empty or non-regular PSK file (a directory, a FIFO), and a "0x" one that is not hexadecimal,
        are each refused."""
        missing = os.path.abspath(self.mktemp())
        self.assertIn("No such file or directory", self.error(self.peer(address="any", psk_file=missing)).problem)
        self.assertIn("is empty", self.error(self.peer(address="any", psk_file=self.secret_file(b"\n"))).problem)
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory, 0o700)
        self.assertIn("not a regular file", self.error(self.peer(address="any", psk_file=directory)).problem)
        fifo = os.path.abspath(self.mktemp())
        os.mkfifo(fifo, 0o600)  # opened without blocking, then refused
        self.assertIn("not a regular file", self.error(self.peer(address="any", psk_file=fifo)).problem)
        e = self.error(self.peer(address="any", psk_file=self.secret_file(b"0xnothex\n")))
        self.assertIn("not hexadecimal", e.problem)
        self.assertNotIn("nothex", str(e))

    def test_psk_file_forms(self):
        """One trailing newline is not part of the PSK; "0x" followed by hex digits gives binary octets."""
        def psk(content):
            config = parse_config({"peers": [{"address": "any", "psk_file": self.secret_file(content)}]})
            return policy_from_config(config).psk_for_address("192.0.2.1")

        self.assertEqual(psk(PSK + b"\n"), PSK)
        self.assertEqual(psk(PSK + b"\r\n"), PSK)
        self.assertEqual(psk(PSK + b"\n\n"), PSK + b"\n")
        self.assertEqual(psk(b"0x00ff10\n"), b"\x00\xff\x10")

    def test_psk_never_shown(self):
        """The PSK shows in no repr of the configuration or policy, and in no error about the same file."""
        path = self.secret_file()
        config = parse_config({"peers": [{"address": "any", "psk_file": path}]})
        for text in (repr(config), str(config), repr(policy_from_config(config)), repr(config.peers[0].psk)):
            self.assertNotIn(PSK.decode(), text)
            self.assertNotIn(PSK.hex(), text)
        self.assertIn(path, repr(config.peers[0].psk))
        e = self.error(self.peer(address="any", psk_file=path) + "[ike]\nnat_t = 1\n")
        self.assertNotIn(PSK.decode(), str(e))

    def test_psk_env(self):
        """psk_env reads the PSK from an environment variable; an unset or empty one is refused by name."""
        self.patch(os, "environb", {b"GDOI_TEST_PSK": PSK + b"\n", b"GDOI_EMPTY": b""})
        config = parse_config({"peers": [{"address": "any", "psk_env": "GDOI_TEST_PSK"}]})
        self.assertEqual(policy_from_config(config).psk_for_address("198.51.100.1"), PSK)
        self.assertEqual(config.peers[0].psk.source, "environment variable GDOI_TEST_PSK")
        self.assertNotIn(PSK.decode(), repr(config))
        e = self.error(self.peer(address="any", psk_env="GDOI_UNSET_PSK"))
        self.assertEqual((e.key, e.problem),
                         ("peers[0].psk_env", 'the environment variable "GDOI_UNSET_PSK" is not set'))
        self.assertIn("is empty", self.error(self.peer(address="any", psk_env="GDOI_EMPTY")).problem)
        e = self.error(self.peer(address="any", psk_env="GDOI_TEST_PSK", psk_file=self.secret_file()))
        self.assertEqual(e.key, "peers[0].psk_env")

    def test_3des_needs_opt_in(self):
        """3DES is refused without security.allow_legacy_3des, and the message says so."""
        e = self.error('[ike]\nproposals = [{encryption = "3des", hash = "sha256", group = 14, auth = "psk"}]\n')
        self.assertEqual(e.key, "ike.proposals[0].encryption")
        self.assertIn("security.allow_legacy_3des", e.problem)

    def test_weak_groups_need_opt_in(self):
        """MODP groups 2 and 5 need security.allow_weak_dh_groups; group 1 and unknown groups are never taken."""
        e = self.error('[ike]\nproposals = [{encryption = "aes128", hash = "sha256", group = 2, auth = "psk"}]\n')
        self.assertEqual(e.key, "ike.proposals[0].group")
        self.assertIn("security.allow_weak_dh_groups", e.problem)
        for group in (1, 7, "14"):
            e = self.error(f'[security]\nallow_weak_dh_groups = true\n[ike]\nproposals = [{{encryption = "aes128", '
                           f'hash = "sha256", group = {_toml(group)}, auth = "psk"}}]\n')
            self.assertEqual(e.key, "ike.proposals[0].group")
            self.assertIn("expected one of 14, 15, 16, 19, 20, 21, 2, 5", e.problem)

    def test_proposal_errors(self):
        """Unknown names, a missing key, ECDSA with SHA-1, a duplicate and a short lifetime are each refused."""
        base = {"encryption": "aes128", "hash": "sha256", "group": 14, "auth": "psk"}

        def problem(*proposals):
            e = self.assertRaises(ConfigError, parse_config, {"ike": {"proposals": list(proposals)}})
            return e.key, e.problem

        self.assertEqual(problem({**base, "encryption": "des"}), (
            "ike.proposals[0].encryption", 'got "des", expected one of "aes128", "aes192", "aes256", "3des"'))
        self.assertEqual(problem({**base, "hash": "md5"})[0], "ike.proposals[0].hash")
        self.assertEqual(problem({**base, "auth": "xauth"})[0], "ike.proposals[0].auth")
        self.assertEqual(problem({k: v for k, v in base.items() if k != "auth"}),
                         ("ike.proposals[0].auth", "missing (this key is required)"))
        key, text = problem({**base, "auth": "ecdsa", "hash": "sha1"})
        self.assertEqual(key, "ike.proposals[0].auth")
        self.assertIn("RFC 4754", text)
        self.assertEqual(problem(base, {**base, "lifetime": 600}),
                         ("ike.proposals[1]", "aes128-sha256-group14-psk duplicates ike.proposals[0]"))
        self.assertEqual(problem({**base, "lifetime": 59})[0], "ike.proposals[0].lifetime")
        self.assertEqual(problem(), ("ike.proposals", "has 0 items, expected at least 1"))

    def test_ike_numbers(self):
        """Durations take integers or decimals within their range, never strings or booleans; the per-peer cap may
        not exceed the total."""
        self.assertEqual(parse_config({"ike": {"retransmit_initial": 1}}).ike.retransmit_initial, 1.0)
        for bad in ("2", True, 0.05, 61):
            e = self.assertRaises(ConfigError, parse_config, {"ike": {"retransmit_initial": bad}})
            self.assertEqual(e.key, "ike.retransmit_initial")
            self.assertIn("expected a number of seconds from 0.1 to 60", e.problem)
        e = self.error("[ike]\nhalfopen_per_peer = 10\nhalfopen_total = 5\n")
        self.assertEqual((e.key, e.problem), ("ike.halfopen_per_peer", "10 is more than ike.halfopen_total (5)"))
        self.assertEqual(self.error("[ike]\ndpd_delay = -1\n").key, "ike.dpd_delay")
        self.assertEqual(self.error("[server]\nnat_t_port = 65536\n").key, "server.nat_t_port")

    def test_peer_errors(self):
        """Each contradiction in a peer entry is refused, naming the entry and key."""
        psk, key, cert = self.secret_file(), self.secret_file(b"k"), self.secret_file(b"c", 0o644)
        cases = [
            (dict(auth="psk", psk_file=psk), "peers[0]", "has neither address nor id"),
            (dict(address="any", auth="psk"), "peers[0].auth", '"psk" needs psk_file or psk_env'),
            (dict(address="any", auth="rsa", psk_file=psk), "peers[0].auth", "yet a pre-shared key is set"),
            (dict(address="any", certificate=cert), "peers[0].private_key", "missing: certificate and private_key"),
            (dict(address="any", auth="ecdsa", certificate=cert, private_key=key), "peers[0].ca", "needs certificate"),
            (dict(address="any", auth="rsa"), "peers[0].certificate", "needs certificate, private_key and ca"),
            (dict(address="192.0.2.1/24"), "peers[0].address", "no host bits"),
            (dict(address="peer.example.org"), "peers[0].address", 'or "any"'),
            (dict(id="192.0.2.1", id_type="fqdn"), "peers[0].id", "a domain name"),
            (dict(id="gw.example.org", id_type="ipv4_addr"), "peers[0].id", "an IPv4 address"),
            (dict(id="gw.example.org", id_type="user_fqdn"), "peers[0].id", "user@domain.example"),
            (dict(address="any", id_type="fqdn"), "peers[0].id_type", "is set without id"),
            (dict(address="any", ca=[os.path.abspath(self.mktemp())]), "peers[0].ca[0]", "not a readable file"),
            (dict(address="any", private_key=self.secret_file(b"k", 0o644), certificate=cert),
             "peers[0].private_key", "has mode 0644, expected 0600 or stricter"),
        ]
        for keys, where, text in cases:
            e = self.error(self.peer(**keys))
            self.assertEqual(e.key, where, keys)
            self.assertIn(text, e.problem)

    def test_duplicate_peers(self):
        """Two entries for the same address and id are refused; the same address with different ids is not."""
        psk = self.secret_file()
        e = self.error(self.peer(address="::1", psk_file=psk) + self.peer(address="0::1", psk_file=psk))
        self.assertEqual((e.key, e.problem), ("peers[1]", 'address "::1" and no id duplicate peers[0]'))
        e = self.error(self.peer(id="GW.example.org", psk_file=psk) + self.peer(id="gw.example.org", psk_file=psk))
        self.assertEqual(e.key, "peers[1]")
        parse_config({"peers": [{"address": "any", "id": "a.example"}, {"address": "any", "id": "b.example"}]})

    def test_identity(self):
        """[identity] id gives our ID payload; its type follows from the value unless id_type says."""
        def local_id(**keys):
            return policy_from_config(parse_config({"identity": keys})).local_id

        self.assertEqual(local_id(id="192.0.2.5"), Identification.of(ipaddress.ip_address("192.0.2.5")))
        self.assertEqual(local_id(id="2001:db8::5"), Identification.of(ipaddress.ip_address("2001:db8::5")))
        self.assertEqual(local_id(id="ks@example.org"), Identification(IDType.USER_FQDN, 0, 0, b"ks@example.org"))
        self.assertEqual(local_id(id="ks.example.org"), Identification(IDType.FQDN, 0, 0, b"ks.example.org"))
        self.assertEqual(local_id(id="group key server", id_type="key_id"),
                         Identification(IDType.KEY_ID, 0, 0, b"group key server"))
        e = self.error('[identity]\nid = "ks.example.org"\nid_type = "ipv6_addr"\n')
        self.assertEqual(e.key, "identity.id")
        self.assertEqual(self.error('[identity]\nid_type = "fqdn"\n').key, "identity.id_type")

    def test_psk_for_address_precedence(self):
        """Main Mode's PSK lookup: an exact address beats a network, a longer prefix a shorter one, and "any" comes
        last; the most specific entry decides even when it has no PSK."""
        issued = pki.hierarchy("p256")
        key = pki.write_key(os.path.abspath(self.mktemp()), issued.leaf.key)
        cert = pki.write_certificates(os.path.abspath(self.mktemp()), issued.leaf.certificate)
        peers = [
            {"address": "any", "psk_file": self.secret_file(b"any")},
            {"address": "192.0.2.0/24", "psk_file": self.secret_file(b"net24")},
            {"address": "192.0.2.0/28", "psk_file": self.secret_file(b"net28")},
            {"address": "192.0.2.1", "psk_file": self.secret_file(b"exact")},
            {"address": "192.0.2.9", "auth": "rsa", "certificate": cert, "private_key": key, "ca": [cert]},
            {"address": "2001:db8::/32", "psk_file": self.secret_file(b"v6")},
        ]
        lookup = policy_from_config(parse_config({"peers": peers})).psk_for_address
        self.assertEqual(
            [lookup(a) for a in ("192.0.2.1", "192.0.2.2", "192.0.2.100", "198.51.100.1", "2001:db8::7", "::1")],
            [b"exact", b"net28", b"net24", b"any", b"v6", b"any"],
        )
        self.assertIsNone(lookup("192.0.2.9"))
        self.assertIsNone(lookup("not an address"))
        self.assertIsNone(policy_from_config(parse_config({"peers": peers[1:]})).psk_for_address("198.51.100.1"))

    def test_psk_for_identity(self):
        """Aggressive Mode's PSK lookup by the peer's ID payload: type and data, domain names in any case."""
        peers = [
            {"id": "member.example.org", "psk_file": self.secret_file(b"fqdn")},
            {"id": "Alice@Example.org", "psk_file": self.secret_file(b"user")},
            {"id": "192.0.2.1", "psk_file": self.secret_file(b"ip")},
            {"id": "k1", "id_type": "key_id", "psk_file": self.secret_file(b"key")},
        ]
        lookup = policy_from_config(parse_config({"peers": peers})).psk_for_identity
        self.assertEqual(lookup(Identification(IDType.FQDN, 17, 500, b"MEMBER.example.org")), b"fqdn")
        self.assertEqual(lookup(Identification.of("alice@example.org")), b"user")
        self.assertEqual(lookup(Identification.of(ipaddress.ip_address("192.0.2.1"))), b"ip")
        self.assertEqual(lookup(Identification.key_id(b"k1")), b"key")
        self.assertIsNone(lookup(Identification.key_id(b"K1")))
        self.assertIsNone(lookup(Identification.of("member.example.org.evil")))
        self.assertIsNone(lookup(Identification(IDType.USER_FQDN, 0, 0, b"member.example.org")))


def _toml(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)
