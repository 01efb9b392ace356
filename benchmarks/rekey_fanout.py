"""Rekey fan-out: the time from a rekey trigger to the last unicast GROUPKEY-PUSH sent, and the CPU it takes.

Run:  python benchmarks/rekey_fanout.py [--members 1000,10000,100000] [--rekeys 5] [--namespace auto|yes|no]

In this process, on the real reactor: our :class:`~gdoiserver.rekey.service.RekeyService` over a
:class:`~gdoiserver.store.base.MemoryStore` (one that commits in place, see :class:`InPlaceMemoryStore`), for one group as benchmarks/registration.py configures it (one
AES-CBC/HMAC-SHA256 TEK, a KEK signed with ECDSA P-256, LKH; unicast rekeys, 2 retransmissions 5 s apart that
the run never waits for).  Its unicast copies go through an :class:`~gdoiserver.net.protocol.ISAKMPProtocol`
listening on UDP (``send`` as the key server's GDOI listener sends), to a discard receiver in another process
that counts what arrives.

For each ``--members`` count, a fresh service gets that many members through the registration path's hooks
(``leaf_for``, then ``member_registered`` with a :class:`~gdoiserver.doi.gdoi.pull.MemberRegistered` of a
distinct identity and address, as GROUPKEY-PULL message 3 gives them), then ``--rekeys`` TEK rekeys are
triggered one after the other (``RekeyService.rekey``, as ``gdoictl rekey`` does).  For each: the seconds from
the call to the last unicast copy handed to the socket (``fanout_s``), to the last one received, and the
process's CPU time (user + system) meanwhile.  Medians over the rekeys.  Then the same with a multicast-only
group (one copy to 239.192.0.1, TTL 1, over ``lo``).

Members have distinct addresses (127.1.0.0 up, port 8848) only in a private network namespace (as root; the
receiver is bound to every address there); otherwise they share 127.0.0.1:<receiver port> and the multicast
case is skipped (multicast must not leave the host).
"""

import argparse
import json
import multiprocessing
import os
import platform
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import registration  # noqa: E402
from gdoiserver.codec.payloads import Identification  # noqa: E402
from gdoiserver.config import load_config  # noqa: E402
from gdoiserver.doi.gdoi.pull import MemberRegistered  # noqa: E402
from gdoiserver.group.keys import GroupTable  # noqa: E402
from gdoiserver.net.protocol import ISAKMPProtocol  # noqa: E402
from gdoiserver.rekey.service import RekeyService  # noqa: E402
from gdoiserver.store.base import MemoryStore, check_high_water, sort_keks  # noqa: E402
from gdoiserver.store.records import GroupState  # noqa: E402

GROUP = "bench"
MEMBER_PORT = 8848
FIRST_MEMBER = "127.1.0.0"
MULTICAST = "239.192.0.1"
#: The receiver calls a rekey delivered when nothing more arrived for this long (seconds).
QUIET = 0.5


# --- the discard receiver -------------------------------------------------------------------------------------------


def _receiver_main(address: str, control) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, 256 << 20)
            break
        except (OSError, TypeError):
            continue
    sock.bind((address, 0 if address == "127.0.0.1" else MEMBER_PORT))
    sock.setblocking(False)
    control.send(sock.getsockname()[1])
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(control, selectors.EVENT_READ)
    buffer = bytearray(65536)
    count = octets = 0
    last = None
    while True:
        for key, _ in selector.select(1.0):
            if key.fileobj is control:
                command = control.recv()
                if command == "stop":
                    sock.close()
                    return
                control.send((count, octets, last))  # "tally"
                count = octets = 0
                last = None
                continue
            while True:
                try:
                    n = sock.recv_into(buffer)
                except BlockingIOError:
                    break
                count += 1
                octets += n
                last = time.monotonic()


class Receiver:
    """A discard receiver in its own process: :meth:`tally` returns (datagrams, octets, last arrival) since the
    previous tally, once nothing more arrived for ``QUIET`` seconds."""

    def __init__(self, address: str):
        ctx = multiprocessing.get_context("fork")
        self.control, child = ctx.Pipe()
        self.proc = ctx.Process(target=_receiver_main, args=(address, child), daemon=True)
        self.proc.start()
        if not self.control.poll(10):
            self.close()
            raise RuntimeError("the discard receiver did not start")
        self.port = self.control.recv()

    def tally(self, expected: int, cap: float = 30.0) -> tuple:
        total, quiet = [0, 0, None], 0
        deadline = time.monotonic() + cap
        while time.monotonic() < deadline:
            time.sleep(QUIET)
            self.control.send("tally")
            count, octets, last = self.control.recv()
            total[0] += count
            total[1] += octets
            total[2] = last or total[2]
            quiet = 0 if count else quiet + 1
            if quiet and total[0] >= expected or quiet >= 2:  # all arrived, or nothing more is coming
                break
        return tuple(total)

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.control.send("stop")
            except OSError:
                pass
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()


# --- the store -----------------------------------------------------------------------------------------------------


class InPlaceMemoryStore(MemoryStore):
    """A MemoryStore whose commits change its tables in place, in time proportional to the change.

    MemoryStore's commit rebuilds the group's whole state (``apply_changes`` copies every table), so that
    registering N members, one commit each, takes time in N squared: about an hour for 100,000.  Same rules,
    same results (``load`` hands out copies); only the cost of a commit differs.
    """

    def __init__(self):
        super().__init__()
        self._live: dict[str, dict] = {}

    def load(self):
        def states():
            return {name: GroupState(name, t["high"], sorted(t["generations"].values(), key=lambda g: g.number),
                                     sort_keks(t["keks"].values()), dict(t["lkh_nodes"]), dict(t["members"]),
                                     frozenset(t["evicted"]))
                    for name, t in self._live.items()}

        return self._call(states)

    def _apply(self, group: str, changes) -> None:
        if self._failure is not None:
            raise self._failure
        t = self._live.get(group) or {"high": 0, "generations": {}, "keks": {}, "lkh_nodes": {}, "members": {},
                                      "evicted": set()}
        if changes.seq_high_water is not None:
            check_high_water(group, t["high"], changes.seq_high_water)
        self._live[group] = t
        if changes.seq_high_water is not None:
            t["high"] = changes.seq_high_water
        for table, drops, puts in (("generations", changes.drop_generations, ((g.number, g) for g in changes.generations)),
                                   ("keks", changes.drop_keks, ((k.spi, k) for k in changes.keks)),
                                   ("lkh_nodes", changes.drop_lkh_nodes, ((n.node, n) for n in changes.lkh_nodes)),
                                   ("members", changes.drop_members, ((m.identity, m) for m in changes.members))):
            for key in drops:
                t[table].pop(key, None)
            t[table].update(puts)
        t["evicted"].update(changes.evict)
        t["evicted"].difference_update(changes.readmit)
        self.commits += 1


# --- one service ----------------------------------------------------------------------------------------------------


def member_addresses(count: int, distinct: bool, port: int) -> list[tuple[str, int]]:
    if not distinct:
        return [("127.0.0.1", port)] * count
    first = int.from_bytes(socket.inet_aton(FIRST_MEMBER), "big")
    return [(socket.inet_ntoa((first + i).to_bytes(4, "big")), port) for i in range(count)]


class Fanout:
    """One RekeyService for one group configuration, with its members, sending through ``protocol``."""

    def __init__(self, folder: Path, reactor, protocol: ISAKMPProtocol, *, multicast: bool, members: int):
        folder.mkdir()
        config = load_config(str(registration.key_server_config(
            folder, address="127.0.0.1", port=848, nat_t_port=4500, group="ecp256", psk=registration.PSK,
            members=members, unicast=not multicast, multicast=MULTICAST if multicast else None)))
        self.counters = Counter()
        self.sent = 0
        self.last_send = None
        send = protocol.send

        def counting_send(datagram: bytes, peer) -> None:  # the listener's send, and when the last copy left
            send(datagram, peer)
            self.sent += 1
            self.last_send = time.perf_counter()

        self.groups = GroupTable(config.groups, os.urandom)
        self.service = RekeyService(self.groups, InPlaceMemoryStore(), reactor, os.urandom, counting_send, self.counters,
                                    seq_block=config.store.seq_block)

    def register(self, addresses) -> float:
        """Each address a member (identity gm-<n>.bench.example), through leaf_for and member_registered as a
        GROUPKEY-PULL registration calls them; the seconds it took."""
        service = self.service
        group = self.groups.groups[0]
        generation = group.keys.newest.number
        began = time.perf_counter()
        for n, address in enumerate(addresses):
            identity = f"gm-{n}.{registration.DOMAIN}"
            path = service.leaf_for(GROUP, identity)
            service.member_registered(MemberRegistered(
                group=GROUP, group_id=group.policy.ids[0], member=identity, identity=Identification.of(identity),
                address=address, generation=generation, leaf=path[0].node if path else None,
                ack_key=os.urandom(32)))
        return time.perf_counter() - began


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 6) if values else None


class FanoutBench:
    """The runs (see the module notes); ``args.namespace_inside`` tells whether addresses may be distinct."""

    def __init__(self, args, workdir: Path):
        self.args, self.workdir = args, workdir

    def run(self) -> dict:
        from twisted.internet import reactor

        distinct = bool(getattr(self.args, "in_namespace", False))
        if distinct:
            for argv in (["ip", "link", "set", "lo", "multicast", "on"],
                         ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]):
                subprocess.run(argv, check=True, capture_output=True, timeout=10)
        receiver = Receiver("0.0.0.0" if distinct else "127.0.0.1")
        protocol = ISAKMPProtocol(Counter())
        port = reactor.listenUDP(0, protocol, interface="127.0.0.2" if distinct else "127.0.0.1")
        result, failure = {}, []

        async def body():
            try:
                result["unicast"] = [await self.unicast(reactor, protocol, receiver, n, distinct)
                                     for n in self.args.members]
                if distinct:
                    result["multicast"] = await self.multicast(reactor, protocol)
                else:
                    result["multicast"] = {"skipped": "needs a private network namespace (root)"}
            except BaseException as e:  # reported by the caller
                failure.append(e)
            finally:
                reactor.callLater(0, reactor.stop)

        from twisted.internet import defer

        reactor.callWhenRunning(lambda: defer.ensureDeferred(body()))
        try:
            reactor.run(installSignalHandlers=False)
        finally:
            port.stopListening()
            receiver.close()
        if failure:
            raise failure[0]
        result["where"] = ("a private network namespace: members at distinct addresses from " + FIRST_MEMBER
                           if distinct else "this network namespace: every member at 127.0.0.1")
        return result

    async def unicast(self, reactor, protocol, receiver: Receiver, members: int, distinct: bool) -> dict:
        fan = Fanout(self.workdir / f"unicast-{members}", reactor, protocol, multicast=False, members=members)
        await fan.service.start()
        try:
            rss0 = registration.proc_stat(os.getpid())[1]
            registering = fan.register(member_addresses(members, distinct, MEMBER_PORT if distinct else receiver.port))
            rss1 = registration.proc_stat(os.getpid())[1]
            receiver.tally(0, cap=QUIET * 2)  # forget anything before the first rekey
            runs = []
            for _ in range(self.args.rekeys):
                fan.sent, fan.last_send = 0, None
                errors0 = fan.counters["rekey_send_error"]
                cpu0, t0, m0 = time.process_time(), time.perf_counter(), time.monotonic()
                seq = await fan.service.rekey(GROUP)
                cpu, done = time.process_time() - cpu0, time.perf_counter()
                count, octets, last = receiver.tally(fan.sent)
                runs.append({
                    "seq": seq, "sent": fan.sent, "send_errors": fan.counters["rekey_send_error"] - errors0,
                    "fanout_s": round(fan.last_send - t0, 6) if fan.last_send else None,
                    "done_s": round(done - t0, 6), "cpu_s": round(cpu, 6),
                    "received": count, "datagram_octets": octets // count if count else None,
                    "received_by_s": round(last - m0, 6) if last else None,
                })
        finally:
            fan.service.stop()
        return {
            "members": members,
            "registered_through_hooks_s": round(registering, 3),
            "hooks_us_per_member": round(registering * 1e6 / members, 1),
            "rss_per_member_octets_in_service": round((rss1 - rss0) / members),
            "fanout_s": _median(r["fanout_s"] for r in runs),
            "cpu_s_per_rekey": _median(r["cpu_s"] for r in runs),
            "cpu_us_per_member": round(_median(r["cpu_s"] for r in runs) * 1e6 / members, 2),
            "received_by_s": _median(r["received_by_s"] for r in runs),
            "lost": sum(r["sent"] - r["received"] for r in runs),
            "rekeys": runs,
        }

    async def multicast(self, reactor, protocol) -> dict:
        fan = Fanout(self.workdir / "multicast", reactor, protocol, multicast=True, members=1000)
        await fan.service.start()
        try:
            fan.register(member_addresses(1000, True, MEMBER_PORT))
            runs = []
            for _ in range(self.args.rekeys):
                sent0, errors0 = fan.counters["rekey_sent"], fan.counters["rekey_send_error"]
                cpu0, t0 = time.process_time(), time.perf_counter()
                await fan.service.rekey(GROUP)
                runs.append({"done_s": round(time.perf_counter() - t0, 6), "cpu_s": round(time.process_time() - cpu0, 6),
                             "rekeys_sent": fan.counters["rekey_sent"] - sent0, "unicast_copies": fan.sent,
                             "send_errors": fan.counters["rekey_send_error"] - errors0})
        finally:
            fan.service.stop()
        return {"members": 1000, "to": f"{MULTICAST}:848 (TTL 1, lo)", "fanout_s": _median(r["done_s"] for r in runs),
                "cpu_s_per_rekey": _median(r["cpu_s"] for r in runs), "rekeys": runs}


# --- the command ----------------------------------------------------------------------------------------------------


def run(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="gfan-"))
    try:
        if registration.use_namespace(args.namespace):
            args.in_namespace = True
            budget = 120 + 30 * len(args.members) * max(1, args.rekeys) + sum(args.members) / 200
            return registration.in_namespace(Path(__file__).resolve(), args, workdir, budget)["result"]
        args.in_namespace = False
        return FanoutBench(args, workdir).run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                   default=[1000, 10000, 100000], help="member counts, comma-separated")
    p.add_argument("--rekeys", type=int, default=5, help="rekeys per member count (the figures are medians)")
    p.add_argument("--namespace", choices=("auto", "yes", "no"), default="auto",
                   help="run in a private network namespace (needs root; auto: when possible)")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    registration.exit_on_sigterm()
    if argv[:1] == ["--inside"]:
        return registration.inside(argv[1], FanoutBench)
    args = parser().parse_args(argv)
    if not args.members or min(args.members) < 1 or args.rekeys < 1:
        parser().error("--members must name counts of at least 1, and --rekeys be at least 1")
    try:
        result = run(args)
    except RuntimeError as e:
        print(f"rekey_fanout: {e}", file=sys.stderr)
        return 1
    unicast = {str(u["members"]): u["fanout_s"] for u in result["unicast"]}
    out = {
        "benchmark": "rekey-fanout",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["benchmarks/rekey_fanout.py", *sys.argv[1:]]),
        "parameters": {"members": args.members, "rekeys": args.rekeys, "store": "MemoryStore, committing in place (InPlaceMemoryStore)",
                       "signature": "ECDSA P-256 (sha256)", "where": result["where"]},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "fanout_s_by_members": unicast,
    }
    if "10000" in unicast and unicast["10000"] is not None:
        out["goals"] = {"unicast_10000_within_1_s": unicast["10000"] <= 1.0}
    out.update(result)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
