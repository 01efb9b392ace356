"""tshark decrypts and decodes what our member and our key server exchange, given nothing but our keylog.

The two services run over tests.test_gdoi_registration.Wire, bound to 127.0.0.1:848 (the member, the initiator)
and 127.0.0.2:848 (the key server), and every datagram they exchanged, Phase 1 included and in order, goes into a
pcap (gdoiserver.tools.pcap).  The key server writes the keylog (``<initiator cookie>,<encryption key>``, Wireshark's
``ikev1_decryption_table``).

tshark 4.0.17 learns the Phase 1 cipher and hash from the proposal of the Phase 1 SA payload, and reads an SA of
DOI 2 in exchange 2 or 4 in the GDOI layout, without proposals (defect ``tshark-phase1-doi2``, below): so the
member runs Phase 1 under DOI 1 here (``member.phase1_doi = 1``, which RFC 6407 key servers accept), and the last
test shows the defect with the default DOI 2.
"""

from twisted.trial import unittest

from gdoiserver.codec.constants import PayloadType
from gdoiserver.tools.pcap import Datagram, write_pcap
from tests import pki
from tests.machine_pair import seeded_rng
from tests.test_gdoi_registration import (
    TEKS,
    Files,
    Wire,
    group_id,
    group_toml,
    ks_plugin,
    outcome,
    start_key_server,
    start_member,
)
from tests.tshark import _run, field_values, packets, problems, require_tshark

FIELDS = ("frame.number", "ip.src", "isakmp.exchangetype", "isakmp.flags", "isakmp.typepayload")
#: The payload chains of GROUPKEY-PULL (RFC 6407 section 3.2), as payload type numbers.
HASH, NONCE, ID, SA, KE, CERT, SIG = (int(t) for t in (PayloadType.HASH, PayloadType.NONCE, PayloadType.ID,
                                                       PayloadType.SA, PayloadType.KE, PayloadType.CERT,
                                                       PayloadType.SIG))
SEQ, KD, GAP, SAT = int(PayloadType.SEQ), int(PayloadType.KD), int(PayloadType.GAP), int(PayloadType.SAT)


class TsharkPullTests(unittest.TestCase):
    def setUp(self):
        require_tshark()
        self.files = Files(self)

    def capture(self, groups: str, *, phase1_doi: int = 1, certificates: bool = False, member_extra: str = ""):
        """Register once over the wire; returns (pcap path, the uat option with our keylog line, registration)."""
        wire = Wire(pki.NOW.timestamp())
        c = self.files.pki("p256", now=pki.NOW) if certificates else None
        keylog = self.files.path("ks.keylog")
        ks_text = self.files.ks_config(groups, port=848, certificates=c, extra=f'[keylog]\npath = "{keylog}"\n')
        self.ks = start_key_server(self, ks_text, wire, seeded_rng(1))
        identity = "gm1.members.example.org" if certificates else "gm1.example.org"
        text = self.files.member_config([("127.0.0.2", 848)], ["gcm"], port=848, certificates=c, identity=identity)
        text = text.replace('mode = "main"', f'mode = "main"\nphase1_doi = {phase1_doi}') + member_extra
        member = start_member(self, text, wire, seeded_rng(2))
        result = outcome(member.register(group_id("gcm")))
        wire.run(until=lambda: result)
        registration = result[0]
        self.assertEqual(type(registration).__name__, "GroupRegistration", registration)
        pcap = self.files.path("pull.pcap")
        write_pcap(pcap, [Datagram(src[0], dst[0], src[1], dst[1], data, float(i))
                          for i, (src, dst, data) in enumerate(wire.sent)])
        [line] = [x for x in open(keylog).read().splitlines() if not x.startswith("KEK ")]  # Phase 1 lines only
        return pcap, ("-o", f"uat:ikev1_decryption_table:{line}"), registration

    def rows(self, pcap, *options) -> list[dict]:
        out = _run(pcap, "-Y", "isakmp", "-T", "fields", "-E", "separator=|", *(a for f in FIELDS for a in ("-e", f)),
                   *options)
        return [dict(zip(FIELDS, line.split("|"))) for line in out.splitlines() if line]

    def pull_chains(self, pcap, *options) -> list[list[int]]:
        """The payload types tshark shows in each GROUPKEY-PULL message (exchange 32), in order."""
        return [[int(t) for t in r["isakmp.typepayload"].split(",") if t] for r in self.rows(pcap, *options)
                if r["isakmp.exchangetype"] == "32"]

    def test_four_pull_messages(self):
        """With our keylog tshark decrypts Main Mode 5 and 6 and all four GROUPKEY-PULL messages on UDP 848:
        HASH(1) Ni ID; HASH(2) Nr SA; HASH(3) GAP; HASH(4) SEQ KD, and flags nothing malformed or worse than a
        note; it reads the group ID, the SAK's and SATs' SPIs, the key packets' SPIs and SEQ as we sent them.
        Without the keylog it shows no payload of them."""
        groups = group_toml("gcm", self.files.signing_key, teks=[TEKS["gcm"], TEKS["cbc"]])
        pcap, uat, reg = self.capture(groups)
        self.assertEqual(self.pull_chains(pcap), [[], [], [], []])
        # tshark lists the SA's SAT payloads after it (not its SAK).
        self.assertEqual(self.pull_chains(pcap, *uat), [[HASH, NONCE, ID], [HASH, NONCE, SA, SAT, SAT], [HASH, GAP],
                                                         [HASH, SEQ, KD]])
        rows = self.rows(pcap, *uat)
        mm5, mm6 = [r for r in rows if r["isakmp.exchangetype"] == "2" and int(r["isakmp.flags"], 16) & 1]
        self.assertEqual((mm5["ip.src"], mm5["isakmp.typepayload"].split(",")[:2]), ("127.0.0.1", ["5", "8"]))
        self.assertEqual((mm6["ip.src"], mm6["isakmp.typepayload"].split(",")[:2]), ("127.0.0.2", ["5", "8"]))
        self.assertEqual(problems(pcap, *uat), [])
        p1, p2, p3, p4 = [p for p in packets(pcap, *uat) if field_values(p, "isakmp.exchangetype") == ["32"]]
        self.assertEqual(field_values(p1, "isakmp.id.data.key_id"), ["00:00:03:ea"])  # group 1002
        self.assertEqual(field_values(p2, "isakmp.sa.doi"), ["2"])
        self.assertEqual(field_values(p2, "isakmp.sak.spi"), [reg.kek.spi.hex(":")])
        self.assertEqual(field_values(p2, "isakmp.sat.spi"), [t.spi.hex(":") for t in reg.teks])
        self.assertEqual(field_values(p3, "isakmp.datapayload"), ["80:03:00:01"])  # GAP: SENDER_ID_REQUEST 1
        self.assertEqual(field_values(p4, "isakmp.seq.seq"), ["0"])
        self.assertEqual(field_values(p4, "isakmp.kd.payload.spi"),
                         [reg.kek.spi.hex(":")] + [t.spi.hex(":") for t in reg.teks])
        generation = ks_plugin(self.ks).key_server.groups.lookup(group_id("gcm")).keys.generations[-1]
        self.assertEqual([t.spi for t in reg.teks], [t.spi for t in generation.teks])

    def test_certificates_and_pop(self):
        """Phase 1 with certificates, and CERT and POP (SIG) both ways in messages 3 and 4: tshark decrypts all
        four and flags nothing."""
        groups = group_toml("gcm", self.files.signing_key, members=('certificate_dns = "gm1.members.example.org"',))
        pcap, uat, _ = self.capture(groups, certificates=True)
        self.assertEqual(self.pull_chains(pcap, *uat), [[HASH, NONCE, ID], [HASH, NONCE, SA, SAT],
                                                         [HASH, CERT, CERT, SIG, GAP],
                                                         [HASH, SEQ, KD, CERT, CERT, SIG]])
        self.assertEqual(problems(pcap, *uat), [])

    def test_gap_defect(self):
        """Defect "tshark-sa-gap-stops" (docs/wire-format.md): with a GAP in the SA of message 2 tshark shows no
        SAT after it, and flags nothing."""
        groups = group_toml("gcm", self.files.signing_key,
                            extra="[groups.gap]\nactivation_delay = 10\ndeactivation_delay = 20\n")
        pcap, uat, reg = self.capture(groups)
        self.assertEqual(problems(pcap, *uat), [])
        _, p2, _, _ = [p for p in packets(pcap, *uat) if field_values(p, "isakmp.exchangetype") == ["32"]]
        self.assertEqual(field_values(p2, "isakmp.sak.spi"), [reg.kek.spi.hex(":")])
        self.assertEqual(field_values(p2, "isakmp.sat.spi"), [])
        self.assertEqual((reg.activation_delay, reg.deactivation_delay), (10, 20))

    def test_phase1_doi2_defect(self):
        """Defect "tshark-phase1-doi2": with the Phase 1 SA of DOI 2 (our default, RFC 3547 section 2.1.1) tshark
        reads the Main Mode SA payload in the GDOI layout, finds no proposal, learns no cipher, and so decrypts
        nothing with the keylog: no payload of MM5, MM6 or the PULL messages shows.  It flags nothing."""
        groups = group_toml("gcm", self.files.signing_key)
        pcap, uat, _ = self.capture(groups, phase1_doi=2)
        [mm1] = [p for p in packets(pcap, *uat)][:1]
        self.assertEqual(field_values(mm1, "isakmp.sa.doi"), ["2"])
        self.assertEqual(field_values(mm1, "isakmp.prop.number"), [])
        self.assertEqual(self.pull_chains(pcap, *uat), [[], [], [], []])
        encrypted = [r for r in self.rows(pcap, *uat) if int(r["isakmp.flags"], 16) & 1]
        self.assertEqual(len(encrypted), 6)
        self.assertEqual({r["isakmp.typepayload"] for r in encrypted}, {""})
        self.assertEqual(problems(pcap, *uat), [])

    def test_pfs_kd_masked(self):
        """With PFS (KE in messages 3 and 4) the KD body travels XORed with a key stream from g^xy
        (docs/wire-format.md, "PFS"), which tshark cannot know: it decrypts all four messages and reads KE_I and
        KE_R, and only the KD of message 4 is flagged malformed (named "tshark-pfs-kd-masked" here)."""
        groups = group_toml("gcm", self.files.signing_key)
        pcap, uat, reg = self.capture(groups, member_extra="[registration]\npfs = true\n")
        self.assertTrue(reg.pfs)
        self.assertEqual(self.pull_chains(pcap, *uat), [[HASH, NONCE, ID], [HASH, NONCE, SA, SAT], [HASH, KE, GAP],
                                                         [HASH, KE, SEQ, KD]])
        m4 = [r for r in self.rows(pcap, *uat) if r["isakmp.exchangetype"] == "32"][3]
        [problem] = problems(pcap, *uat)
        self.assertEqual(problem.split("\t")[0], m4["frame.number"])
        self.assertIn("Malformed", problem)
