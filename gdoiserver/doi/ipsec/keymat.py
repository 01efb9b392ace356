"""Quick Mode keying material per IPsec SA (RFC 2409 section 5.5).

KEYMAT = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b), expanded K1 | K2 | ... (``crypto.keys.keymat``)
with the SPI its *receiver* chose: the responder's SPI keys what the initiator sends, the initiator's what the
responder sends.  Each direction's KEYMAT is cut into the cipher key (with its salt or nonce) and then the
integrity key (see :mod:`gdoiserver.doi.ipsec.algorithms`).
"""

import attrs

from gdoiserver.crypto.keys import keymat
from gdoiserver.crypto.prf import HashAlgorithm
from gdoiserver.doi.ipsec.proposals import Suite


@attrs.frozen
class DirectionKeys:
    """The keys of one direction; never shown by repr."""

    encryption: bytes = attrs.field(repr=False)
    integrity: bytes = attrs.field(repr=False)


def derive(h: HashAlgorithm, skeyid_d: bytes, suite: Suite, spi: bytes, ni_b: bytes, nr_b: bytes,
           g_qm_xy: bytes = b"") -> DirectionKeys:
    """The keys of the SA whose receiver chose ``spi``; ``g_qm_xy`` is the PFS shared secret (empty without)."""
    enc, integ = suite.keymat_sizes()
    material = keymat(h, skeyid_d, suite.protocol, spi, ni_b, nr_b, enc + integ, g_qm_xy)
    return DirectionKeys(material[:enc], material[enc:])
