"""Run tshark (Wireshark's dissector) on capture files: an independent decoder of what we put on the wire."""

import json
import os
import shutil
import subprocess
import tempfile
from unittest import SkipTest

from gdoiserver.tools.pcap import Datagram, write_pcap

TSHARK = shutil.which("tshark")
#: Ports decoded as ISAKMP in every run: 848 (GDOI) is not in tshark's defaults.
DECODE_AS = ["-d", "udp.port==848,isakmp"]
_PROBLEMS = '_ws.malformed || _ws.expert.severity >= "warning"'


def require_tshark():
    """Skip the calling test where tshark is not installed."""
    if TSHARK is None:
        raise SkipTest("missing tool: tshark (apt-get install tshark)")


def _run(pcap, *args) -> str:
    require_tshark()
    env = dict(os.environ, HOME=tempfile.gettempdir())
    proc = subprocess.run(
        [TSHARK, "-n", "-r", str(pcap), *DECODE_AS, *args], capture_output=True, env=env, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"tshark failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    return proc.stdout.decode(errors="replace")


def packets(pcap, *args) -> list[dict]:
    """Every packet as tshark's JSON dissection tree (``-T json``)."""
    return json.loads(_run(pcap, "-T", "json", "--no-duplicate-keys", *args) or "[]")


def problems(pcap, *args) -> list[str]:
    """One line per packet that tshark finds malformed or flags with an expert item of warning or worse."""
    out = _run(pcap, "-Y", _PROBLEMS, "-T", "fields", "-e", "frame.number", "-e", "_ws.expert.message",
               "-e", "_ws.malformed", *args)
    return [line for line in out.splitlines() if line.strip()]


def write_messages(path, messages, sport=500, dport=500, src="127.0.0.1", dst="127.0.0.2"):
    """Write ISAKMP message bytes as UDP datagrams (one per message) to a pcap."""
    write_pcap(path, [Datagram(src, dst, sport, dport, m, float(i)) for i, m in enumerate(messages)])


def field_values(tree, name) -> list:
    """All values of the field ``name`` anywhere in a ``-T json`` packet tree (lists flattened)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == name:
                    found.extend(v if isinstance(v, list) else [v])
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(tree)
    return found
