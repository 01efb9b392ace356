"""The TOML configuration: what parses, and how each kind of error names the file, the key and the problem."""

import os

import attrs
from twisted.trial import unittest

from gdoiserver.config import (
    DEFAULT_LISTEN,
    Config,
    ConfigError,
    Invalid,
    Listen,
    integer,
    load_config,
    parse_config,
    setting,
    table,
)

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
        self.assertEqual(e.problem, "unknown key (expected one of: listen, log_format)")

    def test_unknown_section(self):
        """An unknown top-level table is named too."""
        e = self.error("[groups]\nx = 1\n")
        self.assertEqual(e.key, "groups")
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
