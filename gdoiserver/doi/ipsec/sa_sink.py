"""Where established IPsec SAs go: the :class:`SASink` interface and its implementations.

- :class:`JsonLinesSink` writes one JSON object per line and event ("installed", "removed") to a file made with
  mode 0600: SPIs, selectors, algorithms, mode and lifetimes, and the keys only when ``keys`` is set (a debug
  option: with it, the file decrypts the traffic).
- :class:`gdoiserver.doi.ipsec.xfrm.XfrmSink` installs the SAs in the Linux kernel over netlink (XFRM) with
  pyroute2, and removes them again.  It needs pyroute2 and a kernel with the XFRM types of ESP or AH
  (:func:`gdoiserver.doi.ipsec.xfrm.xfrm_unavailable` says what is missing).
- :class:`TeeSink` hands each event to several sinks.

A sink raises :class:`SinkError` when it cannot do its job; the plugin counts it and goes on (an SA that the
kernel refused is still an SA the peer holds).
"""

import json
import os
from collections.abc import Iterable
from typing import Protocol

from gdoiserver.doi.ipsec.sa import IPsecSA


class SinkError(Exception):
    """A sink failed (a file that cannot be written, a kernel that refused the SA)."""


class SASink(Protocol):
    """Receives each IPsec SA when it is established and when it goes."""

    def installed(self, sa: IPsecSA, now: float) -> None: ...

    def removed(self, sa: IPsecSA, reason: str, now: float) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON line per event, appended to ``path`` (created with mode 0600; an existing file must be private
    too, as it may hold keys)."""

    def __init__(self, path: str, *, keys: bool = False):
        self.path = path
        self.keys = keys
        self._file = None

    def _open(self):
        if self._file is None:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise SinkError(f"cannot open {self.path}: {e.strerror or e}") from None
            if os.fstat(fd).st_mode & 0o077:
                os.close(fd)
                raise SinkError(f"{self.path} may be read by others: chmod 600 it (it may hold keys)")
            self._file = os.fdopen(fd, "a", encoding="utf-8")
        return self._file

    def _write(self, record: dict) -> None:
        try:
            f = self._open()
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
        except OSError as e:
            raise SinkError(f"cannot write {self.path}: {e.strerror or e}") from None

    def installed(self, sa: IPsecSA, now: float) -> None:
        self._write({"event": "installed", "time": now, **sa.record(keys=self.keys)})

    def removed(self, sa: IPsecSA, reason: str, now: float) -> None:
        self._write({"event": "removed", "time": now, "reason": reason, "protocol": sa.suite.protocol_name,
                     "spi_in": sa.spi_in.hex(), "spi_out": sa.spi_out.hex(), "isakmp_sa": sa.isakmp_spi.hex()})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TeeSink:
    """Each event to every sink in turn; the first error is raised once all were told."""

    def __init__(self, sinks: Iterable[SASink]):
        self.sinks = tuple(sinks)

    def _each(self, method: str, *args) -> None:
        errors = []
        for sink in self.sinks:
            try:
                getattr(sink, method)(*args)
            except SinkError as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def installed(self, sa: IPsecSA, now: float) -> None:
        self._each("installed", sa, now)

    def removed(self, sa: IPsecSA, reason: str, now: float) -> None:
        self._each("removed", sa, reason, now)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def read_records(path: str) -> list[dict]:
    """The records a :class:`JsonLinesSink` wrote to ``path``, in order (for tools and tests)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sink_for(section) -> SASink | None:
    """The sink an ``[ipsec]`` section asks for: JSON lines at ``sink_path``, the kernel with ``xfrm``, both, or
    none."""
    sinks = []
    if section.sink_path is not None:
        sinks.append(JsonLinesSink(section.sink_path, keys=section.debug_keys))
    if section.xfrm:
        from gdoiserver.doi.ipsec.xfrm import XfrmSink

        sinks.append(XfrmSink())
    if not sinks:
        return None
    return sinks[0] if len(sinks) == 1 else TeeSink(sinks)
