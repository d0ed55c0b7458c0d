"""Test certificates made with the openssl command: a CA, a server
certificate for localhost/127.0.0.1, and client certificates."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _run(tmp: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)


def make_ca(tmp: Path, name: str = "ca") -> Path:
    _run(tmp, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN=test-{name}", "-keyout", f"{name}.key", "-out", f"{name}.pem")  # fmt: skip
    return tmp / f"{name}.pem"


def issue(tmp: Path, ca: str, name: str, san: str = "") -> tuple[Path, Path]:
    """A certificate `name.pem` + `name.key` signed by the CA `ca`."""
    _run(tmp, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
         "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
    ext = tmp / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _run(tmp, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
         "-CAcreateserial", "-days", "1", "-extfile", ext.name, "-out", f"{name}.pem")  # fmt: skip
    return tmp / f"{name}.pem", tmp / f"{name}.key"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def make_pki(tmp: Path) -> Pki:
    """A CA with a server and a client certificate, and a rogue client
    certificate from another CA."""
    ca = make_ca(tmp, "ca")
    server_cert, server_key = issue(tmp, "ca", "server", "DNS:localhost,IP:127.0.0.1")
    client_cert, client_key = issue(tmp, "ca", "client")
    make_ca(tmp, "rogue-ca")
    rogue_cert, rogue_key = issue(tmp, "rogue-ca", "rogue")
    return Pki(ca, server_cert, server_key, client_cert, client_key, rogue_cert, rogue_key)
