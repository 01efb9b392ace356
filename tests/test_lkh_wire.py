"""LKH_DOWNLOAD_ARRAY and LKH_UPDATE_ARRAY on the wire (gdoiserver.doi.gdoi.lkh_wire): golden octets, round trips,
and a decoder that raises nothing but DecodeError."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gdoiserver.codec.constants import NotifyType
from gdoiserver.codec.errors import DecodeError, EncodeError
from gdoiserver.codec.gdoi import KD, KeyPacketType, LKHKeyAttr
from gdoiserver.doi.gdoi import lkh_wire
from gdoiserver.doi.gdoi.push import CTX
from gdoiserver.group.lkh import ROOT, LKHUpdate, NodeKey, member_update

#: RFC 3394 section 4.1: 128 bits of key data wrapped with a 128-bit KEK.
RFC3394_KEK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
RFC3394_KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
RFC3394_WRAPPED = bytes.fromhex("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5")

DOWNLOAD = bytes.fromhex(
    "01" "02" "0000"  # LKH Version 1, # of LKH Keys 2, RESERVED
    "00000009"  # LKH ID: node 9 (the leaf)
    "03" "00"  # Key Type KEK_ALG_AES, RESERVED
    "00000000" "00000000"  # Key Creation Date, Key Expiration Date: 0, not used
    "00000001"  # Key Handle: version 1
    + "11" * 16  # Key Data: the leaf key
    + "00000004"  # LKH ID: node 4 (the leaf's parent)
    "03" "00" "00000000" "00000000"
    "00000002"  # Key Handle: version 2
    + "22" * 16
)

UPDATE = bytes.fromhex(
    "01" "01" "0000"  # LKH Version 1, # of LKH Keys 1, RESERVED
    "00000001"  # LKH ID: node 1 (the root: the new KEK)
    "03" "00"  # Key Type KEK_ALG_AES, RESERVED
    "00000000" "00000000"  # Key Creation Date, Key Expiration Date
    "00000005"  # Key Handle: the root's new version 5
    "00000002"  # the wrapping node's LKH ID: node 2
    "00000007"  # the wrapping node's Key Handle: version 7
    "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"  # the key wrapped (RFC 3394 section 4.1)
)

node_keys = st.builds(NodeKey, st.integers(1, 2**32 - 1), st.integers(0, 2**32 - 1),
                      st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)))


def updates_of(size):
    return st.builds(LKHUpdate, st.integers(1, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1),
                     st.integers(0, 2**32 - 1), st.binary(min_size=size + 8, max_size=size + 8))


class GoldenTests(SynchronousTestCase):
    def test_download_array(self):
        """A two-key download array, octet by octet, both ways."""
        path = (NodeKey(9, 1, b"\x11" * 16), NodeKey(4, 2, b"\x22" * 16))
        self.assertEqual(lkh_wire.encode_download_array(path), DOWNLOAD)
        self.assertEqual(lkh_wire.decode_download_array(DOWNLOAD), path)

    def test_update_array(self):
        """A one-key update array, octet by octet, both ways."""
        update = LKHUpdate(ROOT, 5, 2, 7, RFC3394_WRAPPED)
        self.assertEqual(lkh_wire.encode_update_array([update]), UPDATE)
        self.assertEqual(lkh_wire.decode_update_array(UPDATE), (update,))

    def test_rfc3394_vector(self):
        """A member holding node 2 at version 7 with RFC 3394's KEK reads the golden update and unwraps the RFC's
        key data as its new root key."""
        path = (NodeKey(4, 1, b"\x01" * 16), NodeKey(2, 7, RFC3394_KEK))
        new_path, root = member_update(path, lkh_wire.decode_update_array(UPDATE))
        self.assertEqual(root, NodeKey(ROOT, 5, RFC3394_KEY))
        self.assertEqual(new_path, path)

    def test_key_packets(self):
        """The LKH key packets: KD Type 3, the KEK SPI, one TLV attribute (1 download, 2 update); a KD holding
        one decodes back to it."""
        spi = bytes(range(1, 17))
        packet = lkh_wire.download_packet(spi, (NodeKey(9, 1, b"\x11" * 16), NodeKey(4, 2, b"\x22" * 16)))
        self.assertEqual(packet.encode(), bytes.fromhex(
            "03" "00" "0061" "10"  # KD Type LKH, RESERVED, KD Length 97 = 5 + 16 + 4 + 72, SPI Size 16
            "0102030405060708090a0b0c0d0e0f10"  # SPI: the KEK's
            "0001" "0048"  # LKH_DOWNLOAD_ARRAY (TLV), Length 72
        ) + DOWNLOAD)
        self.assertEqual(KD.decode_body(KD((packet,)).encode_body(CTX), CTX).key_packets, (packet,))
        update = lkh_wire.update_packet(spi, [LKHUpdate(ROOT, 5, 2, 7, RFC3394_WRAPPED)])
        self.assertEqual((update.kd_type, update.spi), (KeyPacketType.LKH, spi))
        self.assertEqual([(a.type, a.value) for a in update.attributes], [(LKHKeyAttr.LKH_UPDATE_ARRAY, UPDATE)])
        self.assertRaises(EncodeError, lkh_wire.update_packet, spi[:8], [LKHUpdate(ROOT, 5, 2, 7, RFC3394_WRAPPED)])


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(st.lists(node_keys, min_size=1, max_size=255).filter(lambda ks: len({len(k.key) for k in ks}) == 1))
    def test_download(self, path):
        """Any download array of 1 to 255 keys of one AES size decodes to what was encoded."""
        self.assertEqual(lkh_wire.decode_download_array(lkh_wire.encode_download_array(path)), tuple(path))

    @settings(max_examples=100, deadline=None)
    @given(st.sampled_from([16, 24, 32]).flatmap(lambda n: st.lists(updates_of(n), min_size=1, max_size=64)))
    def test_update(self, updates):
        """Any update array of wrapped keys of one AES size decodes to what was encoded."""
        self.assertEqual(lkh_wire.decode_update_array(lkh_wire.encode_update_array(updates)), tuple(updates))

    def test_encode_refusals(self):
        """No keys, more than 255, an LKH ID or Key Handle beyond 4 octets, a key of no AES size: EncodeError."""
        key = NodeKey(9, 1, b"\x11" * 16)
        self.assertRaises(EncodeError, lkh_wire.encode_download_array, [])
        self.assertRaises(EncodeError, lkh_wire.encode_download_array, [key] * 256)
        self.assertRaises(EncodeError, lkh_wire.encode_download_array, [key._replace(node=2**32)])
        self.assertRaises(EncodeError, lkh_wire.encode_download_array, [key._replace(version=-1)])
        self.assertRaises(EncodeError, lkh_wire.encode_download_array, [key._replace(key=b"\x11" * 20)])
        self.assertRaises(EncodeError, lkh_wire.encode_update_array, [LKHUpdate(1, 1, 2**32, 1, bytes(24))])
        self.assertRaises(EncodeError, lkh_wire.encode_update_array, [LKHUpdate(1, 1, 2, 1, bytes(16))])


class DecodeTests(SynchronousTestCase):
    def refused(self, data: bytes, decode=lkh_wire.decode_download_array) -> DecodeError:
        return self.assertRaises(DecodeError, decode, data)

    def test_refusals(self):
        """Short input, another LKH Version, RESERVED not zero, no keys, a length that does not split into the keys
        announced, a Key Type other than AES, an LKH ID 0, a key RESERVED not zero: DecodeError."""
        self.refused(b"\x01\x02")
        self.assertIn("Version", self.refused(b"\x02" + DOWNLOAD[1:]).reason)
        self.refused(DOWNLOAD[:2] + b"\x00\x01" + DOWNLOAD[4:])
        self.refused(b"\x01\x00\x00\x00")
        self.refused(DOWNLOAD[:1] + b"\x03" + DOWNLOAD[2:])
        self.refused(DOWNLOAD[:-1])
        wrong_type = self.refused(DOWNLOAD[:8] + b"\x02" + DOWNLOAD[9:])
        self.assertEqual(wrong_type.notify, NotifyType.INVALID_KEY_INFORMATION)
        self.refused(DOWNLOAD[:4] + bytes(4) + DOWNLOAD[8:])
        self.refused(DOWNLOAD[:9] + b"\x01" + DOWNLOAD[10:])
        self.refused(UPDATE[:22] + bytes(4) + UPDATE[26:], lkh_wire.decode_update_array)
        self.refused(DOWNLOAD, lkh_wire.decode_update_array)  # 38-octet entries hold no wrapped AES key
        self.refused(UPDATE[:1] + b"\x02" + UPDATE[2:], lkh_wire.decode_update_array)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300), st.sampled_from([lkh_wire.decode_download_array, lkh_wire.decode_update_array]))
    def test_total(self, data, decode):
        """Any octets either decode or raise DecodeError, nothing else."""
        try:
            decode(data)
        except DecodeError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, len(DOWNLOAD) - 1), st.integers(1, 255))
    def test_mutations(self, pos, xor):
        """A golden array with one octet changed decodes or raises DecodeError."""
        for golden, decode in ((DOWNLOAD, lkh_wire.decode_download_array), (UPDATE, lkh_wire.decode_update_array)):
            data = bytearray(golden)
            data[pos % len(golden)] ^= xor
            try:
                decode(bytes(data))
            except DecodeError:
                pass
