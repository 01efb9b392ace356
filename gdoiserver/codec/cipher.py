"""IKEv1 message encryption (RFC 2409 appendix B): CBC ciphers, padding and the chained IV.

Only the body of a message is encrypted.  The 28-octet header stays in clear, carries the Encryption flag, and its
Length counts the ciphertext, padding included (RFC 2408 section 3.1).

Padding.  RFC 2409 appendix B pads each message "up to the nearest block size using bytes containing 0x00".  We
write the fewest 0x00 octets that reach a multiple of the block size, none when the payloads already fill whole
blocks: that is the appendix's wording, and libreswan writes the same.  strongSwan's charon writes one to
block-size 0x00 octets (never none); racoon writes random octets whose last one counts them (the rule RFC 2409
section 5.3 gives for that method's encrypted payloads).  All of them read the payload chain up to Next Payload 0
and ignore what follows, as :func:`decrypt_message` does, so each reads what the others write.  For a peer that
strips padding by its last octet, set ``Message.padding = b"\\0"``: the body then ends in one to block-size 0x00
octets, the bytes charon writes.

The IV is chained per exchange (RFC 2409 appendix B).  Phase 1 starts from hash(g^xi | g^xr) and each message's
last ciphertext block is the next message's IV, whichever side sent it.  Each Phase 2 or Informational exchange
starts from hash(last Phase 1 CBC output block | M-ID) and chains the same way.  :class:`IVChain` holds that state
as a value: encrypting or decrypting returns the next chain and leaves the old one as it was.

Retransmissions must not advance a chain twice.  Adopt the chain that :meth:`IVChain.decrypt` returns only once
the message is accepted (its HASH checked): a message that fails leaves the held chain alone.  When a peer resends
the datagram last accepted (the same octets), resend the stored reply without decrypting it again.  If it must be
decrypted again, use the chain held before it, kept with the stored reply; the chain that returns is the one
already adopted, so drop it.  Our own retransmissions resend the stored datagram; never encrypt a message again
with a chain that has moved on.
"""

import struct

import attrs
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

try:  # cryptography 43 and later keep 3DES among the "decrepit" algorithms
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover (cryptography 42)
    TripleDES = algorithms.TripleDES

from gdoiserver.codec.constants import DOI, Flags, NotifyType, OakleyEncryption
from gdoiserver.codec.errors import DecodeError, EncodeError
from gdoiserver.codec.message import Message
from gdoiserver.codec.payload import Context
from gdoiserver.crypto.prf import hash_algorithm as _hash_algorithm


class UnsupportedCipher(ValueError):
    """An Oakley encryption algorithm or key length that this module does not implement.

    Raised when a cipher is chosen (negotiation or configuration), never while decoding bytes.  An unsupported
    hash raises :class:`gdoiserver.crypto.errors.UnsupportedHash`, also a ValueError.
    """


@attrs.frozen
class CipherSpec:
    """One Oakley encryption algorithm in CBC mode, with its key and block sizes in octets."""

    encryption_algorithm: int
    key_size: int
    block_size: int
    name: str
    _algorithm: type = attrs.field(repr=False)

    def _cipher(self, key: bytes, iv: bytes) -> Cipher:
        if len(key) != self.key_size:
            raise ValueError(f"{self.name} needs a {self.key_size}-octet key, not {len(key)} octets")
        if len(iv) != self.block_size:
            raise ValueError(f"{self.name} needs a {self.block_size}-octet IV, not {len(iv)} octets")
        return Cipher(self._algorithm(key), modes.CBC(iv))

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes) -> bytes:
        """CBC-encrypt ``plaintext``, already padded to whole blocks."""
        if len(plaintext) % self.block_size:
            raise ValueError(f"{len(plaintext)} octets is not a whole number of {self.block_size}-octet blocks")
        encryptor = self._cipher(key, iv).encryptor()
        return encryptor.update(plaintext) + encryptor.finalize()

    def decrypt(self, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
        """CBC-decrypt ``ciphertext``; anything but one or more whole blocks is PAYLOAD-MALFORMED."""
        if not ciphertext or len(ciphertext) % self.block_size:
            raise DecodeError(
                NotifyType.PAYLOAD_MALFORMED,
                f"{len(ciphertext)} octets of ciphertext is not a whole number of {self.block_size}-octet blocks",
            )
        decryptor = self._cipher(key, iv).decryptor()
        return decryptor.update(ciphertext) + decryptor.finalize()


_AES = OakleyEncryption.AES_CBC
_3DES = OakleyEncryption.TRIPLEDES_CBC

#: (Oakley encryption algorithm, Key Length in bits) -> cipher (RFC 2409 appendix A, RFC 3602 section 5).
CIPHERS: dict[tuple[int, int], CipherSpec] = {
    (_AES, 128): CipherSpec(_AES, 16, 16, "AES-CBC-128", algorithms.AES),
    (_AES, 192): CipherSpec(_AES, 24, 16, "AES-CBC-192", algorithms.AES),
    (_AES, 256): CipherSpec(_AES, 32, 16, "AES-CBC-256", algorithms.AES),
    (_3DES, 192): CipherSpec(_3DES, 24, 8, "3DES-CBC", TripleDES),
}


def cipher_for(encryption_algorithm: int, key_length: int | None = None) -> CipherSpec:
    """The cipher named by a Phase 1 Encryption Algorithm attribute and its Key Length attribute (in bits)."""
    if encryption_algorithm == OakleyEncryption.DES_CBC:
        raise UnsupportedCipher("DES-CBC (Oakley encryption algorithm 1) is not supported: its 56-bit key is broken")
    if key_length is None:
        if encryption_algorithm == _AES:
            raise UnsupportedCipher("AES-CBC needs a Key Length attribute (RFC 3602 section 5.3)")
        if encryption_algorithm == _3DES:
            key_length = 192  # a fixed-length cipher: no Key Length attribute
    spec = CIPHERS.get((encryption_algorithm, key_length))
    if spec is None:
        raise UnsupportedCipher(f"Oakley encryption algorithm {encryption_algorithm} with key length {key_length}")
    return spec


def phase1_iv(hash_algorithm: int, gxi: bytes, gxr: bytes, block_size: int) -> bytes:
    """The IV of the first encrypted Phase 1 message: hash(g^xi | g^xr), truncated to the block size.

    ``gxi`` and ``gxr`` are the Key Exchange Data of the initiator's and the responder's KE payloads as sent.
    """
    return _hash_algorithm(hash_algorithm).hash(gxi, gxr)[:block_size]


def phase2_iv(hash_algorithm: int, last_phase1_block: bytes, message_id: int, block_size: int) -> bytes:
    """The IV of the first message of a Phase 2 or Informational exchange: hash(last Phase 1 CBC output block |
    M-ID), truncated to the block size; the M-ID is the header's four octets in network order."""
    return _hash_algorithm(hash_algorithm).hash(last_phase1_block, struct.pack("!I", message_id))[:block_size]


def pad(body: bytes, block_size: int) -> bytes:
    """``body`` followed by the fewest 0x00 octets that make it whole blocks (RFC 2409 appendix B)."""
    return body + bytes(-len(body) % block_size)


def encrypt_message(
    message: Message, key: bytes, iv: bytes, cipher: CipherSpec, ctx: Context | None = None
) -> tuple[bytes, bytes]:
    """The datagram for ``message`` with its body encrypted, and the IV of the next message (its last block).

    The body is the payload chain plus ``message.padding``, padded with 0x00 to whole blocks; the header gets the
    Encryption flag.
    """
    if message.ciphertext is not None:
        raise ValueError("the message still holds ciphertext: decrypt it before encrypting it again")
    if not message.payloads:
        raise EncodeError("an encrypted message needs at least one payload")
    ciphertext = cipher.encrypt(key, iv, pad(message.body(ctx), cipher.block_size))
    header = attrs.evolve(message, flags=int(message.flags | Flags.ENCRYPTION)).header_bytes(len(ciphertext))
    return header + ciphertext, ciphertext[-cipher.block_size :]


def decrypt_message(
    message: Message, key: bytes, iv: bytes, cipher: CipherSpec, doi: int = DOI.IPSEC, ctx: Context | None = None
) -> tuple[Message, bytes]:
    """``message`` (as :func:`decode_message` returned it) with its body decrypted and decoded, and the IV of
    the next message.  The chain ends at Next Payload 0; what follows is kept in ``padding``.

    Bytes that do not decrypt to a payload chain raise :class:`DecodeError` and nothing else.
    """
    if message.ciphertext is None:
        raise ValueError("the message holds no ciphertext: its Encryption flag is clear or it was decrypted")
    plaintext = cipher.decrypt(key, iv, message.ciphertext)
    return message.with_plaintext(plaintext, doi, ctx), message.ciphertext[-cipher.block_size :]


@attrs.frozen
class IVChain:
    """The CBC state of one exchange under an ISAKMP SA (RFC 2409 appendix B): the cipher, key and next IV.

    A value: :meth:`encrypt` and :meth:`decrypt` return the chain for the message after, and ``self`` stays the
    chain for this one (see the module notes on retransmissions).  ``key`` is left out of the repr.
    """

    cipher: CipherSpec
    key: bytes = attrs.field(repr=False)
    hash_algorithm: int
    iv: bytes

    def __attrs_post_init__(self):
        if len(self.key) != self.cipher.key_size:
            raise ValueError(f"{self.cipher.name} needs a {self.cipher.key_size}-octet key, not {len(self.key)}")
        if len(self.iv) != self.cipher.block_size:
            raise ValueError(f"{self.cipher.name} needs a {self.cipher.block_size}-octet IV, not {len(self.iv)}")
        _hash_algorithm(self.hash_algorithm)  # an unsupported hash raises UnsupportedHash here, not later

    @classmethod
    def phase1(cls, cipher: CipherSpec, key: bytes, hash_algorithm: int, gxi: bytes, gxr: bytes) -> "IVChain":
        """The Phase 1 chain, before its first encrypted message."""
        return cls(cipher, key, hash_algorithm, phase1_iv(hash_algorithm, gxi, gxr, cipher.block_size))

    def for_message_id(self, message_id: int) -> "IVChain":
        """The chain of the Phase 2 or Informational exchange ``message_id``.

        Call it on the Phase 1 chain as it stands after the last Phase 1 message, whose IV is then the last
        Phase 1 CBC output block.  Each M-ID has a chain of its own.
        """
        if not 0 < message_id <= 0xFFFFFFFF:
            raise ValueError(f"message ID {message_id}: Phase 2 uses a non-zero 32-bit M-ID (0 is Phase 1)")
        return attrs.evolve(self, iv=phase2_iv(self.hash_algorithm, self.iv, message_id, self.cipher.block_size))

    def encrypt(self, message: Message, ctx: Context | None = None) -> tuple[bytes, "IVChain"]:
        """The datagram for ``message`` and the chain for the next message."""
        data, next_iv = encrypt_message(message, self.key, self.iv, self.cipher, ctx)
        return data, attrs.evolve(self, iv=next_iv)

    def decrypt(self, message: Message, doi: int = DOI.IPSEC, ctx: Context | None = None) -> tuple[Message, "IVChain"]:
        """``message`` decrypted and decoded, and the chain for the next message; raises only DecodeError."""
        decrypted, next_iv = decrypt_message(message, self.key, self.iv, self.cipher, doi, ctx)
        return decrypted, attrs.evolve(self, iv=next_iv)
