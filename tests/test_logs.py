"""gdoiserver.logs: the text and JSON observers, and the redaction that keeps key material out of every log line."""

import io
import json
import os
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.application.service import Application
from twisted.logger import ILogObserver, Logger, eventsFromJSONLogFile
from twisted.python import logfile
from twisted.trial import unittest

from gdoiserver import logs

KEY = bytes(range(0x40, 0x60))  # 32 octets, a stand-in for a TEK or KEK key


def forms(secret: bytes) -> list[str]:
    """Every way ``secret`` could show in a text or JSON line: hex (either case), Python's repr escapes, the
    one-character-per-octet decoding eventAsJSON uses, and its JSON escape."""
    latin = secret.decode("latin-1")
    return [secret.hex(), secret.hex().upper(), repr(secret)[2:-1], latin, json.dumps(latin)[1:-1]]


def emit(observer, format: str = "", **fields) -> None:
    Logger(namespace="tests.logs", observer=observer).info(format, **fields)


class RedactTests(unittest.TestCase):
    def test_long_bytes_redacted(self):
        """A bytes value of more than 8 octets is replaced; 8 octets or fewer (a cookie, an SPI) pass."""
        event = {"log_format": "", "data": KEY, "cookie": b"\x01" * 8, "spi": b"\x02" * 4}
        out = logs.redact(event)
        self.assertEqual(out["data"], logs.REDACTED)
        self.assertEqual((out["cookie"], out["spi"]), (b"\x01" * 8, b"\x02" * 4))

    def test_secret_names_redacted(self):
        """A field named like a secret is replaced whatever it holds: a hex string, an int, bytes."""
        names = ["key", "psk", "PSK", "secret", "ack_key", "encryption_key", "private-key", "skeyid", "skeyid_e",
                 "keymat", "password", "new.keys", "kek_key"]
        event = {name: KEY.hex() for name in names}
        event["key"] = 12345
        out = logs.redact(event)
        self.assertEqual(out, {name: logs.REDACTED for name in names})

    def test_public_names_pass(self):
        """Names that only look like secrets (key_server, key_bits, keylog, kek_spi, monkey) keep their values."""
        event = {"key_server": "192.0.2.1:848", "key_bits": 256, "keylog": "/tmp/k", "kek_spi": "0a1b2c3d",
                 "monkey": "x", "keys_sent": 3}
        self.assertEqual(logs.redact(event), {**event, "keys_sent": logs.REDACTED})

    def test_nested(self):
        """Long bytes and secret names are found inside dicts, lists and tuples; the rest is kept."""
        event = {"sa": {"peer": "192.0.2.1", "skeyid_d": "00ff", "teks": [{"spi": "1234", "data": KEY}]},
                 "pair": ("x", KEY), "many": [[[[KEY]]]]}
        out = logs.redact(event)
        self.assertEqual(out["sa"], {"peer": "192.0.2.1", "skeyid_d": logs.REDACTED,
                                     "teks": [{"spi": "1234", "data": logs.REDACTED}]})
        self.assertEqual(out["pair"], ("x", logs.REDACTED))
        self.assertEqual(out["many"], [[[[logs.REDACTED]]]])

    def test_event_not_changed(self):
        """The event other observers share is left as it was; an unchanged value is the same object."""
        inner = {"peer": "a"}
        event = {"log_format": "{psk}", "psk": KEY, "inner": inner}
        out = logs.redact(event)
        self.assertEqual(event["psk"], KEY)
        self.assertIs(out["inner"], inner)

    def test_too_deep(self):
        """Containers nested deeper than MAX_DEPTH are redacted whole rather than walked."""
        value = "leaf"
        for _ in range(logs.MAX_DEPTH + 2):
            value = [value]
        out = logs.redact({"deep": value})["deep"]
        for _ in range(logs.MAX_DEPTH):
            out = out[0]
        self.assertEqual(out, logs.REDACTED)

    def test_flattened_dropped(self):
        """A log_flattened another observer made from the unredacted fields is dropped, not written."""
        out = logs.redact({"log_format": "{psk}", "psk": KEY, "log_flattened": {"psk!:": KEY.hex()}})
        self.assertNotIn("log_flattened", out)


class ObserverTests(unittest.TestCase):
    def test_text_line(self):
        """The text observer writes twisted.logger's line with the message formatted from redacted fields."""
        stream = io.StringIO()
        emit(logs.text_observer(stream), "member {member} registered, psk {psk}, key {data}", member="gm1",
             psk=KEY, data=KEY)
        line = stream.getvalue()
        self.assertEqual(line.count("\n"), 1)
        self.assertIn("[tests.logs#info] member gm1 registered, psk [redacted], key [redacted]", line)
        for form in forms(KEY):
            self.assertNotIn(form, line)

    def test_json_lines(self):
        """The JSON observer writes one JSON object per line, with the fields, the level and log_text."""
        stream = io.StringIO()
        observer = logs.json_observer(stream)
        emit(observer, "group {group} rekeyed: SEQ {seq}", group="video", seq=7)
        emit(observer, "a refusal: {reason}", reason="evicted", ack_key=KEY)
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = map(json.loads, lines)
        self.assertEqual((first["group"], first["seq"], first["log_text"]), ("video", 7, "group video rekeyed: SEQ 7"))
        self.assertEqual(first["log_level"]["name"], "info")
        self.assertEqual(first["log_namespace"], "tests.logs")
        self.assertEqual(second["ack_key"], logs.REDACTED)
        for form in forms(KEY):
            self.assertNotIn(form, stream.getvalue())

    def test_json_read_back(self):
        """twisted.logger reads the JSON lines back (eventsFromJSONLogFile with no record separator)."""
        stream = io.StringIO()
        emit(logs.json_observer(stream), "hello {who}", who="operator")
        stream.seek(0)
        events = list(eventsFromJSONLogFile(stream, recordSeparator=""))
        self.assertEqual([e["who"] for e in events], ["operator"])

    def test_observer_for(self):
        """server.log_format names the observer; another name is a ValueError naming the choices."""
        stream = io.StringIO()
        emit(logs.observer_for("json", stream), "x")
        self.assertTrue(stream.getvalue().startswith("{"))
        stream = io.StringIO()
        emit(logs.observer_for("text", stream), "x")
        self.assertFalse(stream.getvalue().startswith("{"))
        e = self.assertRaises(ValueError, logs.observer_for, "xml", stream)
        self.assertIn("text, json", str(e))

    def test_failure_keeps_logging(self):
        """An event with a traceback (log.failure) is written in both formats, its fields redacted."""
        for factory in (logs.text_observer, logs.json_observer):
            stream = io.StringIO()
            log = Logger(namespace="tests.logs", observer=factory(stream))
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                log.failure("failed for {psk}", psk=KEY)
            self.assertIn("boom", stream.getvalue())
            self.assertNotIn(KEY.hex(), stream.getvalue())

    @settings(max_examples=200, deadline=None)
    @given(
        secret=st.binary(min_size=9, max_size=48),
        name=st.sampled_from(["data", "payload", "x", "ack_key", "psk", "value"]),
        shape=st.sampled_from(["plain", "list", "dict", "tuple", "named"]),
        json_format=st.booleans(),
    )
    def test_no_secret_written(self, secret, name, shape, json_format):
        """Whatever field, shape or format: more than 8 octets of bytes, or a value under a secret name, never
        reach the output in any encoding."""
        if shape == "plain":
            fields = {name: secret}
        elif shape == "list":
            fields = {name: ["a", secret]}
        elif shape == "dict":
            fields = {name: {"inner": secret}}
        elif shape == "tuple":
            fields = {name: (1, (secret,))}
        else:
            fields = {"psk": secret.hex(), "secret": secret.decode("latin-1")}
        stream = io.StringIO()
        factory = logs.json_observer if json_format else logs.text_observer
        emit(factory(stream), "value " + " ".join("{" + k + "}" for k in fields), **fields)
        output = stream.getvalue()
        self.assertIn("[redacted]", output)
        for form in forms(secret):
            self.assertNotIn(form, output)


class TwistdTests(unittest.TestCase):
    def test_observed_service_sets_component(self):
        """Parented to a twistd Application, ObservedService makes its observer the ILogObserver twistd uses."""
        observer = logs.json_observer(io.StringIO())
        application = Application("gdoi")
        logs.ObservedService(observer).setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)

    def test_observed_service_without_observer(self):
        """Without an observer twistd keeps its own (no component is set)."""
        application = Application("gdoi")
        logs.ObservedService(None).setServiceParent(application)
        self.assertIsNone(application.getComponent(ILogObserver, None))

    def test_twistd_stream(self):
        """As twistd: stdout with -n and no --logfile or with "-", else the named file (default twistd.log)."""
        self.assertIs(logs.twistd_stream(None, True), sys.stdout)
        self.assertIs(logs.twistd_stream("-", True), sys.stdout)
        path = os.path.abspath(self.mktemp())
        stream = logs.twistd_stream(path, False)
        self.addCleanup(stream.close)
        self.assertIsInstance(stream, logfile.LogFile)
        self.assertEqual(stream.path, path)

    def test_twistd_observer(self):
        """twistd_observer follows the twistd options; with --syslog or --logger it leaves the choice to twistd."""
        self.assertIsNone(logs.twistd_observer("json", {"syslog": True, "nodaemon": True}))
        self.assertIsNone(logs.twistd_observer("json", {"logger": "x.y", "nodaemon": True}))
        stream, calls = io.StringIO(), []
        self.patch(logs, "twistd_stream", lambda *args: calls.append(args) or stream)
        emit(logs.twistd_observer("json", {"logfile": "gdoi.log", "nodaemon": False}), "started {psk}", psk=KEY)
        self.assertEqual(calls, [("gdoi.log", False)])
        self.assertEqual(json.loads(stream.getvalue())["psk"], logs.REDACTED)
