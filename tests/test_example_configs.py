"""Every example configuration in etc/ loads, with the key and certificate files it names made in a temporary
directory (the examples keep them under /etc/gdoiserver/, one prefix to substitute), and documents the keys."""

import glob
import os
import re

import attrs
from twisted.trial import unittest

from gdoiserver.config import Config, load_config
from gdoiserver.group.config import KEKEntry, RekeyEntry
from gdoiserver.member import config as member_config
from gdoiserver.tools import gdoictl
from tests import pki

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETC = os.path.join(REPO, "etc")
#: Where the examples keep the files an operator makes.
FILES = "/etc/gdoiserver/"
#: The kinds of deployment the issue asks the examples to show.
EXPECTED = {"gdoiserver.toml", "member.toml", "pki.toml", "wan-any-to-any.toml"}


def examples() -> list[str]:
    return sorted(glob.glob(os.path.join(ETC, "*.toml")))


class ExampleConfigTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)
        # The member's default listen address comes from the route towards its key server: the host's business,
        # not the file's.
        self.patch(member_config, "route_source", lambda address: "192.0.2.10")
        chain = pki.hierarchy("p256", sans=("keyserver.example.org",))
        self.makers = {
            ".psk": lambda path: self.private(path, b"an example pre-shared key\n"),
            "ca.pem": lambda path: pki.write_certificates(path, chain.root.certificate),
            ".pem": lambda path: pki.write_certificates(path, chain.leaf.certificate, chain.intermediate.certificate),
            "keyserver.key": lambda path: pki.write_key(path, chain.leaf.key),
            ".key": lambda path: pki.write_key(path, pki.key("p256", 3)),
        }

    @staticmethod
    def private(path: str, data: bytes) -> str:
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
        return path

    def localized(self, example: str) -> str:
        """A copy of ``example`` whose /etc/gdoiserver/ files exist in the temporary directory."""
        with open(example, encoding="utf-8") as f:
            text = f.read()
        for name in sorted(set(re.findall(re.escape(FILES) + r"([\w.-]+)", text))):
            path = os.path.join(self.dir, name)
            if not os.path.exists(path):
                maker = next(m for suffix, m in self.makers.items() if name.endswith(suffix))
                maker(path)
        copy = os.path.join(self.dir, os.path.basename(example))
        with open(copy, "w", encoding="utf-8") as f:
            f.write(text.replace(FILES, self.dir + "/"))
        return copy

    def test_expected_examples(self):
        """etc/ holds the examples the operator guide names: PSK multicast, PKI, any-to-any WAN, a member."""
        self.assertTrue(EXPECTED <= {os.path.basename(p) for p in examples()})

    def test_every_example_loads(self):
        """Each example passes the start-up checks (gdoictl check-config) once its files exist."""
        for example in examples():
            rc = gdoictl.main(["check-config", self.localized(example)], _Sink(), _Sink())
            self.assertEqual(rc, 0, example)

    def test_pki_example(self):
        """etc/pki.toml authenticates with certificates: the policy carries our credentials and the CA."""
        config = load_config(self.localized(os.path.join(ETC, "pki.toml")))
        self.assertEqual({p.auth for p in config.ike.proposals}, {"ecdsa"})
        self.assertEqual(config.peers[0].auth, "ecdsa")
        self.assertEqual(len(config.peers[0].ca), 1)
        self.assertEqual(config.metrics.endpoint(), ("127.0.0.1", 9848))

    def test_wan_example(self):
        """etc/wan-any-to-any.toml has counter-mode TEKs (AES-GCM, AES-CTR) with sender IDs, and unicast rekeys
        that members acknowledge."""
        config = load_config(self.localized(os.path.join(ETC, "wan-any-to-any.toml")))
        group = config.groups[0]
        self.assertEqual([t.transform.value for t in group.teks], ["aes-gcm", "aes-ctr"])
        self.assertTrue(group.needs_sender_ids)
        self.assertTrue(group.rekey.unicast and group.rekey.ack)
        self.assertIsNone(group.rekey.multicast_address)
        self.assertEqual(config.metrics.endpoint(), ("::1", 9848))

    def test_keys_documented(self):
        """etc/gdoiserver.toml names every table of the schema and every [groups.rekey] and [groups.kek] key."""
        with open(os.path.join(ETC, "gdoiserver.toml"), encoding="utf-8") as f:
            text = f.read()
        for field in attrs.fields(Config):
            self.assertIsNotNone(re.search(rf"\[{field.name}\]|\[\[{field.name}\]\]|\[{field.name}\.", text),
                                 f"[{field.name}] is not in etc/gdoiserver.toml")
        for cls in (RekeyEntry, KEKEntry):
            for field in attrs.fields(cls):
                self.assertIsNotNone(re.search(rf"#.*\b{field.name}\b", text),
                                     f"{cls.__name__}.{field.name} is not explained in etc/gdoiserver.toml")


class _Sink:
    def write(self, text):
        pass

    def flush(self):
        pass
