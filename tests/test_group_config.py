"""The [[groups]] tables of the configuration (gdoiserver.group.config): what parses into which policy, and how each
error names the file, the key, the value and what was expected."""

import ipaddress
import os

from twisted.trial import unittest

from gdoiserver.codec.constants import AuthAlgorithm, EncapsulationMode, ESPTransformID, IDType
from gdoiserver.codec.gdoi import AddressPreservation, SADirection, SigAlgorithm
from gdoiserver.codec.payloads import Identification
from gdoiserver.config import ConfigError, load_config
from gdoiserver.group.policy import (
    PFS,
    CertificateAttributes,
    ExactIdentity,
    GroupId,
    IdentityPattern,
    TEKTransform,
)
from tests import pki

IP, NET = ipaddress.ip_address, ipaddress.ip_network


def group(signing_key: str) -> str:
    return f"""
[[groups]]
name = "video"
number = 1234
oid = "1.3.6.1.4.1.99999.1"
pfs = "require"
sender_id_bits = 12
max_sender_ids = 4

[[groups.members]]
id = "gm1.example.org"
[[groups.members]]
pattern = "*.site1.example.org"
id_type = "fqdn"
[[groups.members]]
certificate_dns = "*.members.example.org"

[[groups.teks]]
name = "v4"
transform = "aes-cbc"
integrity = "hmac-sha256"
key_bits = 256
destination = "239.1.1.1"
destination_port = 5004
protocol = 17
lifetime = 1200
address_preservation = "both"
direction = "sender"

[[groups.teks]]
name = "v6"
transform = "aes-gcm"
icv_bits = 96
source = "2001:db8::/32"
destination = "ff3e::1234"
mode = "transport"

[[groups.teks]]
name = "sites"
transform = "aes-ctr"
integrity = "hmac-sha512"
destination = "any"

[groups.kek]
signature_key = "{signing_key}"
key_bits = 192
signature_hash = "sha384"
lifetime = 7200

[groups.rekey]
source = "192.0.2.1"
multicast_address = "239.192.0.1"
multicast_port = 1848
ttl = 4
unicast = true

[groups.gap]
activation_delay = 30
deactivation_delay = 60
"""


MINIMAL = """
[[groups]]
name = "{name}"
number = {number}
members = [{{ id = "gm1.example.org" }}]
teks = [{{ name = "t", transform = "aes-gcm", destination = "239.1.1.1" }}]
"""


class GroupConfigTests(unittest.TestCase):
    def setUp(self):
        self.key_path = pki.write_key(self.mktemp(), pki.key("p384"))

    def write(self, text: str) -> str:
        path = self.mktemp() + ".toml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def error(self, text: str, key: str, *words: str) -> ConfigError:
        path = self.write(text)
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual((e.source, e.key), (path, key), str(e))
        for word in words:
            self.assertIn(word, e.problem)
        return e

    def test_full_group(self):
        """Every key of a group reaches its policy: names, member rules, the three TEK transforms and their
        selectors, the KEK and its key file, the rekey transport, GAP, PFS and sender ID settings."""
        (g,) = load_config(self.write(group(self.key_path))).groups
        self.assertEqual((g.name, g.number, g.oid, g.pfs, g.sender_id_bits, g.max_sender_ids),
                         ("video", 1234, "1.3.6.1.4.1.99999.1", PFS.REQUIRE, 12, 4))
        self.assertEqual(g.ids, (GroupId(number=1234), GroupId(oid="1.3.6.1.4.1.99999.1")))
        self.assertEqual(g.members, (ExactIdentity(Identification(IDType.FQDN, 0, 0, b"gm1.example.org")),
                                     IdentityPattern("*.site1.example.org", IDType.FQDN),
                                     CertificateAttributes(dns="*.members.example.org")))
        v4, v6, sites = g.teks
        self.assertEqual((v4.transform, v4.transform_id, v4.auth_algorithm, v4.key_bits, v4.lifetime),
                         (TEKTransform.AES_CBC, ESPTransformID.AES_CBC, AuthAlgorithm.HMAC_SHA2_256, 256, 1200))
        self.assertEqual((v4.selector.source, v4.selector.destination, v4.selector.protocol,
                          v4.selector.destination_port), (NET("0.0.0.0/0"), NET("239.1.1.1/32"), 17, 5004))
        self.assertEqual((v4.address_preservation, v4.direction),
                         (AddressPreservation.SOURCE_AND_DESTINATION, SADirection.SENDER_ONLY))
        self.assertEqual((v6.transform_id, v6.mode, v6.selector.source, v6.selector.destination),
                         (ESPTransformID.AES_GCM_12, EncapsulationMode.TRANSPORT, NET("2001:db8::/32"),
                          NET("ff3e::1234/128")))
        self.assertEqual((sites.transform_id, sites.auth_algorithm, sites.selector.destination, sites.mode),
                         (ESPTransformID.AES_CTR, AuthAlgorithm.HMAC_SHA2_512, NET("0.0.0.0/0"),
                          EncapsulationMode.TUNNEL))
        self.assertEqual((g.kek.key_bits, g.kek.signature_hash, g.kek.lifetime, g.kek.signature_algorithm),
                         (192, "sha384", 7200, SigAlgorithm.SIG_ALG_ECDSA_384))
        self.assertEqual(g.kek.signature_key.private_numbers(), pki.key("p384").private_numbers())
        self.assertEqual((g.rekey.source, g.rekey.multicast_address, g.rekey.multicast_port, g.rekey.ttl,
                          g.rekey.unicast), (IP("192.0.2.1"), IP("239.192.0.1"), 1848, 4, True))
        self.assertEqual((g.gap.activation_delay, g.gap.deactivation_delay), (30, 60))

    def test_defaults(self):
        """A minimal group takes PFS "allow", 16 sender ID bits, no KEK, no GAP; several groups load in order."""
        text = MINIMAL.format(name="a", number=1) + MINIMAL.format(name="b", number=2)
        a, b = load_config(self.write(text)).groups
        self.assertEqual((a.name, b.name, a.pfs, a.sender_id_bits, a.kek, a.gap), ("a", "b", PFS.ALLOW, 16, None, None))

    def test_no_groups(self):
        """A file without [[groups]] has none."""
        self.assertEqual(load_config(self.write("")).groups, ())

    def test_errors(self):
        """Each mistake is reported at its key, with the value and what was expected."""
        key = self.key_path
        good = group(key)
        cases = [
            (good.replace('number = 1234\noid = "1.3.6.1.4.1.99999.1"\n', ""), "groups[0]", "neither number nor oid"),
            (good.replace('oid = "1.3.6.1.4.1.99999.1"', 'oid = "video"'), "groups[0].oid", '"video"', "dotted"),
            (good.replace('integrity = "hmac-sha256"\n', ""), "groups[0].teks[0].integrity", "missing",
             '"hmac-sha256"'),
            (good.replace('icv_bits = 96', 'icv_bits = 96\nintegrity = "hmac-sha256"'),
             "groups[0].teks[1].integrity", '"hmac-sha256"', "RFC 4106"),
            (good.replace('transform = "aes-cbc"', 'transform = "des"'), "groups[0].teks[0].transform", '"des"',
             '"aes-cbc"'),
            (good.replace('destination = "239.1.1.1"', 'destination = "239.1.1.1/8"'),
             "groups[0].teks[0].destination", "239.1.1.1/8", "no host bits"),
            (good.replace('source = "2001:db8::/32"', 'source = "10.0.0.0/8"'), "groups[0].teks[1].destination",
             "IPv4"),
            (good.replace('name = "v6"', 'name = "v4"'), "groups[0].teks[1]", "duplicates groups[0].teks[0]"),
            (good.replace("[groups.rekey]", "[groups.old_rekey]"), "groups[0].old_rekey", "unknown key"),
            (good.replace('source = "192.0.2.1"\n', ""), "groups[0].rekey.source", "missing"),
            (good.replace('multicast_address = "239.192.0.1"', 'multicast_address = "192.0.2.9"'),
             "groups[0].rekey.multicast_address", "192.0.2.9", "multicast"),
            (good.replace('multicast_address = "239.192.0.1"\n', "").replace("unicast = true", "unicast = false"),
             "groups[0].rekey", "nowhere"),
            (good.replace('pfs = "require"', 'pfs = "yes"'), "groups[0].pfs", '"allow"'),
            (good.replace("sender_id_bits = 12", "sender_id_bits = 40"), "groups[0].sender_id_bits", "1 to 32"),
            (good.replace('id = "gm1.example.org"', 'id = "gm1.example.org"\npattern = "*"'), "groups[0].members[0]",
             "exactly one"),
            (good.replace('id_type = "fqdn"', 'id_type = "key_id"'), "groups[0].members[1].id_type", "with a pattern"),
            (good.replace("[[groups.members]]\nid = \"gm1.example.org\"\n[[groups.members]]\npattern = "
                          "\"*.site1.example.org\"\nid_type = \"fqdn\"\n[[groups.members]]\ncertificate_dns = "
                          "\"*.members.example.org\"\n", ""), "groups[0].members", "missing"),
            (MINIMAL.format(name="a", number=1) + MINIMAL.format(name="a", number=2), "groups[1].name",
             "duplicates groups[0].name"),
            (MINIMAL.format(name="a", number=1) + MINIMAL.format(name="b", number=1), "groups[1].number",
             "group 1", "groups[0]"),
        ]
        for text, where, *words in cases:
            self.error(text, where, *words)

    def test_kek_without_rekey(self):
        """A KEK without a rekey table is refused at groups[n].rekey."""
        text = group(self.key_path)
        start = text.index("[groups.rekey]")
        end = text.index("[groups.gap]")
        self.error(text[:start] + text[end:], "groups[0].rekey", "missing")

    def test_signature_key_file(self):
        """The KEK signature key file must be mode 0600 or stricter, readable, unencrypted, RSA or ECDSA."""
        open_key = pki.write_key(self.mktemp(), pki.key("p256"), mode=0o644)
        self.error(group(open_key), "groups[0].kek.signature_key", "0644", "chmod 600")
        self.error(group("/nonexistent/key.pem"), "groups[0].kek.signature_key", "cannot read")
        encrypted = pki.write_key(self.mktemp(), pki.key("p256"), password=b"secret")
        self.error(group(encrypted), "groups[0].kek.signature_key", "encrypted")
        garbage = self.mktemp()
        with open(garbage, "wb") as f:
            f.write(b"not a key")
        os.chmod(garbage, 0o600)
        self.error(group(garbage), "groups[0].kek.signature_key", "not a PEM or DER private key")

    def test_rsa_der_signature_key(self):
        """An RSA key in DER form serves as the KEK signature key."""
        der = pki.write_key(self.mktemp(), pki.key("rsa2048"), der=True)
        (g,) = load_config(self.write(group(der))).groups
        self.assertEqual(g.kek.signature_algorithm, SigAlgorithm.SIG_ALG_RSA)
