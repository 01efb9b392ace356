"""Where a member's registrations go: the :class:`GroupSink` interface, JSON lines, and several sinks at once.

A registration (:class:`~gdoiserver.doi.gdoi.registration.GroupRegistration`) is the group's policy and keys as
one GROUPKEY-PULL, or one GROUPKEY-PUSH, delivered them.  A sink hears of each one (``installed``, with the SPIs
of the TEKs it did not hold yet: from then on they serve inbound traffic), of the moment TEKs a rekey brought
serve outbound traffic too (``activated``, the GAP's activation delay after the rekey; optional for a sink), and
of each TEK that went (``removed``: its lifetime ended, or the deactivation delay after a rekey retired it).

- :class:`GroupJsonLinesSink` writes one JSON object per line and event to a file made with mode 0600 (the file
  handling of the IPsec DOI's :class:`~gdoiserver.doi.ipsec.sa_sink.JsonLinesSink`); the keys only with ``keys``.
- :class:`gdoiserver.member.xfrm.GroupXfrmSink` installs the TEKs in the Linux kernel.
- :class:`GroupTeeSink` hands each event to several sinks.

:func:`registration_record` is the JSON form, also what ``gdoi_member`` prints.
"""

import hashlib
from collections.abc import Iterable
from typing import Protocol

from gdoiserver.codec.constants import EncapsulationMode
from gdoiserver.codec.gdoi import SigAlgorithm, SigHashAlgorithm
from gdoiserver.doi.gdoi.registration import GroupRegistration, KEKInfo, TEKInfo
from gdoiserver.doi.ipsec.algorithms import CIPHERS, INTEGRITIES
from gdoiserver.doi.ipsec.sa_sink import JsonLinesSink, SinkError, TeeSink
from gdoiserver.group.policy import GroupId

__all__ = ["GroupSink", "GroupJsonLinesSink", "GroupTeeSink", "SinkError", "notify_activated", "registration_record",
           "sink_for"]


class GroupSink(Protocol):
    def installed(self, registration: GroupRegistration, new_spis: frozenset, now: float) -> None:
        """A registration; ``new_spis`` are the SPIs of its TEKs that no earlier registration brought."""

    def removed(self, group: GroupId, tek: TEKInfo, reason: str, now: float) -> None:
        """A TEK of ``group`` is gone."""

    def activated(self, group: GroupId, teks: tuple[TEKInfo, ...], now: float) -> None:
        """The member sends with ``teks`` from now on (RFC 6407 section 5.7; optional)."""

    def close(self) -> None: ...


def _group(group: GroupId) -> dict:
    return {"number": group.number} if group.number is not None else {"oid": group.oid}


def _selector(s) -> dict:
    return {"address": str(s.value()), "port": s.port}


def tek_record(tek: TEKInfo, registered_at: float, *, keys: bool = False) -> dict:
    cipher, integrity = CIPHERS.get(tek.transform_id), INTEGRITIES.get(tek.integrity_algorithm)
    out = {
        "spi": tek.spi.hex(),
        "transform": cipher.rfc_name if cipher else tek.transform_id,
        "key_bits": tek.key_bits,
        "integrity": None if tek.integrity_algorithm is None else (integrity.rfc_name if integrity
                                                                   else tek.integrity_algorithm),
        "ip_protocol": tek.ip_protocol,
        "source": _selector(tek.source),
        "destination": _selector(tek.destination),
        "mode": "tunnel" if tek.mode == EncapsulationMode.TUNNEL else "transport",
        "lifetime": tek.lifetime,
        "expires_at": registered_at + tek.lifetime,
        "sender_ids": list(tek.sender_ids),
    }
    if tek.address_preservation is not None:
        out["address_preservation"] = tek.address_preservation
    if tek.direction is not None:
        out["direction"] = tek.direction
    if keys:
        out["keys"] = {"encryption": tek.encryption_key.hex(), "integrity": tek.integrity_key.hex()}
    return out


def _name(enum, value) -> str | int:
    try:
        return enum(value).name
    except ValueError:
        return value


def kek_record(kek: KEKInfo, *, keys: bool = False) -> dict:
    out = {
        "spi": kek.spi.hex(),
        "key_bits": kek.key_bits,
        "lifetime": kek.lifetime,
        "signature_algorithm": _name(SigAlgorithm, kek.signature_algorithm),
        "signature_hash": _name(SigHashAlgorithm, kek.signature_hash),
        "signature_key_bits": kek.signature_key_bits,
        "signature_key_sha256": hashlib.sha256(kek.signature_public_key).hexdigest(),
        "source": _selector(kek.source),
        "destination": _selector(kek.destination),
    }
    if keys:
        out["key"] = kek.key.hex()
    return out


def registration_record(reg: GroupRegistration, *, keys: bool = False) -> dict:
    """A JSON-ready description of a registration; ``keys`` adds the TEK and KEK keys in hex (debug only)."""
    return {
        "group": _group(reg.group),
        "server": {"address": reg.server[0], "port": reg.server[1]},
        "registered_at": reg.registered_at,
        "pfs": reg.pfs,
        "seq": reg.seq,
        "activation_delay": reg.activation_delay,
        "deactivation_delay": reg.deactivation_delay,
        "sender_id_bits": reg.sender_id_bits,
        "sender_ids": list(reg.sender_ids),
        "teks": [tek_record(t, reg.registered_at, keys=keys) for t in reg.teks],
        "kek": None if reg.kek is None else kek_record(reg.kek, keys=keys),
    }


class GroupJsonLinesSink(JsonLinesSink):
    """One JSON line per event appended to ``path`` (mode 0600); keys only when ``keys`` is set."""

    def installed(self, registration: GroupRegistration, new_spis: frozenset, now: float) -> None:
        record = registration_record(registration, keys=self.keys)
        record["new_spis"] = sorted(spi.hex() for spi in new_spis)
        self._write({"event": "installed", "time": now, **record})

    def removed(self, group: GroupId, tek: TEKInfo, reason: str, now: float) -> None:
        self._write({"event": "removed", "time": now, "group": _group(group), "spi": tek.spi.hex(),
                     "reason": reason})

    def activated(self, group: GroupId, teks: tuple[TEKInfo, ...], now: float) -> None:
        self._write({"event": "activated", "time": now, "group": _group(group),
                     "spis": [t.spi.hex() for t in teks]})


class GroupTeeSink(TeeSink):
    """Each event to every group sink in turn; the first error is raised once all were told (as TeeSink)."""

    def installed(self, registration, new_spis, now) -> None:
        self._each("installed", registration, new_spis, now)

    def removed(self, group, tek, reason, now) -> None:
        self._each("removed", group, tek, reason, now)

    def activated(self, group, teks, now) -> None:
        errors = []
        for sink in self.sinks:
            try:
                notify_activated(sink, group, teks, now)
            except SinkError as e:
                errors.append(e)
        if errors:
            raise errors[0]


def notify_activated(sink, group: GroupId, teks: tuple[TEKInfo, ...], now: float) -> None:
    """Tell ``sink`` that ``teks`` now serve outbound traffic, if it listens for that (``activated`` is optional)."""
    activated = getattr(sink, "activated", None)
    if activated is not None:
        activated(group, teks, now)


def sink_for(section) -> GroupSink:
    """The sink a ``[sink]`` section asks for: JSON lines at ``path``, and the kernel too with ``xfrm``.
    SinkError when the kernel cannot take SAs."""
    sinks = [GroupJsonLinesSink(section.path, keys=section.debug_keys)]
    if section.xfrm:
        from gdoiserver.member.xfrm import GroupXfrmSink

        sinks.append(GroupXfrmSink())
    return sinks[0] if len(sinks) == 1 else GroupTeeSink(sinks)
