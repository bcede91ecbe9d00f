"""A local test PKI: one certificate authority and one certificate per party.

Each party's certificate names its role twice: the subject common name (``client``, ``server``,
``cp``) and a DNS subject alternative name ``<role>.jaxmpc`` (:func:`role_hostname`). A party
that connects to a peer asks TLS to verify the peer's certificate for the peer's role
hostname (standard hostname verification), and a party that accepts a connection reads the
role from the certificate the peer presented, so certificates are bound to roles, not to
machines or addresses. Both sides require a certificate signed by the configured CA (mutual
authentication).

:func:`create_test_pki` is for tests, local runs and trials on three machines: the CA key is
written next to the certificates. For a deployment, keep the CA key offline and issue the
three certificates with the same names (any CA works: only the role names matter).
"""

from __future__ import annotations

import datetime
import os

from jaxmpc._io import atomic_write_bytes
from jaxmpc.core.parties import Party

__all__ = ["create_test_pki", "role_hostname", "role_of_certificate", "PKIFiles", "ROLE_NAMES"]

ROLE_NAMES = {Party.CLIENT: "client", Party.SERVER: "server", Party.CP: "cp"}
_DOMAIN = "jaxmpc"


def role_hostname(role) -> str:
    """The DNS name a role's certificate carries (``client.jaxmpc``, ``server.jaxmpc``, ``cp.jaxmpc``)."""
    return f"{ROLE_NAMES[Party.parse(role)]}.{_DOMAIN}"


def role_of_certificate(cert: dict) -> Party | None:
    """The role named by a peer certificate (``ssl.SSLSocket.getpeercert()``), or ``None``.

    The DNS subject alternative name decides; the common name must not contradict it.
    """
    names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    roles = {p for p, n in ROLE_NAMES.items() if f"{n}.{_DOMAIN}" in names}
    cns = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    if len(roles) != 1:
        return None
    (role,) = roles
    if cns and any(cn != ROLE_NAMES[role] for cn in cns):
        return None
    return role


class PKIFiles(dict):
    """Paths of a test PKI: ``ca`` (certificate), ``ca_key``, and per role ``(cert, key)``."""

    @property
    def ca(self) -> str:
        return self["ca"]

    def cert(self, role) -> str:
        return self[ROLE_NAMES[Party.parse(role)]][0]

    def key(self, role) -> str:
        return self[ROLE_NAMES[Party.parse(role)]][1]


def create_test_pki(directory: str | os.PathLike, *, roles=("client", "server", "cp"), days: int = 30,
                    ca_name: str = "jaxmpc test CA") -> PKIFiles:
    """Creates a CA and a certificate + key per role in ``directory`` (ECDSA P-256, SHA-256).

    Files: ``ca.pem``, ``ca.key``, ``<role>.pem``, ``<role>.key`` (keys mode 0600 from the start,
    every file written atomically with :func:`jaxmpc._io.atomic_write_bytes`). Each party
    certificate is valid for TLS client and server authentication.

    Args:
      directory: created if missing.
      roles: the roles to issue certificates for.
      days: validity.
      ca_name: the CA's common name (two PKIs with different names do not trust each other;
        they would not with the same name either, as the keys differ).

    Returns:
      the file paths (:class:`PKIFiles`).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject).issuer_name(ca_subject)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = PKIFiles(ca=os.path.join(directory, "ca.pem"), ca_key=os.path.join(directory, "ca.key"))
    atomic_write_bytes(files["ca_key"], pem_key(ca_key), private=True)
    atomic_write_bytes(files["ca"], ca_cert.public_bytes(serialization.Encoding.PEM))
    for role in roles:
        name = ROLE_NAMES[Party.parse(role)]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(role_hostname(name))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}.key")
        atomic_write_bytes(key_path, pem_key(key), private=True)
        atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        files[name] = (cert_path, key_path)
    return files
