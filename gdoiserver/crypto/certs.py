"""X.509 credentials, chain validation and IKEv1 signatures (RFC 2409 section 5.1, RFC 4754, RFC 4945).

Signature authentication in Main and Aggressive Mode signs HASH_I (initiator) or HASH_R (responder)
(RFC 2409 section 5.1).  What the SIG payload holds, as strongSwan (charon's pubkey_v1_authenticator.c and
keymat_v1.c) and libreswan (pluto's raw RSA signer) build it:

- RSA signatures (auth method 3): the raw HASH in an EMSA-PKCS1-v1_5 block of type 1 *without* a DigestInfo,
  ``00 01 FF..FF 00 || HASH`` (strongSwan's ``SIGN_RSA_EMSA_PKCS1_NULL``, libreswan's ``PK11_Sign`` on the bare
  hash), put through the RSA private operation; as long as the modulus.
- ECDSA (auth methods 9, 10, 11; RFC 4754 pairs ECDSA-256/384/521 with SHA-256/384/512): HASH_I and
  HASH_R are computed with HMAC-SHA-256/384/512 as prf, whatever hash the proposal negotiated (SKEYID and the
  other keys still use the negotiated one), and that HASH is signed as it is, as the ECDSA message digest, with no
  second hashing (strongSwan's ``SIGN_ECDSA_WITH_NULL``).  :func:`hash_for_auth` gives the prf to use.  The
  signature is r | s, each as long as the curve's field (32, 48, 66 octets; RFC 4754 section 7).

Chain validation uses ``cryptography.x509.verification`` with the extension rules of RFC 5280 and RFC 4945
section 5 rather than the Web PKI's, then checks each certificate of the chain against the CRLs of its issuer that
the :class:`TrustStore` holds (RFC 5280 section 6.3, RFC 4945 section 5.2).  A CRL must be signed by that issuer
and current; an issuer without a configured CRL is not checked for revocation.  The ID payload is matched against
subjectAltName with ``service_identity`` (DNS, IP) and here (rfc822Name, subject DN).
"""

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path

import attrs
import service_identity
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    NoDigestInfo,
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509 import verification
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.error import PyAsn1Error
from pyasn1_modules import rfc5280
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

from gdoiserver.codec.constants import CertEncoding, IDType, NotifyType, OakleyAuth, OakleyHash
from gdoiserver.codec.payloads import Certificate, CertificateRequest, Identification
from gdoiserver.crypto.errors import CryptoError
from gdoiserver.crypto.prf import HashAlgorithm, hash_algorithm

#: ECDSA authentication methods: the curve of the key and the hash (RFC 4754).
_ECDSA = {
    OakleyAuth.ECDSA_SHA256_P256: (ec.SECP256R1, hashes.SHA256, OakleyHash.SHA2_256),
    OakleyAuth.ECDSA_SHA384_P384: (ec.SECP384R1, hashes.SHA384, OakleyHash.SHA2_384),
    OakleyAuth.ECDSA_SHA512_P521: (ec.SECP521R1, hashes.SHA512, OakleyHash.SHA2_512),
}
_CURVE_AUTH = {curve.name: auth for auth, (curve, _, _) in _ECDSA.items()}

#: Bounds on what a peer may make chain building do.
MAX_CHAIN_DEPTH = 8
MAX_INTERMEDIATES = 16

#: Key file permission bits beyond 0600 (any group or other access, or owner execute) that are refused.
_KEY_MODE_FORBIDDEN = 0o7177


class CredentialsError(CryptoError, ValueError):
    """Our own certificate or private key cannot be used: unreadable, too open, mismatched or unsupported."""


class CertificateError(CryptoError, ValueError):
    """A peer certificate that must be refused, with the Notify to answer it (RFC 2408 sections 3.14.1, 5.9)."""

    def __init__(self, notify: NotifyType, reason: str):
        super().__init__(notify, reason)
        self.notify = notify
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.notify.name}: {self.reason}"


# Credentials and trust anchors.


def _check_private_key(key) -> None:
    if isinstance(key, rsa.RSAPrivateKey):
        return
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _CURVE_AUTH:
        return
    raise CredentialsError(f"unsupported private key type {type(key).__name__}: RSA or ECDSA P-256/384/521")


@attrs.frozen
class Credentials:
    """Our certificate, the intermediate CA certificates sent after it, and its private key (never in a repr)."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = attrs.field(converter=tuple)
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = attrs.field(repr=False)

    def __attrs_post_init__(self):
        _check_private_key(self.private_key)
        if self.private_key.public_key() != self.certificate.public_key():
            raise CredentialsError("the private key does not belong to the certificate")

    @property
    def auth_method(self) -> OakleyAuth:
        """The authentication method this key signs with: RSA signatures, or ECDSA for the key's curve."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return OakleyAuth.RSA_SIGNATURES
        return _CURVE_AUTH[self.private_key.curve.name]

    @classmethod
    def load(cls, cert_path, key_path, chain_paths=()) -> "Credentials":
        """Read PEM or DER files.  Further certificates in ``cert_path`` join the chain, before ``chain_paths``.

        The key file must be mode 0600 or stricter; an encrypted key is refused.
        """
        certs = _read_certificates(cert_path)
        chain = certs[1:] + [c for path in chain_paths for c in _read_certificates(path)]
        return cls(certs[0], tuple(chain), _read_private_key(key_path))


@attrs.frozen
class TrustStore:
    """The CA certificates that peer certificates must chain to, and the CRLs their issuers published.

    Each CRL is checked as it is added (:func:`check_crl`): one that names a CA of ``certificates`` must be signed by
    it.  A CRL of an intermediate CA (which the peer sends) is checked against it when a chain is validated.
    """

    certificates: tuple[x509.Certificate, ...] = attrs.field(converter=tuple)
    crls: tuple[x509.CertificateRevocationList, ...] = attrs.field(default=(), converter=tuple)
    _store: verification.Store | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self):
        for crl in self.crls:
            check_crl(crl, self.certificates)
        object.__setattr__(self, "_store", verification.Store(list(self.certificates)) if self.certificates else None)

    @classmethod
    def load(cls, paths: Iterable, crl_paths: Iterable = ()) -> "TrustStore":
        """Every certificate in the given PEM (one or more certificates each) or DER files, and every CRL in
        ``crl_paths`` (PEM, one or more CRLs each, or DER)."""
        crls = tuple(c for path in crl_paths for c in read_crls(path))
        return cls(tuple(c for path in paths for c in _read_certificates(path)), crls)

    def with_crls(self, path) -> "TrustStore":
        """This store with the CRLs of the PEM or DER file ``path`` added; ``CredentialsError`` names the file when
        one of them cannot be used."""
        added = read_crls(path)
        try:
            return TrustStore(self.certificates, self.crls + tuple(added))
        except CredentialsError as e:
            raise CredentialsError(f"{path}: {e}") from None


def _read_certificates(path) -> list[x509.Certificate]:
    data = Path(path).read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CredentialsError(f"{path}: not a PEM or DER X.509 certificate") from None


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----", re.S)


def read_crls(path) -> list[x509.CertificateRevocationList]:
    """The CRLs of a PEM file (one or more) or a DER file (one), each checked by :func:`check_crl`."""
    data = Path(path).read_bytes()
    try:
        if b"-----BEGIN" in data:
            crls = [x509.load_pem_x509_crl(block) for block in _PEM_CRL.findall(data)]
            if not crls:
                raise ValueError("no X509 CRL block")
        else:
            crls = [x509.load_der_x509_crl(data)]
    except ValueError:
        raise CredentialsError(f"{path}: not a PEM or DER X.509 CRL") from None
    try:
        for crl in crls:
            check_crl(crl)
    except CredentialsError as e:
        raise CredentialsError(f"{path}: {e}") from None
    return crls


def _crl_issuer(crl: x509.CertificateRevocationList) -> str:
    return crl.issuer.rfc4514_string()


def check_crl(crl: x509.CertificateRevocationList, anchors: Iterable[x509.Certificate] = ()) -> None:
    """Refuse (``CredentialsError``) a CRL this module cannot apply as its issuer meant it.

    It must name its next update (RFC 5280 section 5.1.2.5), carry no critical extension (a delta CRL, or a CRL
    whose issuing distribution point narrows its scope or makes it indirect, RFC 5280 sections 5.2.4, 5.2.5, 5.3.3,
    would be read wrong), and, when a CA of ``anchors`` has its issuer's name, be signed by that CA.
    """
    issuer = _crl_issuer(crl)
    if crl.next_update_utc is None:
        raise CredentialsError(f"the CRL of {issuer} has no nextUpdate (RFC 5280 section 5.1.2.5)")
    try:
        critical = [e.oid.dotted_string for e in crl.extensions if e.critical]
        critical += [e.oid.dotted_string for entry in crl for e in entry.extensions if e.critical]
    except (ValueError, x509.DuplicateExtension) as e:
        raise CredentialsError(f"the CRL of {issuer} has malformed extensions: {e}") from None
    if critical:
        raise CredentialsError(f"the CRL of {issuer} has critical extensions {', '.join(sorted(set(critical)))}: "
                               "delta, partitioned and indirect CRLs are not supported")
    named = [a for a in anchors if a.subject == crl.issuer]
    if named and not any(_signed_crl(crl, a) for a in named):
        raise CredentialsError(f"the CRL of {issuer} is not signed by the CA certificate of that name "
                               "(or its keyUsage lacks cRLSign)")


def _signed_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` may sign CRLs (keyUsage cRLSign when present, RFC 5280 section 6.3.3 (f)) and signed
    ``crl``."""
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.crl_sign:
            return False
    except x509.ExtensionNotFound:
        pass
    try:
        return crl.is_signature_valid(issuer.public_key())
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


def _read_private_key(path):
    fd = os.open(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & _KEY_MODE_FORBIDDEN:
            raise CredentialsError(
                f"private key file {path} has mode {mode & 0o7777:04o}: it must be 0600 or stricter (chmod 600 {path})"
            )
        data = f.read()
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise CredentialsError(f"private key file {path} is encrypted; give it unencrypted, mode 0600") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CredentialsError(f"private key file {path}: not a PEM or DER private key") from None
    _check_private_key(key)
    return key


# Signatures.


def hash_for_auth(auth_method: int, negotiated: HashAlgorithm) -> HashAlgorithm:
    """The hash whose HMAC computes HASH_I and HASH_R for ``auth_method``.

    SHA-256/384/512 for the ECDSA methods (RFC 4754's pairing, as strongSwan applies it to IKEv1: seen in its
    keymat_v1.c and in a live exchange); the negotiated hash otherwise.
    """
    if auth_method in _ECDSA:
        return hash_algorithm(_ECDSA[auth_method][2])
    return negotiated


def _field_size(curve: ec.EllipticCurve) -> int:
    return (curve.key_size + 7) // 8


def sign(credentials: Credentials, auth_method: int, hash_bytes: bytes) -> bytes:
    """The SIG payload data for HASH_I or HASH_R (module docstring gives the formats).

    The RSA form uses ``cryptography``'s PKCS1v15 signing with ``NoDigestInfo``: OpenSSL pads ``00 01 FF..FF 00 ||
    hash`` and runs its own RSA private operation (blinded, constant time, CRT result checked), which is sound
    where a Python ``pow`` with the private exponent would leak it through timing.  ECDSA signs ``hash_bytes`` as
    an already computed digest (``Prehashed``) and re-encodes the DER signature as r | s.
    Raises ``CredentialsError`` when the key does not fit ``auth_method``.
    """
    key = credentials.private_key
    if auth_method == OakleyAuth.RSA_SIGNATURES:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise CredentialsError("RSA signature authentication needs an RSA key")
        return key.sign(hash_bytes, padding.PKCS1v15(), NoDigestInfo())
    if auth_method in _ECDSA:
        curve, hash_cls, _ = _ECDSA[auth_method]
        if not (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == curve.name):
            raise CredentialsError(f"{OakleyAuth(auth_method).name} needs an ECDSA key on {curve.name}")
        _check_digest_length(hash_bytes, hash_cls)
        r, s = decode_dss_signature(key.sign(hash_bytes, ec.ECDSA(Prehashed(hash_cls()))))
        size = _field_size(key.curve)
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise CredentialsError(f"authentication method {auth_method} is not a supported signature method")


def _check_digest_length(hash_bytes: bytes, hash_cls) -> None:
    if len(hash_bytes) != hash_cls.digest_size:
        raise ValueError(
            f"ECDSA with {hash_cls.name} signs a {hash_cls.digest_size}-octet HASH, not {len(hash_bytes)} octets "
            "(compute HASH_I/HASH_R with hash_for_auth)"
        )


def verify(certificate: x509.Certificate, auth_method: int, hash_bytes: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (SIG payload data) signs ``hash_bytes`` with the certificate's key.

    False, never an exception, for a bad or malformed signature, a key of the wrong type or curve for
    ``auth_method``, or a method that is not RSA or ECDSA signatures.  An ECDSA ``hash_bytes`` of the wrong length
    is the caller's mistake and raises ``ValueError``.
    """
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return False
    if auth_method == OakleyAuth.RSA_SIGNATURES:
        if not isinstance(key, rsa.RSAPublicKey) or len(signature) != (key.key_size + 7) // 8:
            return False
        return _holds(key.verify, signature, hash_bytes, padding.PKCS1v15(), NoDigestInfo())
    if auth_method in _ECDSA:
        curve, hash_cls, _ = _ECDSA[auth_method]
        if not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == curve.name):
            return False
        _check_digest_length(hash_bytes, hash_cls)
        size = _field_size(key.curve)
        if len(signature) != 2 * size:
            return False
        der = encode_dss_signature(int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big"))
        return _holds(key.verify, der, hash_bytes, ec.ECDSA(Prehashed(hash_cls())))
    return False


def _holds(check, *args) -> bool:
    try:
        check(*args)
    except (InvalidSignature, ValueError):
        return False
    return True


# Chain validation (RFC 5280 section 6 with RFC 4945 section 5's extension rules).


def _ca_key_usage(policy, cert, key_usage) -> None:
    if key_usage is not None and not key_usage.key_cert_sign:
        raise ValueError("keyUsage of a CA certificate lacks keyCertSign (RFC 5280 section 4.2.1.3)")


def _ee_key_usage(policy, cert, key_usage) -> None:
    if key_usage is not None and not (key_usage.digital_signature or key_usage.content_commitment):
        raise ValueError("keyUsage lacks digitalSignature and nonRepudiation (RFC 4945 section 5.1.3.2)")


# Issuers need basicConstraints with cA (the chain builder checks cA and pathLenConstraint itself); extended key
# usage is not checked (RFC 4945 section 5.1.3.12), nor is a subjectAltName required (an ID may be a DN).
_CA_POLICY = (
    verification.ExtensionPolicy.permit_all()
    .require_present(x509.BasicConstraints, verification.Criticality.AGNOSTIC, None)
    .may_be_present(x509.KeyUsage, verification.Criticality.AGNOSTIC, _ca_key_usage)
)
_EE_POLICY = verification.ExtensionPolicy.permit_all().may_be_present(
    x509.KeyUsage, verification.Criticality.AGNOSTIC, _ee_key_usage
)


def _as_utc(now) -> datetime.datetime:
    utc = datetime.timezone.utc
    if isinstance(now, datetime.datetime):
        return now.replace(tzinfo=utc) if now.tzinfo is None else now.astimezone(utc)
    return datetime.datetime.fromtimestamp(now, tz=utc)


def _name_path_to_anchor(trust: TrustStore, certificate: x509.Certificate, intermediates) -> bool:
    """Whether issuer names lead from ``certificate`` through ``intermediates`` to a trust anchor's subject."""
    anchors = {c.subject for c in trust.certificates}
    names, frontier = set(), {certificate.issuer}
    while frontier - names:
        names |= frontier
        if names & anchors:
            return True
        frontier = {c.issuer for c in intermediates if c.subject in names}
    return False


def validate_chain(trust: TrustStore, certificate: x509.Certificate, intermediates, now) -> x509.Certificate:
    """Validate ``certificate`` up to a trust anchor at ``now`` (a datetime, naive meaning UTC, or epoch seconds).

    Checks signatures, validity periods, basicConstraints cA and pathLenConstraint and keyUsage of the issuers, the
    key usage of ``certificate``, and the CRLs of ``trust`` (:func:`check_revocation`).  Returns ``certificate``.
    Raises ``CertificateError`` with INVALID_CERT_AUTHORITY when no configured CA issued the chain,
    INVALID_CERTIFICATE for anything else.
    """
    try:
        return _validate_chain(trust, certificate, intermediates, now)
    except CertificateError:
        raise
    except (ValueError, KeyError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
        # cryptography parses a certificate lazily: a subject, issuer or extension that does not parse raises
        # only when it is read (found by fuzzing, docs/security.md F3).
        raise CertificateError(NotifyType.INVALID_CERTIFICATE,
                               f"a certificate of the chain does not parse: {type(e).__name__}") from None


def _validate_chain(trust: TrustStore, certificate: x509.Certificate, intermediates, now) -> x509.Certificate:
    when = _as_utc(now)
    intermediates = list(intermediates)
    subject = certificate.subject.rfc4514_string()
    if trust._store is None:
        raise CertificateError(NotifyType.INVALID_CERT_AUTHORITY, "no CA certificates are configured")
    if len(intermediates) > MAX_INTERMEDIATES:
        raise CertificateError(NotifyType.INVALID_CERTIFICATE, f"more than {MAX_INTERMEDIATES} intermediates")
    if when < certificate.not_valid_before_utc:
        reason = f"certificate {subject} is not valid before {certificate.not_valid_before_utc}"
        raise CertificateError(NotifyType.INVALID_CERTIFICATE, reason)
    if when > certificate.not_valid_after_utc:
        reason = f"certificate {subject} expired at {certificate.not_valid_after_utc}"
        raise CertificateError(NotifyType.INVALID_CERTIFICATE, reason)
    verifier = (
        verification.PolicyBuilder()
        .store(trust._store)
        .time(when)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(certificate, intermediates)
    except verification.VerificationError as e:
        if not _name_path_to_anchor(trust, certificate, intermediates):
            raise CertificateError(
                NotifyType.INVALID_CERT_AUTHORITY,
                f"no configured CA issued {subject} (issuer {certificate.issuer.rfc4514_string()})",
            ) from None
        raise CertificateError(NotifyType.INVALID_CERTIFICATE, f"chain of {subject} does not validate: {e}") from None
    check_revocation(trust, verified.chain, when)
    return certificate


def check_revocation(trust: TrustStore, chain, now) -> None:
    """Check each certificate of ``chain`` (the end entity first, the trust anchor last) against the CRLs of its
    issuer in ``trust`` (RFC 5280 section 6.3.3).

    An issuer without CRLs is not checked.  Where there are some, one must be signed by the issuer, and the newest
    of those must be current at ``now``: else the revocation status is unknown, and the certificate is refused.  A
    certificate listed in any of them is refused.  Every refusal is ``CertificateError`` INVALID_CERTIFICATE: IKEv1
    has no Notify for revocation (RFC 2408 section 3.14.1).
    """
    when = _as_utc(now)
    chain = list(chain)
    for cert, issuer in zip(chain, chain[1:]):
        crls = [c for c in trust.crls if c.issuer == issuer.subject]
        if not crls:
            continue
        subject, name = cert.subject.rfc4514_string(), issuer.subject.rfc4514_string()
        signed = [c for c in crls if _signed_crl(c, issuer)]
        if not signed:
            raise CertificateError(NotifyType.INVALID_CERTIFICATE, f"no CRL of {name} is signed by its key: the "
                                   f"revocation status of {subject} is unknown")
        newest = max(signed, key=lambda c: c.last_update_utc)
        if when < newest.last_update_utc:
            raise CertificateError(NotifyType.INVALID_CERTIFICATE, f"the CRL of {name} is not valid before "
                                   f"{newest.last_update_utc}: the revocation status of {subject} is unknown")
        if when > newest.next_update_utc:
            raise CertificateError(NotifyType.INVALID_CERTIFICATE, f"the CRL of {name} expired at "
                                   f"{newest.next_update_utc}: the revocation status of {subject} is unknown")
        for crl in signed:
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                raise CertificateError(NotifyType.INVALID_CERTIFICATE, f"certificate {subject} (serial "
                                       f"{cert.serial_number:x}) was revoked by {name} at "
                                       f"{entry.revocation_date_utc}{_revocation_reason(entry)}")


def _revocation_reason(entry: x509.RevokedCertificate) -> str:
    try:
        return f", reason {entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value}"
    except x509.ExtensionNotFound:
        return ""


# The ID payload against the certificate (RFC 4945 section 5.1.2).


def identity_matches(certificate: x509.Certificate, ident: Identification) -> bool:
    """Whether the ID payload names the certificate's subject.

    ID_FQDN: a DNS subjectAltName (service_identity, wildcards as RFC 6125); ID_IPV4_ADDR/ID_IPV6_ADDR: an IP
    address subjectAltName; ID_USER_FQDN: an rfc822Name, the local part exact and the domain case-insensitive;
    ID_DER_ASN1_DN: the subject DN, equal in DER or after RFC 5280 section 7.1 style normalization (case and
    whitespace folded).  Any other ID type, or malformed ID data, does not match.
    """
    t, data = ident.id_type, ident.data
    try:
        if t == IDType.FQDN:
            verify_certificate_hostname(certificate, data.decode("ascii"))
            return True
        if t in (IDType.IPV4_ADDR, IDType.IPV6_ADDR):
            verify_certificate_ip_address(certificate, str(ipaddress.ip_address(data)))
            return True
    except (service_identity.VerificationError, service_identity.CertificateError, ValueError):
        return False
    if t == IDType.USER_FQDN:
        return _email_matches(certificate, data)
    if t == IDType.DER_ASN1_DN:
        return _dn_matches(certificate.subject, data)
    return False


def _split_email(address: str) -> tuple[str, str] | None:
    local, at, domain = address.rpartition("@")
    return (local, domain.lower()) if at and local and domain else None


def _email_matches(certificate: x509.Certificate, data: bytes) -> bool:
    try:
        wanted = _split_email(data.decode("ascii"))
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (UnicodeDecodeError, x509.ExtensionNotFound):
        return False
    return wanted is not None and any(_split_email(e) == wanted for e in san.get_values_for_type(x509.RFC822Name))


def _fold(value) -> str | bytes:
    return " ".join(value.split()).casefold() if isinstance(value, str) else value


def _normalized_name(rdns) -> tuple[frozenset, ...]:
    """A DN as a sequence of RDNs, each a set of (attribute type OID, value with case and spaces folded)."""
    return tuple(frozenset((str(oid), _fold(value)) for oid, value in rdn) for rdn in rdns)


def _decode_dn(data: bytes) -> tuple[frozenset, ...] | None:
    try:
        name, rest = der_decoder.decode(data, asn1Spec=rfc5280.Name())
        if rest:
            return None
        rdns = []
        for rdn in name["rdnSequence"]:
            atvs = []
            for atv in rdn:
                value, rest = der_decoder.decode(bytes(atv["value"]))
                if rest:
                    return None
                atvs.append((atv["type"], str(value) if hasattr(value, "encoding") else bytes(atv["value"])))
            rdns.append(atvs)
        return _normalized_name(rdns)
    except (PyAsn1Error, UnicodeError, ValueError):
        return None


def _dn_matches(subject: x509.Name, data: bytes) -> bool:
    if subject.public_bytes() == data:
        return True
    wanted = _decode_dn(data)
    ours = _normalized_name([(a.oid.dotted_string, a.value) for a in rdn] for rdn in subject.rdns)
    return wanted is not None and wanted == ours


# CERT and CR payloads (RFC 2408 sections 3.9, 3.10, 5.9).


def certificate_payload(certificate: x509.Certificate) -> Certificate:
    """A CERT payload with the DER certificate, encoding 4 (X.509 Certificate - Signature)."""
    return Certificate(CertEncoding.X509_SIGNATURE, certificate.public_bytes(serialization.Encoding.DER))


def certificate_request(trust: TrustStore) -> tuple[CertificateRequest, ...]:
    """One CR payload per trust anchor: encoding 4 and the DER DN of the CA, as strongSwan sends them."""
    authorities = dict.fromkeys(c.subject.public_bytes() for c in trust.certificates)
    return tuple(CertificateRequest(CertEncoding.X509_SIGNATURE, dn) for dn in authorities)


def certificates_from_payloads(payloads) -> tuple[x509.Certificate, ...]:
    """The X.509 certificates of the CERT payloads among ``payloads``, in message order (the peer's first).

    CERT payloads of other encodings are skipped (RFC 2408 section 5.9 discards them); when CERT payloads were
    present but none was X.509, ``CertificateError`` CERT_TYPE_UNSUPPORTED.  Undecodable certificate data raises
    INVALID_CERTIFICATE.  No CERT payload at all gives an empty tuple.
    """
    found, skipped = [], 0
    for p in payloads:
        if not isinstance(p, Certificate):
            continue
        if p.encoding != CertEncoding.X509_SIGNATURE:
            skipped += 1
            continue
        try:
            found.append(x509.load_der_x509_certificate(p.data))
        except (ValueError, x509.InvalidVersion):  # a version 4 or later certificate raises InvalidVersion
            reason = "CERT payload data is not a DER X.509 certificate"
            raise CertificateError(NotifyType.INVALID_CERTIFICATE, reason) from None
    if skipped and not found:
        raise CertificateError(NotifyType.CERT_TYPE_UNSUPPORTED, "no CERT payload with an X.509 signature certificate")
    return tuple(found)
