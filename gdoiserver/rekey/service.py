"""The key server's rekey service: it keeps each group's keys changing on schedule, pushes them to the members
(RFC 6407 section 4) and evicts members through the group's LKH tree (RFC 6407 section 5.6.3), writing every key
and SEQ to the store before anything carrying it leaves.

Per group, one timer (on the injected clock) wakes the service when :func:`~gdoiserver.rekey.schedule.plan` says
something falls due; every change of a group's keys runs under the group's lock, one after the other:

1. make the new keys (a TEK generation, a KEK, LKH node keys) without handing them out yet;
2. take the next SEQ; when it passes the stored high-water mark, reserve a block of ``seq_block`` more;
3. commit keys and high-water mark in one transaction, and wait for it (write before send);
4. build and sign the PUSH once, start handing the new keys out (registrations get them from now on), and send;
5. commit that the PUSH went out (``pushed_at``; the replaced KEK and an evicted member's record are dropped).

After a crash anywhere in between, :meth:`RekeyService.start` finds what step 3 wrote: a generation never pushed,
a KEK whose predecessor is still stored, or an evicted member whose record is still stored gets its PUSH again
(an eviction always as an LKH update, never as a plain KEK rekey the evicted member could read), with a fresh SEQ
above the high-water mark, so no SEQ is ever used twice and no key is lost.

Counters: ``rekey_sent``, ``rekey_retransmitted``, ``rekey_send_error`` (delivery), ``rekey_acked``,
``rekey_ack_bad``, ``rekey_ack_duplicate``, ``members_stale``, ``eviction``, ``evicted_registered``,
``seq_reserved`` (SEQ blocks), ``rekey_failed``, ``keylog_error``.  Log lines name groups, SEQs, generations, KEK
SPI prefixes and member counts, never keys.
"""

import attrs
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from twisted.internet import defer
from twisted.logger import Logger

from gdoiserver.codec.errors import DecodeError
from gdoiserver.doi.gdoi.ack import ack_holds, read_ack
from gdoiserver.group.keys import Generation, GroupKeys, GroupTable, KEKKeys
from gdoiserver.group.lkh import ROOT, LKHError, LKHTree, LKHUpdate, ancestors
from gdoiserver.group.policy import GroupId
from gdoiserver.rekey import messages
from gdoiserver.rekey.delivery import Delivery, MulticastSender
from gdoiserver.rekey.members import MemberTable, RegisteredMember
from gdoiserver.rekey.schedule import Action, plan
from gdoiserver.store.base import Changes, KeyStore
from gdoiserver.store.records import GenerationRecord, KEKRecord, LKHNodeRecord, TEKRecord

MAX_SEQ = 0xFFFFFFFF
#: Seconds before a rekey that failed (the store refused a commit) is tried again.
RETRY_DELAY = 30.0
#: Actions one wake may take before it yields (each one changes the keys, so the plan empties quickly).
_MAX_STEPS = 8


class RekeyError(Exception):
    """A rekey request that cannot be carried out (unknown group, a group without rekeys, SEQ exhausted)."""


# --- records <-> keys -----------------------------------------------------------------------------------------------


def generation_record(generation: Generation) -> GenerationRecord:
    teks = tuple(TEKRecord(t.policy.name, t.spi, t.encryption_key, t.integrity_key, float(generation.created_at),
                           float(t.expires_at)) for t in generation.teks)
    return GenerationRecord(generation.number, float(generation.created_at), teks, generation.pushed_at)


def kek_record(kek: KEKKeys, retired: bool = False) -> KEKRecord:
    return KEKRecord(kek.spi, kek.key, float(kek.created_at), float(kek.expires_at), retired)


def kek_from_record(keys: GroupKeys, record: KEKRecord, seq: int) -> KEKKeys:
    """A stored KEK under the group's KEK policy (its key size as stored, should the policy have changed)."""
    policy = keys.policy.kek
    if len(record.key) * 8 != policy.key_bits:
        policy = attrs.evolve(policy, key_bits=len(record.key) * 8)
    return KEKKeys(policy, record.spi, record.key, record.created_at, record.expires_at, seq)


def generation_from_record(keys: GroupKeys, record: GenerationRecord) -> Generation:
    """A stored generation; KeyError if one of its TEKs names no TEK of the group's policy any more."""
    teks = tuple(keys.tek_from_record(t.name, t.spi, t.encryption_key, t.integrity_key, t.expires_at)
                 for t in record.teks)
    return Generation(record.number, record.created_at, teks, keys.sender_ids, record.pushed_at)


# --- one group ------------------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class GroupRun:
    """The rekey state of one group: its keys (``group.keys``), members, SEQ counter and high-water mark, the KEK
    a stored-but-unpushed KEK replaces (``previous_kek``), its timer, lock and delivery."""

    group: object
    members: MemberTable
    lock: defer.DeferredLock = attrs.field(factory=defer.DeferredLock)
    seq: int = 0
    high_water: int = 0
    previous_kek: KEKKeys | None = None
    #: Stored KEKs to forget (retired ones a restart found besides ``previous_kek``).
    drop_keks: list = attrs.field(factory=list)
    #: Stored members to forget (evicted ones whose eviction went out before a restart).
    drop_members: list = attrs.field(factory=list)
    #: The LKH tree that lets the key server evict members (RFC 6407 section 5.6.3); its root key is the KEK's.
    lkh: LKHTree | None = None
    #: (identity, leaf) of an eviction whose PUSH a restart cut short.
    unfinished_eviction: tuple | None = None
    delivery: Delivery | None = None
    timer: object = None
    next_wake: float | None = None
    last_rekey_at: float | None = None
    #: identity -> leaf given by :meth:`RekeyService.leaf_for` to a registration not yet finished.
    reserved_leaves: dict = attrs.field(factory=dict)
    #: node -> version of the LKH node keys written to the store.
    lkh_stored: dict = attrs.field(factory=dict)

    @property
    def name(self) -> str:
        return self.group.policy.name

    @property
    def keys(self) -> GroupKeys:
        return self.group.keys

    @property
    def rekeyed(self) -> bool:
        return self.group.policy.kek is not None


class RekeyService:
    """Rekeys every group of ``groups`` (a GroupTable) on ``clock`` (IReactorTime), keeping state in ``store``.

    ``send(datagram, (host, port))`` sends a unicast PUSH (the key server's GDOI listener); ``rng(n)`` gives
    random octets; ``counters`` is a ``collections.Counter``; ``keylog`` (optional) gets each KEK
    (``write_kek``).  ``seq_block`` SEQs are reserved at a time; ``multicast(rekey_transport)`` makes a group's
    multicast sender (default :class:`MulticastSender`).
    """

    log = Logger()

    def __init__(self, groups: GroupTable, store: KeyStore, clock, rng, send, counters, keylog=None, *,
                 seq_block: int = 64, multicast=None):
        if seq_block < 1:
            raise ValueError("seq_block must be at least 1")
        self.groups = groups
        self.store = store
        self.clock = clock
        self.rng = rng
        self.send = send
        self.counters = counters
        self.keylog = keylog
        self.seq_block = seq_block
        self.multicast = multicast if multicast is not None else _multicast_sender
        self.running = False
        self.runs: dict[str, GroupRun] = {}
        for group in groups.groups:
            rekey = group.policy.rekey
            self.runs[group.policy.name] = GroupRun(group, MemberTable(rekey.stale_after if rekey else 3))

    # --- life cycle ---------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self):
        """Load the store, restore every group's keys, SEQ and members, make (and commit) the first keys of a
        group that has none, push what a crash left unpushed, and start the timers.  Fires when all is done."""
        states = yield self.store.load()
        self.running = True
        try:
            for run in self.runs.values():
                self._restore(run, states.get(run.name))
                run.keys.on_made = lambda key, replaced, run=run: self._made_on_demand(run, key, replaced)
                if run.rekeyed:
                    run.delivery = self._delivery(run)
                yield run.lock.run(self._first_keys, run)
            for run in self.runs.values():
                self._wake(run)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel every timer and retransmission and close the multicast sockets; nothing is sent after this.
        The store is left open (its owner closes it)."""
        self.running = False
        for run in self.runs.values():
            if run.timer is not None and run.timer.active():
                run.timer.cancel()
            run.timer = None
            run.keys.on_made = None
            if run.delivery is not None:
                run.delivery.stop()
                run.delivery = None

    def idle(self) -> defer.Deferred:
        """Fires once no group has a change in progress (e.g. after :meth:`stop`, before closing the store)."""
        return defer.gatherResults([run.lock.run(lambda: None) for run in self.runs.values()]).addCallback(
            lambda _: None)

    def reconfigure(self, group_name: str) -> defer.Deferred:
        """The group's rekey transport changed (a reload): later rekeys go out by a delivery built from it, and
        staleness counts with its ``stale_after``.  Copies of a rekey still being retransmitted stop here."""
        run = self._run(group_name)

        def swap():
            rekey = run.group.policy.rekey
            run.members.stale_after = rekey.stale_after if rekey else 3
            if run.delivery is not None:
                run.delivery.stop()
                run.delivery = self._delivery(run)

        return run.lock.run(swap)

    def _delivery(self, run: GroupRun) -> Delivery:
        rekey = run.group.policy.rekey
        sender = self.multicast(rekey) if rekey.multicast_address is not None else None
        return Delivery(self.clock, self.send, self.counters, retransmits=rekey.retransmits,
                        interval=rekey.retransmit_interval, multicast=sender, unicast=rekey.unicast, ack=rekey.ack,
                        on_closed=lambda pending, run=run: self._closed(run, pending))

    def _restore(self, run: GroupRun, state) -> None:
        if state is None:
            return
        keys = run.keys
        run.seq = run.high_water = state.seq_high_water
        generations = []
        for record in state.generations:
            try:
                generations.append(generation_from_record(keys, record))
            except KeyError as e:
                self.log.warn("group {group}: stored generation {number} names TEK {tek}, which the group no "
                              "longer has: dropped", group=run.name, number=record.number, tek=str(e))
        current = previous = None
        if run.rekeyed:
            live = [k for k in state.keks if not k.retired]
            retired = [k for k in state.keks if k.retired]
            if live:
                current = kek_from_record(keys, live[-1], run.high_water)
            if retired and current is not None:
                previous = kek_from_record(keys, retired[-1], run.high_water)
                retired = retired[:-1]
            run.drop_keks = [k.spi for k in retired] + [k.spi for k in live[:-1]]
        keys.restore(generations, current)
        run.previous_kek = previous
        for record in state.members.values():
            run.members.restore(RegisteredMember.from_record(record))
        run.members.evicted = set(state.evicted)
        self._restore_sender_ids(run)
        if run.rekeyed:
            self._restore_lkh(run, state.lkh_nodes)
        self.log.info("group {group}: restored from {store}: SEQ high-water {seq}, {generations} generations, "
                      "KEK {kek}, {members} members", group=run.name, store=self.store.location,
                      seq=run.high_water, generations=len(generations), kek=_spi(current),
                      members=len(run.members))

    def _restore_sender_ids(self, run: GroupRun) -> None:
        """Sender IDs are never handed out twice (RFC 6054): the allocator goes on above every stored one."""
        allocator = run.keys.sender_ids
        if allocator is None:
            return
        highest = max((s for m in run.members.members.values() for s in m.sender_ids), default=0)
        if highest:
            allocator.allocate("before the restart", min(highest, allocator.remaining))

    def _restore_lkh(self, run: GroupRun, stored) -> None:
        """The group's LKH tree from its stored node keys and its members' leaves.  A member still in the table
        but evicted is an eviction a restart cut short: its leaf stays free, and its PUSH goes out again."""
        kek_policy = run.group.policy.kek
        nodes = {r.node: (r.key, r.version) for r in stored.values() if r.node != ROOT}
        try:
            run.lkh = LKHTree(kek_policy.lkh_depth, kek_policy.key_bits // 8, self.rng, nodes)
        except ValueError as e:
            self.log.error("group {group}: the stored LKH tree does not fit the policy ({error}): members must "
                           "register again before they can be evicted", group=run.name, error=str(e))
            run.lkh = LKHTree(kek_policy.lkh_depth, kek_policy.key_bits // 8, self.rng)
            nodes = {}
        for member in list(run.members.members.values()):
            if member.leaf is None:
                continue
            if member.identity in run.members.evicted:
                if run.previous_kek is not None:
                    run.unfinished_eviction = (member.identity, member.leaf)
                else:  # the eviction went out; only the final commit was lost
                    run.members.remove(member.identity)
                    run.drop_members.append(member.identity)
                continue
            try:
                missing = [n for n in (member.leaf, *ancestors(member.leaf)[:-1]) if n not in nodes]
                if missing:  # keys the member holds and the store lost: an eviction could not reach it
                    raise LKHError(f"nodes {missing} have no stored key")
                run.lkh.join(leaf=member.leaf)
            except LKHError as e:
                self.log.warn("group {group}: member {member} loses its LKH leaf {leaf} ({error})", group=run.name,
                              member=member.identity, leaf=member.leaf, error=str(e))
                member.leaf = None
        run.lkh_stored = {n: v for n, (_, v) in nodes.items()}
        kek = run.keys.current_kek
        if kek is not None and len(kek.key) == run.lkh.key_bytes:
            run.lkh.set_root(kek.key)

    def _install_kek(self, run: GroupRun, kek: KEKKeys) -> None:
        """Use ``kek`` from now on; the LKH root key is the KEK key (RFC 6407 section 5.6.3)."""
        run.keys.install_kek(kek)
        if run.lkh is not None and len(kek.key) == run.lkh.key_bytes:
            run.lkh.set_root(kek.key)

    @defer.inlineCallbacks
    def _first_keys(self, run: GroupRun):
        """A group with no keys gets its first KEK and generation: nothing to push, nobody holds keys yet (but
        members restored with a KEK and no live generation get the new one pushed)."""
        keys, now = run.keys, self.clock.seconds()
        if run.rekeyed and run.lkh is None:
            policy = run.group.policy.kek
            run.lkh = LKHTree(policy.lkh_depth, policy.key_bits // 8, self.rng)
        changes = {"drop_keks": run.drop_keks} if run.drop_keks else {}
        if run.drop_members:
            changes["drop_members"] = run.drop_members
        run.drop_keks, run.drop_members = [], []
        kek = None
        if run.rekeyed and keys.current_kek is None:
            kek = keys.make_kek(now)
            changes["keks"] = [kek_record(kek)]
        generation = None
        if not keys.generations:
            generation = keys.make_generation(now)
            # Members restored from the store (every generation expired while we were down) get it pushed.
            pushed = not (len(run.members) and (kek is None) and run.rekeyed)
            generation.pushed_at = now if pushed else None
            changes["generations"] = [generation_record(generation)]
        if not changes:
            return
        yield self.store.commit(run.name, Changes(**changes))
        if kek is None and generation is None:
            return
        if kek is not None:
            self._install_kek(run, kek)
            self._write_keylog(kek)
        if generation is not None:
            keys.install(generation)
        self.log.info("group {group}: first keys made: generation {generation}, KEK {kek}", group=run.name,
                      generation=generation.number if generation else "-", kek=_spi(kek))

    # --- the schedule -------------------------------------------------------------------------------------------

    def _wake(self, run: GroupRun) -> None:
        """Do what is due for ``run`` (under its lock), then set its timer for the next time."""
        run.timer = None
        if not self.running:
            return
        d = run.lock.run(self._due, run)
        d.addCallbacks(lambda _: self._arm(run), lambda f: self._failed(run, f))

    @defer.inlineCallbacks
    def _due(self, run: GroupRun):
        for _ in range(_MAX_STEPS):
            if not self.running:
                return
            p = plan(run.keys, self.clock.seconds(), kek_pushed=run.previous_kek is None)
            if p.idle:
                return
            yield self._act(run, p)

    def _act(self, run: GroupRun, p) -> defer.Deferred:
        """The first thing ``p`` says is due (the rest comes on the next turn of :meth:`_due`)."""
        actions = p.actions
        if Action.RETIRE in actions:
            return self._retire(run, p.retire)
        if Action.PUSH_KEK in actions:
            return self._push_kek(run)
        if Action.TEK_REKEY in actions:
            return self._tek_rekey(run, new_kek=Action.KEK_REKEY in actions)
        if Action.KEK_REKEY in actions:
            return self._kek_rekey(run)
        return self._push_generation(run)

    def _arm(self, run: GroupRun, delay: float | None = None) -> None:
        if not self.running:
            return
        if run.timer is not None and run.timer.active():
            run.timer.cancel()
        now = self.clock.seconds()
        if delay is None:
            p = plan(run.keys, now, kek_pushed=run.previous_kek is None)
            if p.next_wake is None and p.idle:
                run.timer, run.next_wake = None, None
                return
            delay = 0.0 if not p.idle else max(0.0, p.next_wake - now)
        run.next_wake = now + delay
        run.timer = self.clock.callLater(delay, self._wake, run)

    def _failed(self, run: GroupRun, failure) -> None:
        if not self.running:  # stopping: the store may be closing under the last commits
            return
        self.counters["rekey_failed"] += 1
        self.log.failure("group {group}: rekey failed; trying again in {delay} s", failure, group=run.name,
                         delay=RETRY_DELAY)
        self._arm(run, RETRY_DELAY)

    # --- SEQ ------------------------------------------------------------------------------------------------------

    def _next_seq(self, run: GroupRun) -> tuple[int, int | None]:
        """The next SEQ and, when it passes the reserved block, the new high-water mark to commit with it."""
        seq = run.seq + 1
        if seq > MAX_SEQ:
            raise RekeyError(f"group {run.name}: SEQ exhausted (RFC 6407 section 5.8: 32 bits)")
        if seq <= run.high_water:
            return seq, None
        return seq, min(MAX_SEQ, seq + self.seq_block - 1)

    def _used_seq(self, run: GroupRun, seq: int, high_water: int | None) -> None:
        run.seq = seq
        if high_water is not None:
            run.high_water = high_water
            self.counters["seq_reserved"] += 1

    # --- the rekeys -----------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _tek_rekey(self, run: GroupRun, new_kek: bool = False):
        """A new generation (and, with ``new_kek``, a new KEK) pushed under the KEK the members hold."""
        keys, now = run.keys, self.clock.seconds()
        under = keys.current_kek
        generation = keys.make_generation(now)
        kek = keys.make_kek(now) if new_kek or under is None else None
        if under is None:  # nothing to push under yet: the first KEK goes out by registration
            under, kek_changes = None, [kek_record(kek)]
        else:
            kek_changes = [kek_record(kek), kek_record(under, retired=True)] if kek is not None else []
        seq, high_water = self._next_seq(run)
        try:
            yield self.store.commit(run.name, Changes(generations=[generation_record(generation)], keks=kek_changes,
                                                      seq_high_water=high_water))
        except BaseException:
            self._abandon(keys, generation, kek)
            raise
        self._used_seq(run, seq, high_water)
        if kek is not None:
            self._write_keylog(kek)
        if under is None:
            self._install_kek(run, kek)
            keys.install(generation)
            return
        yield self._push_generation(run, generation, under, seq, new_kek=kek)

    @defer.inlineCallbacks
    def _push_generation(self, run: GroupRun, generation: Generation | None = None, under: KEKKeys | None = None,
                         seq: int | None = None, new_kek: KEKKeys | None = None):
        """Push ``generation`` (default: the newest, made but never pushed) under ``under`` (default: the current
        KEK), retiring the older live generations, then record that it went out."""
        keys = run.keys
        if generation is None:
            generation = keys.newest
        under = under or keys.current_kek
        if seq is None:
            seq, high_water = self._next_seq(run)
            if high_water is not None:
                yield self.store.commit(run.name, Changes(seq_high_water=high_water))
            self._used_seq(run, seq, high_water)
        if not self.running:  # stopped while committing: the stored, unpushed generation goes out on restart
            return
        now = self.clock.seconds()
        retired = [g for g in keys.generations if g is not generation and g.live(now)]
        datagram = messages.tek_rekey(run.group, generation, under, seq, now, new_kek=new_kek, retired=retired,
                                      rng=self.rng)
        under.seq = max(under.seq, seq)
        if generation not in keys.generations:
            keys.install(generation)
        if new_kek is not None:
            self._install_kek(run, new_kek)
        generation.pushed_at = now
        targets = self._deliver(run, seq, datagram)
        run.last_rekey_at = now
        self.log.info("group {group}: TEK rekey SEQ {seq}: generation {generation}{kek} under KEK {under}, to "
                      "{members} members", group=run.name, seq=seq, generation=generation.number,
                      kek=f" and KEK {_spi(new_kek)}" if new_kek is not None else "", under=_spi(under),
                      members=len(targets))
        changes = Changes(generations=[generation_record(generation)],
                          drop_keks=[under.spi] if new_kek is not None else [])
        yield self.store.commit(run.name, changes)

    @defer.inlineCallbacks
    def _kek_rekey(self, run: GroupRun):
        """A new KEK, pushed under the old one (RFC 6407 section 4)."""
        keys, now = run.keys, self.clock.seconds()
        under = keys.current_kek
        kek = keys.make_kek(now)
        seq, high_water = self._next_seq(run)
        kek_changes = [kek_record(kek)] + ([kek_record(under, retired=True)] if under is not None else [])
        try:
            yield self.store.commit(run.name, Changes(keks=kek_changes, seq_high_water=high_water))
        except BaseException:
            self._abandon(keys, None, kek)
            raise
        self._used_seq(run, seq, high_water)
        self._write_keylog(kek)
        if under is None:
            self._install_kek(run, kek)
            return
        run.previous_kek = under
        self._install_kek(run, kek)
        yield self._push_kek(run, seq)

    @defer.inlineCallbacks
    def _push_kek(self, run: GroupRun, seq: int | None = None):
        """Push the current KEK under ``run.previous_kek``, then forget the previous one."""
        under, kek = run.previous_kek, run.keys.current_kek
        if seq is None:
            seq, high_water = self._next_seq(run)
            if high_water is not None:
                yield self.store.commit(run.name, Changes(seq_high_water=high_water))
            self._used_seq(run, seq, high_water)
        if not self.running:
            return
        now = self.clock.seconds()
        if run.unfinished_eviction is not None:  # never a plain KEK rekey: the evicted member holds ``under``
            yield self._push_eviction(run, under, kek, seq, *run.unfinished_eviction, reissue_updates(run.lkh,
                                      run.unfinished_eviction[1]))
            return
        datagram = messages.kek_rekey(run.group, under, kek, seq, now, rng=self.rng)
        under.seq = max(under.seq, seq)
        kek.seq = max(kek.seq, seq)
        run.previous_kek = None
        targets = self._deliver(run, seq, datagram)
        run.last_rekey_at = now
        self.log.info("group {group}: KEK rekey SEQ {seq}: KEK {kek} under KEK {under}, to {members} members",
                      group=run.name, seq=seq, kek=_spi(kek), under=_spi(under), members=len(targets))
        yield self.store.commit(run.name, Changes(drop_keks=[under.spi]))

    @defer.inlineCallbacks
    def _retire(self, run: GroupRun, numbers):
        for number in numbers:
            run.keys.drop(number)
        yield self.store.commit(run.name, Changes(drop_generations=list(numbers)))

    def _abandon(self, keys: GroupKeys, generation: Generation | None, kek: KEKKeys | None) -> None:
        """Keys whose commit failed are never used: free their SPIs."""
        if generation is not None:
            for t in generation.teks:
                keys.spis.release(t.spi)
        if kek is not None:
            keys.spis.release(kek.spi)

    def _deliver(self, run: GroupRun, seq: int, datagram: bytes) -> dict:
        targets = run.members.targets()
        run.members.sent(seq, targets)
        if run.delivery is not None and self.running:
            run.delivery.push(seq, datagram, targets)
        return targets

    # --- keys made by registrations -----------------------------------------------------------------------------

    def _made_on_demand(self, run: GroupRun, key, replaced: KEKKeys | None) -> None:
        """A registration found no live generation or KEK and GroupKeys made one: store it, and wake the group so
        that it is pushed to the members that hold the old keys (a KEK under the one it ``replaced``)."""
        if isinstance(key, Generation):
            changes = Changes(generations=[generation_record(key)])
        else:
            keks = [kek_record(key)]
            if run.lkh is not None and len(key.key) == run.lkh.key_bytes:
                run.lkh.set_root(key.key)
            if replaced is not None and run.previous_kek is None:
                run.previous_kek = replaced
                keks.append(kek_record(replaced, retired=True))
            changes = Changes(keks=keks)
            self._write_keylog(key)
        what = f"generation {key.number}" if isinstance(key, Generation) else f"KEK {_spi(key)}"
        if run.rekeyed:
            self.log.warn("group {group}: a registration had to make {what} (the schedule was late)",
                          group=run.name, what=what)
        else:  # a group without rekeys gets its next generation from the first registration that needs it
            self.log.info("group {group}: {what} made for a registration", group=run.name, what=what)
        d = self.store.commit(run.name, changes)
        d.addErrback(lambda f: self._failed(run, f))
        self._arm(run, 0.0)

    # --- operator requests --------------------------------------------------------------------------------------

    def _run(self, group_name: str) -> GroupRun:
        run = self.runs.get(group_name)
        if run is None:
            raise RekeyError(f"no group {group_name!r}")
        return run

    def rekey(self, group_name: str, kek: bool = False) -> defer.Deferred:
        """Push a new TEK generation now (and a new KEK with ``kek``); fires with the SEQ used."""
        try:
            run = self._run(group_name)
            if not run.rekeyed:
                raise RekeyError(f"group {group_name!r} has no KEK: it cannot be rekeyed by GROUPKEY-PUSH")
            if not self.running:
                raise RekeyError("the rekey service is not running")
        except RekeyError:
            return defer.fail()

        @defer.inlineCallbacks
        def go():
            yield self._tek_rekey(run, new_kek=kek)
            return run.seq

        d = run.lock.run(go)
        d.addBoth(self._rearm_after, run)
        return d

    def _rearm_after(self, result, run: GroupRun):
        self._arm(run)
        return result

    def evict(self, group_name: str, identity: str) -> defer.Deferred:
        """Evict ``identity`` from ``group_name`` (RFC 6407 section 5.6.3, LKH): its leaf is freed, every key on
        its path changes, the new KEK goes out under the old one in an LKH update only the other members can
        open, and new TEKs follow at once under the new KEK.  The identity is refused at registration until
        :meth:`readmit`.  Fires with the SEQ of the eviction PUSH (None when ``identity`` held no keys)."""
        try:
            run = self._run(group_name)
            if not run.rekeyed:
                raise RekeyError(f"group {group_name!r} has no KEK: there is nothing to evict from")
            if not self.running:
                raise RekeyError("the rekey service is not running")
            member = run.members.get(identity)
            if member is not None and (member.leaf is None or not run.lkh.occupied(member.leaf)):
                raise RekeyError(f"member {identity} holds no LKH leaf: it cannot be evicted by an LKH update "
                                 "(it registered before the tree knew it); it must register again first")
        except RekeyError:
            return defer.fail()
        d = run.lock.run(self._evict, run, identity)
        d.addBoth(self._rearm_after, run)
        return d

    @defer.inlineCallbacks
    def _evict(self, run: GroupRun, identity: str):
        member = run.members.get(identity)
        if member is None:  # holds no keys of ours (or was evicted already): refuse it from now on
            if identity not in run.members.evicted:
                yield self.store.commit(run.name, Changes(evict=[identity]))
                run.members.evicted.add(identity)
            return None
        keys, tree, now = run.keys, run.lkh, self.clock.seconds()
        under = keys.current_kek
        before = ({n: (k, v) for n, k, v in tree.nodes()}, tree.leaves())
        kek = keys.make_kek(now)
        updates, changed = tree.evict(member.leaf, kek.key)
        seq, high_water = self._next_seq(run)
        nodes = [LKHNodeRecord(n.node, n.key, n.version) for n in changed if n.node != ROOT]
        stored_before = dict(run.lkh_stored)
        run.lkh_stored.update((r.node, r.version) for r in nodes)
        try:  # the member's record stays until the PUSH is out: a restart finds the eviction unfinished
            yield self.store.commit(run.name, Changes(keks=[kek_record(kek), kek_record(under, retired=True)],
                                                      lkh_nodes=nodes, evict=[identity],
                                                      seq_high_water=high_water))
        except BaseException:
            self._abandon(keys, None, kek)
            run.lkh, run.lkh_stored = _rebuilt(tree, *before), stored_before
            raise
        self._used_seq(run, seq, high_water)
        self._write_keylog(kek)
        run.members.evicted.add(identity)
        run.previous_kek = under
        run.keys.install_kek(kek)  # the tree's root took the new key in evict()
        yield self._push_eviction(run, under, kek, seq, identity, member.leaf, updates)
        return seq

    @defer.inlineCallbacks
    def _push_eviction(self, run: GroupRun, under: KEKKeys, kek: KEKKeys, seq: int, identity: str, leaf: int,
                       updates):
        """Send the eviction PUSH of ``identity`` (SEQ ``seq``, under ``under``), forget the member and the old
        KEK, then push new TEKs under the new KEK."""
        from gdoiserver.doi.gdoi.push import eviction_kd

        if not self.running:
            return
        now = self.clock.seconds()
        datagram = messages.eviction(run.group, under, kek, seq, eviction_kd(kek, updates), now, rng=self.rng)
        under.seq = max(under.seq, seq)
        kek.seq = max(kek.seq, seq)
        run.previous_kek = run.unfinished_eviction = None
        run.members.remove(identity)
        targets = self._deliver(run, seq, datagram)
        run.last_rekey_at = now
        self.counters["eviction"] += 1
        self.log.info("group {group}: evicted {member} (leaf {leaf}): SEQ {seq}, KEK {kek} under KEK {under} in an "
                      "LKH update of {count} wrapped keys, to {members} members", group=run.name, member=identity,
                      leaf=leaf, seq=seq, kek=_spi(kek), under=_spi(under), count=len(updates),
                      members=len(targets))
        yield self.store.commit(run.name, Changes(drop_keks=[under.spi], drop_members=[identity]))
        yield self._tek_rekey(run)

    def readmit(self, group_name: str, identity: str) -> defer.Deferred:
        """Let an evicted ``identity`` register in ``group_name`` again; fires with False if it was not evicted."""
        try:
            run = self._run(group_name)
        except RekeyError:
            return defer.fail()

        @defer.inlineCallbacks
        def go():
            if identity not in run.members.evicted:
                return False
            yield self.store.commit(run.name, Changes(readmit=[identity]))
            run.members.readmit(identity)
            self.log.info("group {group}: {member} readmitted", group=run.name, member=identity)
            return True

        return run.lock.run(go)

    def leaf_for(self, group_name: str, identity: str):
        """The LKH path (leaf first, up to just below the root) a registering ``identity`` gets in its KD: its
        leaf of before, or the lowest free one.  New node keys are written to the store at once.  None for a
        group without a KEK or an evicted identity; LKHError when the tree is full."""
        run = self.runs.get(group_name)
        if run is None or run.lkh is None or run.members.is_evicted(identity):
            return None
        tree = run.lkh
        member = run.members.get(identity)
        leaf = member.leaf if member is not None else run.reserved_leaves.get(identity)
        if leaf is None or not tree.occupied(leaf):
            leaf = tree.join(leaf) if leaf is not None else tree.join()
        run.reserved_leaves[identity] = leaf
        if member is not None:
            member.leaf = leaf
        path = tree.path(leaf)
        self._store_nodes(run, path)
        return path

    def _store_nodes(self, run: GroupRun, node_keys) -> defer.Deferred | None:
        """Commit the node keys the store does not hold yet (the root's is the KEK, stored as such)."""
        fresh = [LKHNodeRecord(n.node, n.key, n.version) for n in node_keys
                 if n.node != ROOT and run.lkh_stored.get(n.node) != n.version]
        if not fresh:
            return None
        run.lkh_stored.update((r.node, r.version) for r in fresh)
        d = self.store.commit(run.name, Changes(lkh_nodes=fresh))
        d.addErrback(lambda f: self._failed(run, f))
        return d

    # --- members ------------------------------------------------------------------------------------------------

    def member_registered(self, registered) -> defer.Deferred:
        """Hook for KeyServerDOI.established: remember the member (:class:`MemberRegistered`) and store it."""
        run = self.runs.get(registered.group)
        if run is None:
            return defer.succeed(None)
        if run.members.is_evicted(registered.member):
            self.counters["evicted_registered"] += 1
            self.log.error("group {group}: evicted member {member} registered: it gets no rekeys",
                           group=run.name, member=registered.member)
            return defer.succeed(None)
        member = RegisteredMember(
            identity=registered.member, id_type=registered.identity.id_type, id_data=registered.identity.data,
            address=registered.address[0], port=registered.address[1], registered_at=self.clock.seconds(),
            leaf=registered.leaf if registered.leaf is not None else run.reserved_leaves.get(registered.member),
            ack_key=registered.ack_key or b"",
            sender_ids=tuple(registered.sender_ids),
        )
        run.reserved_leaves.pop(registered.member, None)
        run.members.register(member)
        return self.store.commit(run.name, Changes(members=[member.to_record()]))

    def is_evicted(self, group_name: str, identity: str) -> bool:
        """Whether ``identity`` is refused at registration in ``group_name`` (evicted, not readmitted)."""
        run = self.runs.get(group_name)
        return run is not None and run.members.is_evicted(identity)

    def ack_received(self, message, raw: bytes, peer, listener=None) -> None:
        """The engine's handler of exchange 35 (RFC 8263 GROUPKEY-PUSH ACK): check the HASH with the key of the
        member the ACK came from, and stop sending that rekey to it.  Never raises; what does not hold is counted
        as ``rekey_ack_bad``."""
        try:
            # The listener decoded ``message`` under the IPsec DOI; an ACK's payloads are GDOI's (SEQ): read ``raw``.
            ack = read_ack(raw)
            group = self.groups.lookup(GroupId.from_identification(ack.group_id))
        except DecodeError:
            self.counters["rekey_ack_bad"] += 1
            return
        run = self.runs.get(group.policy.name) if group is not None else None
        member = None
        if run is not None:
            for candidate in run.members.from_peer(peer):
                if candidate.ack_key and ack_holds(ack, candidate.ack_key):
                    member = candidate
                    break
        if member is None:
            self.counters["rekey_ack_bad"] += 1
            return
        pending = run.delivery.pending.get(ack.seq) if run.delivery is not None else None
        if pending is not None and pending.datagram[:16] != ack.kek_spi:
            self.counters["rekey_ack_bad"] += 1
            return
        if run.members.acked(member.identity, ack.seq) is None:
            self.counters["rekey_ack_duplicate"] += 1
            return
        self.counters["rekey_acked"] += 1
        if pending is not None:
            run.delivery.acked(ack.seq, member.identity)

    def _closed(self, run: GroupRun, pending) -> None:
        """The delivery of a rekey ended: with acknowledgements on, members that missed it are counted (and
        marked stale after ``stale_after``); the acknowledgement state is stored in one commit."""
        if not run.group.policy.rekey.ack:
            return
        for member in run.members.closed(pending.seq, pending.targets):
            self.counters["members_stale"] += 1
            self.log.warn("group {group}: member {member} acknowledged none of the last {n} rekeys: stale",
                          group=run.name, member=member.identity, n=run.members.stale_after)
        records = [m.to_record() for i in pending.targets if (m := run.members.get(i)) is not None]
        if records and self.running:
            d = self.store.commit(run.name, Changes(members=records))
            d.addErrback(lambda f: self.log.failure("group {group}: storing acknowledgements failed", f,
                                                    group=run.name))

    # --- status -------------------------------------------------------------------------------------------------

    def status(self) -> dict:
        """group name -> what an operator may see of its rekey state (no keys)."""
        out = {}
        for name, run in self.runs.items():
            keys = run.keys
            newest, kek = keys.newest, keys.current_kek
            members = run.members.members.values()
            out[name] = {
                "seq": run.seq,
                "seq_high_water": run.high_water,
                "generation": newest.number if newest else None,
                "generation_expires_at": newest.expires_at if newest else None,
                "generations": [g.number for g in keys.generations],
                "kek_spi": _spi(kek) if kek else None,
                "kek_expires_at": kek.expires_at if kek else None,
                "next_wake": run.next_wake,
                "last_rekey_at": run.last_rekey_at,
                "members": len(run.members),
                "stale": sum(1 for m in members if m.stale),
                "evicted": sorted(run.members.evicted),
            }
        return out

    def members(self, group_name: str) -> list[dict]:
        """The members of ``group_name`` as an operator may see them (no keys); RekeyError for no such group."""
        return self._run(group_name).members.summary()

    # --- helpers ------------------------------------------------------------------------------------------------

    def _write_keylog(self, kek: KEKKeys) -> None:
        if self.keylog is None:
            return
        try:
            self.keylog.write_kek(kek.spi, kek.key, kek.policy.key_bits)
        except Exception as e:  # a keylog problem must not stop rekeying
            self.counters["keylog_error"] += 1
            self.log.error("{error}: the KEK {spi} was not written to the keylog", error=str(e), spi=_spi(kek))


def reissue_updates(tree: LKHTree, leaf: int) -> tuple[LKHUpdate, ...]:
    """The updates of an eviction of ``leaf`` that was made and stored but never sent: each ancestor's (new,
    current) key wrapped under each child that has members below it, the freed leaf excepted; what
    :meth:`LKHTree.evict` returned then."""
    held = tree.leaves()

    def has_members(node: int) -> bool:
        shift = tree.depth - (node.bit_length() - 1)
        return any(h >> shift == node for h in held)

    updates = []
    for node in ancestors(leaf):
        new = tree.key(node)
        for child in (2 * node, 2 * node + 1):
            if child == leaf or not has_members(child):
                continue
            wrapping = tree.key(child)
            updates.append(LKHUpdate(node, new.version, child, wrapping.version, aes_key_wrap(wrapping.key,
                                                                                              new.key)))
    return tuple(updates)


def _rebuilt(tree: LKHTree, nodes: dict, leaves) -> LKHTree:
    """A tree as it was before a change whose commit failed."""
    again = LKHTree(tree.depth, tree.key_bytes, tree.rng, {n: kv for n, kv in nodes.items() if n != ROOT})
    for leaf in leaves:
        again.join(leaf=leaf)
    if ROOT in nodes:
        again.set_root(nodes[ROOT][0])
    return again


def _spi(kek: KEKKeys | None) -> str:
    """A KEK's SPI prefix for logs (the SPI is public: it is the PUSH header's cookies)."""
    return kek.spi[:4].hex() if kek is not None else "-"


def _multicast_sender(rekey) -> MulticastSender:
    return MulticastSender(rekey.multicast_address, rekey.multicast_port, rekey.ttl, rekey.interface, rekey.source)
