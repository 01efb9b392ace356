"""The keylog: Wireshark's ikev1_decryption_table lines in a file of mode 0600, and nowhere else."""

import os
import stat

from twisted.logger import Logger, formatEvent
from twisted.trial import unittest

from gdoiserver.codec.message import decode_message
from gdoiserver.config import parse_config
from gdoiserver.keylog import KeyLog, KeyLogError, kek_line, line
from gdoiserver.tools.decrypt import KEKKey, parse_keys
from gdoiserver.service import GDOIService
from tests.fake_machines import ENC_KEY, CountingRandom, FakeFactory, FakeUDPReactor, make_sa, message

ICKY = bytes.fromhex("b31118ffcc7e1d0b")
KEY = bytes.fromhex("97db4d677d8088529e3be73f6908317d")
PEER = ("192.0.2.1", 500)
KEK_SPI = bytes.fromhex("00112233445566778899aabbccddeeff")
KEK_KEY = bytes(range(0x10, 0x30))  # AES-256


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class KeyLogTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.abspath(self.mktemp())

    def test_line_format(self):
        """One line is "<initiator cookie hex>,<encryption key hex>", the form tshark's
        uat:ikev1_decryption_table takes (see tests/data/captures/strongswan-mm-am.keys)."""
        self.assertEqual(line(ICKY, KEY), "b31118ffcc7e1d0b,97db4d677d8088529e3be73f6908317d\n")

    def test_created_0600_whatever_the_umask(self):
        """A new keylog file is created with mode 0600 even under umask 0."""
        old = os.umask(0)
        try:
            KeyLog(self.path).write(ICKY, KEY)
        finally:
            os.umask(old)
        self.assertEqual(mode_of(self.path), 0o600)

    def test_second_sa_appends(self):
        """Each SA adds one line after the ones already there."""
        log = KeyLog(self.path)
        log.write(ICKY, KEY)
        log.write_sa(make_sa(b"\x01" * 8, b"\x02" * 8, ("192.0.2.1", 500), ("127.0.0.1", 500)))
        with open(self.path) as f:
            self.assertEqual(f.read(), line(ICKY, KEY) + "0101010101010101," + ENC_KEY.hex() + "\n")

    def test_existing_private_file_kept(self):
        """An existing file of mode 0600 (or stricter, 0400 is not writable; 0200 is) is appended to."""
        with open(self.path, "w") as f:
            f.write("# earlier\n")
        os.chmod(self.path, 0o200)
        KeyLog(self.path).write(ICKY, KEY)
        os.chmod(self.path, 0o600)
        with open(self.path) as f:
            self.assertEqual(f.read(), "# earlier\n" + line(ICKY, KEY))

    def test_loose_mode_refused(self):
        """An existing file that group or others may read is refused, naming the file and its mode, and left as it
        was; the key is not in the message."""
        with open(self.path, "w") as f:
            f.write("")
        os.chmod(self.path, 0o644)
        e = self.assertRaises(KeyLogError, KeyLog(self.path).write, ICKY, KEY)
        self.assertIn(self.path, str(e))
        self.assertIn("0644", str(e))
        self.assertNotIn(KEY.hex(), str(e))
        self.assertEqual(os.path.getsize(self.path), 0)
        os.chmod(self.path, 0o660)  # group-writable is refused too
        self.assertRaises(KeyLogError, KeyLog(self.path).check)

    def test_not_a_regular_file(self):
        """A directory or a FIFO (opened without blocking) is refused, naming it."""
        os.mkdir(self.path, 0o700)
        e = self.assertRaises(KeyLogError, KeyLog(self.path).check)
        self.assertIn(self.path, str(e))
        fifo = os.path.abspath(self.mktemp())
        os.mkfifo(fifo, 0o600)
        e = self.assertRaises(KeyLogError, KeyLog(fifo).write, ICKY, KEY)
        self.assertIn(fifo, str(e))

    def test_missing_directory(self):
        """A path in a directory that does not exist is refused with the reason."""
        e = self.assertRaises(KeyLogError, KeyLog(os.path.join(self.path, "sub", "keys")).check)
        self.assertIn("No such file or directory", str(e))

    def test_check_creates(self):
        """check() creates a missing file with mode 0600 and writes nothing."""
        KeyLog(self.path).check()
        self.assertEqual((mode_of(self.path), os.path.getsize(self.path)), (0o600, 0))


class KEKLineTests(unittest.TestCase):
    """The KEK lines: "KEK <KEK SPI hex> <key hex> <key bits>", beside the SA lines, read by pcapdump --keylog."""

    def setUp(self):
        self.path = os.path.abspath(self.mktemp())

    def test_kek_line_format(self):
        """A KEK line is the word KEK, the 16-octet SPI, the key and its size in bits, separated by one space."""
        self.assertEqual(kek_line(KEK_SPI, KEK_KEY, 256),
                         "KEK 00112233445566778899aabbccddeeff "
                         "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f 256\n")

    def test_write_kek_after_sa_lines(self):
        """write_kek appends to the same file of mode 0600 as the SA lines; the file reads back through pcapdump's
        keylog reader: the SA line as before, the KEK line as a KEK."""
        log = KeyLog(self.path)
        log.write(ICKY, KEY)
        log.write_kek(KEK_SPI, KEK_KEY, 256)
        log.write_kek(b"\x01" * 16, KEY, 128)
        self.assertEqual(mode_of(self.path), 0o600)
        with open(self.path) as f:
            text = f.read()
        self.assertEqual(text, line(ICKY, KEY) + kek_line(KEK_SPI, KEK_KEY, 256) + kek_line(b"\x01" * 16, KEY, 128))
        keys = parse_keys(text.splitlines(), self.path)
        self.assertEqual(keys.phase1, {ICKY: KEY})
        self.assertEqual(keys.keks, {KEK_SPI: KEKKey(KEK_SPI, KEK_KEY, 256),
                                     b"\x01" * 16: KEKKey(b"\x01" * 16, KEY, 128)})

    def test_sa_lines_unchanged(self):
        """The SA line keeps tshark's ikev1_decryption_table form, and a KEK line cannot be read as one (it has no
        comma)."""
        self.assertEqual(line(ICKY, KEY), f"{ICKY.hex()},{KEY.hex()}\n")
        self.assertNotIn(",", kek_line(KEK_SPI, KEK_KEY, 256))

    def test_kek_line_refused(self):
        """An SPI of other than 16 octets, or a key that is not key_bits long, is refused with no key in the
        message, and nothing is written."""
        log = KeyLog(self.path)
        for args in ((KEK_SPI[:8], KEK_KEY, 256), (KEK_SPI, KEK_KEY, 128), (KEK_SPI, b"", 0)):
            e = self.assertRaises(ValueError, log.write_kek, *args)
            self.assertNotIn(KEK_KEY.hex(), str(e))
        self.assertFalse(os.path.exists(self.path))

    def test_write_kek_loose_mode_refused(self):
        """write_kek refuses a file that others may read, as write does."""
        with open(self.path, "w"):
            pass
        os.chmod(self.path, 0o640)
        e = self.assertRaises(KeyLogError, KeyLog(self.path).write_kek, KEK_SPI, KEK_KEY, 256)
        self.assertNotIn(KEK_KEY.hex(), str(e))
        self.assertEqual(os.path.getsize(self.path), 0)


class ServiceKeylogTests(unittest.TestCase):
    """GDOIService writes the keylog when keylog.path is set, from the engine's Established."""

    def start(self, path: str) -> GDOIService:
        config = parse_config({"server": {"listen": [{"address": "127.0.0.1", "port": 500}]},
                               "keylog": {"path": path}})
        service = GDOIService(config, FakeUDPReactor(), factory=FakeFactory(), rng=CountingRandom())
        self.events = []
        service.log = Logger(observer=self.events.append)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def main_mode(self, service: GDOIService, icookie: bytes):
        listener = service.protocols[0]
        listener.datagramReceived(message(icookie, tag=b"MM1"), PEER)
        rcookie = decode_message(listener.transport.written[-1][0]).responder_cookie
        for t in (b"MM3", b"MM5"):
            listener.datagramReceived(message(icookie, rcookie, tag=t), PEER)

    def test_each_sa_logged(self):
        """Each established SA appends its line to the file, which is created with mode 0600."""
        path = os.path.abspath(self.mktemp())
        service = self.start(path)
        self.assertEqual((mode_of(path), os.path.getsize(path)), (0o600, 0))  # made at start
        self.main_mode(service, ICKY)
        self.main_mode(service, b"\x02" * 8)
        self.assertEqual(len(service.engine.sas), 2)
        with open(path) as f:
            self.assertEqual(f.read(), line(ICKY, ENC_KEY) + line(b"\x02" * 8, ENC_KEY))

    def test_loose_file_refused(self):
        """A keylog file of mode 0644 gets no keys: an error at start and for each SA names the file and its mode,
        and carries no key."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w"):
            pass
        os.chmod(path, 0o644)
        service = self.start(path)
        self.main_mode(service, ICKY)
        self.assertEqual(len(service.engine.sas), 1)
        self.assertEqual(os.path.getsize(path), 0)
        self.assertEqual(service.counters["keylog_error"], 1)
        errors = [formatEvent(e) for e in self.events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 2)
        for text in errors:
            self.assertIn(f"{path}: mode 0644", text)
            self.assertNotIn(ENC_KEY.hex(), text)
