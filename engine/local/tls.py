"""A local certificate authority and the certificates of TLS-only Redis servers,
Sentinels and Cluster nodes (``inferis up --tls``, the tests): made with
``cryptography``, kept in a folder, reused when they are there."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def options(self, mutual: bool) -> dict[str, Any]:
        """redis-py's keyword arguments for a client that trusts this CA (and shows
        its certificate, which a server with mutual TLS asks for)."""
        params: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(self.ca),
                                  "ssl_cert_reqs": "required"}
        if mutual:
            params |= {"ssl_certfile": str(self.client_cert), "ssl_keyfile": str(self.client_key)}
        return params

    def query(self, mutual: bool) -> str:
        """The same as the query string of a ``rediss://`` (or ``rediss+sentinel://``,
        ``rediss+cluster://``) URL."""
        params = {k: v for k, v in self.options(mutual).items() if k != "ssl"}
        return urlencode(params, quote_via=quote)

    def server_config(self, port: int, mutual: bool) -> dict[str, str]:
        """redis.conf (or sentinel.conf) lines for TLS only on ``port``: the plain
        port off, replication, Sentinel's links and the cluster bus over TLS too."""
        return {
            "port": "0", "tls-port": str(port),
            "tls-cert-file": str(self.server_cert), "tls-key-file": str(self.server_key),
            "tls-ca-cert-file": str(self.ca),
            "tls-auth-clients": "yes" if mutual else "no",
            "tls-replication": "yes",
            # Outgoing links (a replica to its primary, a Sentinel to what it watches,
            # the cluster bus) show the client certificate: the server one is for
            # server auth only, which a peer asking for a client certificate refuses.
            "tls-client-cert-file": str(self.client_cert),
            "tls-client-key-file": str(self.client_key),
        }


def make_certificates(folder: Path, days: int = 365) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client
    certificate (for mutual TLS), all signed by the CA; existing files are kept."""
    folder = Path(folder)
    files = TlsFiles(folder / "ca.pem", folder / "redis.pem", folder / "redis.key",
                     folder / "client.pem", folder / "client.key")
    if all(p.exists() for p in (files.ca, files.server_cert, files.server_key,
                                files.client_cert, files.client_key)):
        return files
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("inferis local CA"))
          .issuer_name(name("inferis local CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(common: str, usage: Any, sans: list[x509.GeneralName]
             ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(common))
                   .issuer_name(ca.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf("inferis redis", ExtendedKeyUsageOID.SERVER_AUTH,
                              [x509.DNSName("localhost"),
                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client, client_key = leaf("inferis client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(ca.public_bytes(pem))
    files.server_cert.write_bytes(server.public_bytes(pem))
    files.client_cert.write_bytes(client.public_bytes(pem))
    write_key(files.server_key, server_key)
    write_key(files.client_key, client_key)
    return files

