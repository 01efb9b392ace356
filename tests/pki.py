"""A throwaway PKI for tests: CA, intermediate and end-entity certificates built with ``cryptography``.

Keys are made once per process and kind (``key("rsa2048")``, ``key("p256", 1)``...), since RSA key generation is
the slow part.  Certificates are cheap and made fresh by :func:`issue`.  Every certificate is valid around
:data:`NOW`, which tests pass to chain validation as the current time.

The refused kinds of the authentication matrix come from :func:`expired`, :func:`not_yet_valid` and
:func:`revoke` (an end entity and the CRL of its issuer that lists it); :func:`crl` makes any CRL (expired, not
yet valid, forged) and :func:`write_crls` writes them.
"""

import datetime
import functools
import ipaddress
import os

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

#: The "current time" of every test that validates a chain.
NOW = datetime.datetime(2030, 6, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)

KINDS = ("rsa2048", "p256", "p384", "p521")
_CURVES = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}

CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip
EE_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
)  # fmt: skip


@functools.lru_cache(maxsize=None)
def key(kind: str, slot: int = 0):
    """A private key of ``kind`` (one of :data:`KINDS`); the same (kind, slot) gives the same key in a process."""
    if kind == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(_CURVES[kind]())


def name(common_name: str, organization: str = "gdoiserver tests") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def san(*values) -> list[x509.GeneralName]:
    """subjectAltName entries: "a@b" an rfc822Name, an address an IPAddress, any other str a DNSName."""
    out = []
    for v in values:
        if isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            out.append(x509.IPAddress(v))
        elif "@" in v:
            out.append(x509.RFC822Name(v))
        else:
            out.append(x509.DNSName(v))
    return out


@attrs.frozen
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: object = attrs.field(repr=False)


def issue(
    subject: x509.Name | str,
    subject_key,
    issuer: Issued | None = None,
    *,
    ca: bool | None = False,
    path_length: int | None = None,
    sans=(),
    key_usage: x509.KeyUsage | None | bool = True,
    not_before: datetime.datetime = NOW - DAY,
    not_after: datetime.datetime = NOW + 365 * DAY,
    signing_key=None,
) -> Issued:
    """A certificate for ``subject_key``, signed by ``issuer`` (self-signed when None) with SHA-256.

    ``ca=None`` leaves basicConstraints out; ``key_usage=True`` picks the usual one for a CA or an end entity,
    None leaves it out.  ``signing_key`` signs instead of the issuer's key (a forged certificate).
    """
    subject = name(subject) if isinstance(subject, str) else subject
    issuer_name = issuer.certificate.subject if issuer else subject
    issuer_key = issuer.key if issuer else subject_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if key_usage is True:
        key_usage = CA_KEY_USAGE if ca else EE_KEY_USAGE
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(san(*sans)), critical=False)
    return Issued(builder.sign(signing_key or issuer_key, hashes.SHA256()), subject_key)


@attrs.frozen
class Hierarchy:
    """root CA -> intermediate CA -> end entity, all keys of one kind."""

    root: Issued
    intermediate: Issued
    leaf: Issued


def hierarchy(kind: str = "p256", sans=("gw.example.org",)) -> Hierarchy:
    """A fresh three-level hierarchy; the leaf carries ``sans``."""
    root = issue("Test Root CA " + kind, key(kind, 0), ca=True)
    intermediate = issue("Test Intermediate CA " + kind, key(kind, 1), root, ca=True)
    leaf = issue("gw " + kind, key(kind, 2), intermediate, sans=sans)
    return Hierarchy(root, intermediate, leaf)


def write_certificates(path, *certificates: x509.Certificate, der: bool = False) -> str:
    """Write PEM (several certificates concatenated) or DER (one certificate); returns ``path`` as str."""
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    with open(path, "wb") as f:
        for c in certificates:
            f.write(c.public_bytes(encoding))
    return str(path)


def write_key(path, private_key, *, mode: int = 0o600, der: bool = False, password: bytes | None = None) -> str:
    """Write a PKCS#8 private key file with ``mode``; returns ``path`` as str."""
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    data = private_key.private_bytes(encoding, serialization.PrivateFormat.PKCS8, encryption)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return str(path)


def expired(subject: str, subject_key, issuer: Issued, *, at: datetime.datetime = NOW, **kw) -> Issued:
    """An end entity that was valid for 30 days and expired one day before ``at``."""
    return issue(subject, subject_key, issuer, not_before=at - 31 * DAY, not_after=at - DAY, **kw)


def not_yet_valid(subject: str, subject_key, issuer: Issued, *, at: datetime.datetime = NOW, **kw) -> Issued:
    """An end entity whose validity starts one day after ``at``."""
    return issue(subject, subject_key, issuer, not_before=at + DAY, not_after=at + 30 * DAY, **kw)


def crl(
    issuer: Issued,
    revoked=(),
    *,
    this_update: datetime.datetime = NOW - DAY,
    next_update: datetime.datetime | None = NOW + 7 * DAY,
    signing_key=None,
    number: int = 1,
    extensions=(),
) -> x509.CertificateRevocationList:
    """A CRL of ``issuer`` (SHA-256) listing ``revoked``: certificates, or (certificate, x509.ReasonFlags) pairs,
    each revoked at ``this_update``.  ``next_update`` None leaves nextUpdate out (cryptography's builder needs it,
    so the CRL is then re-encoded without it); ``signing_key`` signs instead of the issuer's key (a forged CRL);
    ``extensions`` are (extension, critical) pairs added to the CRL."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(this_update)
        .next_update(next_update or this_update + DAY)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    for item in revoked:
        cert, reason = item if isinstance(item, tuple) else (item, None)
        entry = x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(this_update)
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    key = signing_key or issuer.key
    made = builder.sign(key, hashes.SHA256())
    if next_update is None:
        made = _without_next_update(made, key)
    return made


def _without_next_update(made: x509.CertificateRevocationList, key) -> x509.CertificateRevocationList:
    """``made`` with its nextUpdate taken out of the TBSCertList and signed again (RFC 5280 section 5.1: the field
    is OPTIONAL in the ASN.1, though conforming issuers include it)."""
    from cryptography.hazmat.primitives.asymmetric import padding
    from pyasn1.codec.der import decoder, encoder
    from pyasn1.type import univ
    from pyasn1_modules import rfc5280

    der = made.public_bytes(serialization.Encoding.DER)
    certlist, _ = decoder.decode(der, asn1Spec=rfc5280.CertificateList())
    tbs = certlist["tbsCertList"]
    tbs["nextUpdate"] = tbs["nextUpdate"].clone()  # an unset value: the OPTIONAL field is left out
    tbs_der = encoder.encode(tbs)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(tbs_der, ec.ECDSA(hashes.SHA256()))
    else:
        signature = key.sign(tbs_der, padding.PKCS1v15(), hashes.SHA256())
    certlist["signature"] = univ.BitString.fromOctetString(signature)
    return x509.load_der_x509_crl(encoder.encode(certlist))


@attrs.frozen
class Revoked:
    """An end entity, and the CRL of its issuer that revokes it (key compromise)."""

    leaf: Issued
    crl: x509.CertificateRevocationList


def revoke(subject: str, subject_key, issuer: Issued, *, at: datetime.datetime = NOW, **kw) -> Revoked:
    """An end entity valid around ``at`` and a CRL of ``issuer``, current at ``at``, that revokes it."""
    window = dict(not_before=at - DAY, not_after=at + 30 * DAY)
    leaf = issue(subject, subject_key, issuer, **window, **kw)
    listed = crl(issuer, [(leaf.certificate, x509.ReasonFlags.key_compromise)], this_update=at - DAY / 2,
                 next_update=at + 7 * DAY)
    return Revoked(leaf, listed)


def write_crls(path, *crls: x509.CertificateRevocationList, der: bool = False) -> str:
    """Write PEM (several CRLs concatenated) or DER (one CRL); returns ``path`` as str."""
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    with open(path, "wb") as f:
        for c in crls:
            f.write(c.public_bytes(encoding))
    return str(path)
