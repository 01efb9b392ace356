"""The state diagrams (docs/diagrams/*.dot, drawn in docs/state-machines.md) stay true to the code.

For each machine with a transition table, the states and transitions come from the code itself: the table
(``TRANSITIONS``, ``HANDLERS``, ``_HANDLERS``), the state the machine starts in (its ``state`` field's default), and
every state its methods assign (read from their source with :mod:`ast`).  A state assigned together with
``done = True`` ends the machine, so every role must draw it.  Node IDs are ``<role>_<state>``.  The member's rekey
handling and the key server's schedule have no state field: their diagrams must name every effect, input and
counter (member) and every :class:`~gdoiserver.rekey.schedule.Action` (key server).  When Graphviz's ``dot`` is
installed, every file must render without a warning.
"""

import ast
import inspect
import os
import re
import shutil
import subprocess
import textwrap

import attrs
from twisted.trial import unittest

from gdoiserver.doi.gdoi import push
from gdoiserver.doi.gdoi.pull import PullInitiator, PullResponder
from gdoiserver.doi.ipsec import quick_mode
from gdoiserver.exchanges.aggressive_mode import AggressiveMode
from gdoiserver.exchanges.dpd import DPD
from gdoiserver.exchanges.main_mode import MainMode
from gdoiserver.exchanges.phase1 import INITIATOR
from gdoiserver.member import rekey as member_rekey
from gdoiserver.rekey.schedule import Action

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIAGRAMS = os.path.join(REPO, "docs", "diagrams")
_KEYWORDS = {"digraph", "graph", "subgraph", "node", "edge", "strict"}


# --- reading a .dot file -------------------------------------------------------------------------------------------


@attrs.frozen
class Dot:
    nodes: frozenset
    edges: frozenset
    text: str  # without comments


def read_dot(name: str) -> Dot:
    """The node IDs and edges (tail, head) of a DOT file, and its text (labels included) without comments."""
    with open(os.path.join(DIAGRAMS, name), encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"(?m)^\s*(//|#).*$", "", text)
    text = re.sub(r"\\[nlr]", " ", text)  # line breaks inside labels
    bare = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)  # quoted strings (labels) out
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # attribute lists out
    nodes, edges = set(), set()
    for statement in re.split(r"[;\n{}]", bare):
        parts = [p.strip() for p in statement.split("->")]
        if len(parts) > 1:
            nodes.update(parts)
            edges.update(zip(parts, parts[1:]))
        elif re.fullmatch(r"\w+", parts[0]) and parts[0] not in _KEYWORDS:
            nodes.add(parts[0])
    return Dot(frozenset(nodes), frozenset(edges), text)


# --- reading the machines --------------------------------------------------------------------------------------------


def _class_tree(cls) -> ast.ClassDef:
    return ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]


def _state_of(node) -> list[tuple[str, bool]]:
    """(state, ends the machine) for each string an assignment statement puts in ``self.state``."""
    if not isinstance(node, ast.Assign):
        return []
    out = []
    for target in node.targets:
        targets = target.elts if isinstance(target, ast.Tuple) else [target]
        values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
        if len(targets) != len(values):
            continue
        pairs = dict(zip((ast.unparse(t) for t in targets), values))
        value = pairs.get("self.state")
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            done = pairs.get("self.done")
            out.append((value.value, isinstance(done, ast.Constant) and done.value is True))
    return out


def assigned_states(cls) -> dict[str, dict[str, bool]]:
    """method name -> {state: ends the machine} for every assignment to ``self.state`` in ``cls`` and its bases
    of this project."""
    methods: dict[str, dict[str, bool]] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("gdoiserver."):
            continue
        for item in _class_tree(klass).body:
            if isinstance(item, ast.FunctionDef):
                found = {s: done for node in ast.walk(item) for s, done in _state_of(node)}
                if found:
                    methods[item.name] = found
    return methods


@attrs.frozen
class Machine:
    """What the code says of one machine: ``states[role]`` the states each role must draw, ``some_role`` the
    states at least one role must draw, and ``edges`` the transitions, as node IDs."""

    dot: str
    states: dict
    some_role: frozenset
    edges: frozenset


def machine(dot: str, cls, table: dict, roles: list[str], *, initiator: str | None = None) -> Machine:
    """``table`` maps (role, state) to the name of its handler, or to the next state as ``("->", state)``;
    ``initiator`` is the role whose ``start()`` leaves the initial state."""
    initial = attrs.fields(cls).state.default
    methods = assigned_states(cls)
    terminal = {s for found in methods.values() for s, done in found.items() if done}
    states = {role: {initial, *terminal} for role in roles}
    edges = set()
    for (role, state), handler in table.items():
        states[role].add(state)
        if isinstance(handler, tuple):
            states[role].add(handler[1])
            edges.add((f"{role}_{state}", f"{role}_{handler[1]}"))
        else:
            for after in methods.get(handler, {}):
                states[role].add(after)
                edges.add((f"{role}_{state}", f"{role}_{after}"))
    if initiator is not None:
        for name in ("start", "_start"):
            for after in methods.get(name, {}):
                states[initiator].add(after)
                edges.add((f"{initiator}_{initial}", f"{initiator}_{after}"))
    some = frozenset(s for found in methods.values() for s in found)
    if len(roles) == 1:  # one role: every state is its own
        states[roles[0]].update(some)
    return Machine(dot, {r: frozenset(s) for r, s in states.items()}, some, frozenset(edges))


def phase1(dot: str, cls) -> Machine:
    table = {key: ("->", next_state) for key, (_, _, next_state) in cls.TRANSITIONS.items()}
    return machine(dot, cls, table, sorted({role for role, _ in table}), initiator=INITIATOR)


def _functions(table: dict) -> dict:
    return {key: handler.__name__ for key, handler in table.items()}


MACHINES = [
    phase1("main-mode.dot", MainMode),
    phase1("aggressive-mode.dot", AggressiveMode),
    machine("quick-mode.dot", quick_mode.QuickMode, _functions(quick_mode._HANDLERS),
            sorted({role for role, _ in quick_mode._HANDLERS}), initiator=INITIATOR),
    machine("groupkey-pull.dot", PullResponder, {("ks", s): h for s, h in PullResponder.HANDLERS.items()}, ["ks"]),
    machine("groupkey-pull.dot", PullInitiator, {("gm", s): h for s, h in PullInitiator.HANDLERS.items()}, ["gm"],
            initiator="gm"),
    machine("dpd.dot", DPD, {}, ["dpd"], initiator="dpd"),
]


class TransitionTableTests(unittest.TestCase):
    def test_machines_read(self):
        """The code gives each machine a start state, at least one terminal state and transitions to check (so
        that the tests below cannot pass on an empty reading)."""
        for m in MACHINES:
            for role, states in m.states.items():
                self.assertGreaterEqual(len(states), 3, (m.dot, role, states))
            self.assertTrue(m.edges, m.dot)
        main = MACHINES[0]
        self.assertIn(("initiator_MM1_SENT", "initiator_MM3_SENT"), main.edges)
        self.assertIn(("initiator_START", "initiator_MM1_SENT"), main.edges)
        self.assertEqual(main.states["responder"], {"START", "MM2_SENT", "MM4_SENT", "ESTABLISHED", "FAILED"})
        self.assertEqual(MACHINES[-1].states["dpd"], {"new", "idle", "probing", "dead", "stopped"})

    def test_every_state_drawn(self):
        """Every state of each machine's transition table, its start state and its terminal states are a node
        of its diagram, for each role; every other state it assigns is a node for some role."""
        for m in MACHINES:
            dot = read_dot(m.dot)
            for role, states in m.states.items():
                missing = sorted(s for s in states if f"{role}_{s}" not in dot.nodes)
                self.assertEqual(missing, [], f"{m.dot}: states of {role} not drawn")
            prefixes = {role for role in m.states}
            for state in m.some_role:
                self.assertTrue(any(f"{role}_{state}" in dot.nodes for role in prefixes), f"{m.dot}: {state}")

    def test_every_transition_drawn(self):
        """Every transition of each table (and each start()) is an edge of its diagram."""
        for m in MACHINES:
            dot = read_dot(m.dot)
            self.assertEqual(sorted(m.edges - dot.edges), [], f"{m.dot}: transitions not drawn")

    def test_no_state_invented(self):
        """A diagram draws no <role>_<STATE> node that its machine does not have (the names stay the code's)."""
        by_dot: dict[str, dict[str, set]] = {}
        for m in MACHINES:
            for role, states in m.states.items():
                by_dot.setdefault(m.dot, {}).setdefault(role, set()).update(states | m.some_role)
        for name, roles in by_dot.items():
            for node in read_dot(name).nodes:
                role, _, state = node.partition("_")
                if role in roles:
                    self.assertIn(state, roles[role], f"{name}: {node} is no state of the code")


class EffectDiagramTests(unittest.TestCase):
    def test_member_rekey(self):
        """The member's rekey diagram names every effect GroupRekey returns, each of its inputs, the routing
        functions, and every counter a PUSH can end in."""
        text = read_dot("member-rekey.dot").text
        effects = [name for name, obj in vars(member_rekey).items()
                   if attrs.has(obj) if obj.__module__ == member_rekey.__name__ and not name.startswith("_")]
        self.assertGreaterEqual(len(effects), 8, effects)
        inputs = [name for name, _ in inspect.getmembers(member_rekey.GroupRekey, inspect.isfunction)
                  if not name.startswith("_")]
        counters = [member_rekey.ACCEPTED, member_rekey.DUPLICATE, member_rekey.ACK_SENT,
                    member_rekey.REREGISTER_LOST, push.MALFORMED, push.UNKNOWN_KEK, push.BAD_SIGNATURE, push.REPLAY,
                    push.REFUSED]
        for name in [*effects, *inputs, "route", "stray", *counters]:
            self.assertRegex(text, rf"\b{re.escape(name)}\b", f"member-rekey.dot does not name {name}")

    def test_rekey_schedule(self):
        """The key server's schedule diagram has a node act_<ACTION> for every Action plan() can return."""
        dot = read_dot("rekey-schedule.dot")
        for action in Action:
            self.assertIn(f"act_{action.name}", dot.nodes)
        self.assertEqual({n for n in dot.nodes if n.startswith("act_")}, {f"act_{a.name}" for a in Action})


class RenderTests(unittest.TestCase):
    def test_every_diagram_renders(self):
        """``dot -Tsvg`` renders each diagram with exit status 0 and nothing on stderr."""
        dot = shutil.which("dot")
        if dot is None:
            raise unittest.SkipTest("missing tool: dot (Debian package graphviz)")
        names = sorted(n for n in os.listdir(DIAGRAMS) if n.endswith(".dot"))
        self.assertGreaterEqual(len(names), 7)
        for name in names:
            proc = subprocess.run([dot, "-Tsvg", os.path.join(DIAGRAMS, name)], capture_output=True, timeout=60)
            self.assertEqual((proc.returncode, proc.stderr), (0, b""), name)
            self.assertIn(b"<svg", proc.stdout)
