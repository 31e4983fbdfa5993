"""The private PKI: a CA that issues hub and spoke certificates, and the TLS 1.3 contexts.

Trust model: one private CA. The hub accepts any client certificate the CA signed for
clientAuth and knows the spoke by its CN; a spoke accepts any server certificate the CA
signed for serverAuth, and also checks the hub's name when `server_name` is set.
`cryptography` makes and inspects certificates; `ssl` (OpenSSL) enforces them on the
data path, including the EKU purpose checks, so a hub certificate cannot act as a spoke.

Revocation: the CA directory keeps one CRL, DIR/crl.pem, which `revoke` and `make_crl`
rewrite in place (atomically: a hub watching the file never reads half of one). The hub
reads its copy (tls.crl) with `load_crl`, which checks the CA's signature, and refuses a
session whose `peer_serial` is listed. OpenSSL's own CRL checking is not used: it would
turn an overdue nextUpdate into refused handshakes for every spoke.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from l2vpn.config import NODE_NAME, TLSConfig
from l2vpn.errors import PKIError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
BACKDATE = dt.timedelta(minutes=5)  # tolerate peers whose clocks run a little behind
ROLE_USAGE = {"hub": ExtendedKeyUsageOID.SERVER_AUTH, "spoke": ExtendedKeyUsageOID.CLIENT_AUTH}
USAGE_NAME = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}
CRL_FILE = "crl.pem"
REVOKED_DIR = "revoked"
# The hub reads its CRL from a local file, so a revocation takes effect when the file is
# replaced, not when nextUpdate comes round; a short nextUpdate would only add a chore
# whose neglect looks like an outage. Ten years, like the CA; we warn 30 days ahead.
CRL_DAYS = 3650
CRL_WARN = dt.timedelta(days=30)
MAX_DAYS = 36500


# --- making certificates


def init_ca(directory: Path, common_name: str = "l2vpn CA", days: int = 3650) -> tuple[Path, Path]:
    """Create a CA in `directory`; returns (ca.crt, ca.key). Never replaces an existing CA."""
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    for path in (key_path, cert_path):
        if path.exists():
            raise PKIError(f"{path} already exists: {directory} already holds a CA (remove it first to start over)")
    _make_dir(directory)

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, key)
    _write_public(cert_path, cert)
    return cert_path, key_path


def issue(directory: Path, name: str, role: str, ips=(), dns_names=(), days: int = 825) -> tuple[Path, Path]:
    """Issue NAME.crt and NAME.key signed by the CA in `directory`; returns their paths."""
    directory = Path(directory)
    if role not in ROLE_USAGE:
        raise PKIError(f"unknown role {role!r}: use 'hub' or 'spoke'")
    _check_name(name)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    for path in (key_path, cert_path):
        if path.exists():
            raise PKIError(f"{path} already exists: remove it first to issue a new certificate for {name}")
    ca_cert, ca_key = _load_ca(directory)
    sans = _subject_alt_names(name, ips, dns_names)

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ROLE_USAGE[role]]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path, key)
    _write_public(cert_path, cert)
    return cert_path, key_path


def _check_name(name) -> None:
    if not isinstance(name, str) or not NODE_NAME.fullmatch(name):
        raise PKIError(
            f"bad certificate name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (it must match the node name)"
        )


def _authority_key_id(ca_cert: x509.Certificate, ca_key) -> x509.AuthorityKeyIdentifier:
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())


def _serial() -> int:
    return secrets.randbits(159) | 1  # positive, at most 20 octets, never zero


def _key_usage(**flags) -> x509.KeyUsage:
    names = (
        "digital_signature content_commitment key_encipherment data_encipherment key_agreement "
        "key_cert_sign crl_sign encipher_only decipher_only"
    ).split()
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


def _subject_alt_names(name: str, ips, dns_names) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for dns in (name, *dns_names):
        try:
            general = x509.DNSName(dns)
        except (TypeError, ValueError):
            raise PKIError(f"not a DNS name: {dns!r} (use an ASCII host name like hub.example.net)") from None
        if general not in sans:
            sans.append(general)
    for ip in ips:
        try:
            general = x509.IPAddress(ipaddress.ip_address(ip))
        except ValueError:
            raise PKIError(f"not an IP address: {ip!r} (use a literal like 198.18.0.1)") from None
        if general not in sans:
            sans.append(general)
    return sans


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise PKIError(f"cannot create {directory}: {exc.strerror or exc}") from None


def _write_private(path: Path, key) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_new(path, pem, 0o600)


def _write_public(path: Path, cert: x509.Certificate) -> None:
    _write_new(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the first byte, so a key is never briefly readable."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PKIError(f"{path} already exists: remove it first") from None
    except OSError as exc:
        raise PKIError(f"cannot write {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _load_ca(directory: Path):
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists():
        raise PKIError(f"no CA in {directory}: run `l2vpn pki init {directory}` first")
    if not key_path.exists():
        raise PKIError(f"no CA key in {directory} ({key_path} is missing): issue certificates where the CA key lives")
    ca_cert = _parse_certs(cert_path, _read(cert_path, "run as a user who can read the CA"), "the CA certificate")[0]
    ca_key = _parse_key(key_path, _read(key_path, "run as a user who can read the CA"), "restore the CA's own key")
    if not _same_public_key(ca_cert, ca_key):
        raise PKIError(f"{key_path} does not match {cert_path}: restore the CA's own key")
    return ca_cert, ca_key


# --- revoking certificates


def revoke(directory: Path, name: str, days: int = CRL_DAYS) -> tuple[Path, int]:
    """Add DIR/NAME.crt to DIR/crl.pem, then move NAME.crt/.key to DIR/revoked/; returns (crl, serial)."""
    directory = Path(directory)
    _check_name(name)
    _check_days(days)
    cert_path = directory / f"{name}.crt"
    ca_cert, ca_key = _load_ca(directory)
    if not cert_path.exists():
        gone = sorted((directory / REVOKED_DIR).glob(f"{name}-*.crt"), key=lambda p: p.stat().st_mtime)
        if gone:
            raise PKIError(f"{cert_path} does not exist: {name} was already revoked ({gone[-1]}); nothing to revoke")
        raise PKIError(f"{cert_path} does not exist: give the NAME of a certificate issued in {directory}")
    cert = _parse_certs(cert_path, _read(cert_path, "run as a user who can read the CA"), "a certificate")[0]
    if _is_ca(cert) or _public_der(cert.public_key()) == _public_der(ca_cert.public_key()):
        raise PKIError(f"{cert_path} is a CA certificate: revoke hub and spoke certificates only")
    if not _issued_by(cert, ca_cert):
        raise PKIError(
            f"{cert_path}: not issued by the CA in {directory} (its issuer is "
            f"{cert.issuer.rfc4514_string() or 'empty'}); revoke it with the CA that issued it"
        )
    crl_path = _write_crl(directory, ca_cert, ca_key, [cert.serial_number], days)
    _move_aside(directory, name, cert.serial_number)
    return crl_path, cert.serial_number


def make_crl(directory: Path, days: int = CRL_DAYS) -> Path:
    """(Re)write DIR/crl.pem: the revocations it already lists, a fresh date and a new number."""
    directory = Path(directory)
    _check_days(days)
    ca_cert, ca_key = _load_ca(directory)
    return _write_crl(directory, ca_cert, ca_key, [], days)


def _check_days(days) -> None:
    if not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise PKIError(f"days must be a whole number from 1 to {MAX_DAYS}, not {days!r}")


def _write_crl(directory: Path, ca_cert, ca_key, new_serials: list[int], days: int) -> Path:
    crl_path = directory / CRL_FILE
    entries: list[x509.RevokedCertificate] = []
    number = 0
    if crl_path.exists():
        old = _parse_crl(crl_path, _read(crl_path, "run as a user who can read the CA"))
        if not _crl_signed_by(old, [ca_cert]):
            raise PKIError(
                f"{crl_path}: not signed by the CA in {directory}; move it aside and run "
                f"`l2vpn pki crl {directory}` to start a new one"
            )
        entries = list(old)
        number = _crl_number(old)
    now = dt.datetime.now(dt.timezone.utc)
    listed = {entry.serial_number for entry in entries}
    for serial in new_serials:
        if serial not in listed:
            entries.append(x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
            listed.add(serial)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(number + 1), critical=False)
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    # 0644: a CRL is public, and a hub that has dropped root re-reads it.
    _write_atomic(crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return crl_path


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` whole: write a temporary file beside it, fsync it, rename it over."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # exact, whatever the umask
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise PKIError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _move_aside(directory: Path, name: str, serial: int) -> None:
    """Move NAME.crt and NAME.key into DIR/revoked/, so NAME can be issued afresh."""
    folder = directory / REVOKED_DIR
    _make_dir(folder)
    for suffix in (".crt", ".key"):
        src, dst = directory / f"{name}{suffix}", folder / f"{name}-{serial:x}{suffix}"
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            if suffix == ".crt":
                raise PKIError(f"{src} vanished while it was being revoked (the CRL lists it already)") from None
        except OSError as exc:
            raise PKIError(f"cannot move {src} to {dst}: {exc.strerror or exc} (the CRL lists it already)") from None


# --- reading CRLs


@dataclass(frozen=True)
class Revocations:
    """The serials a verified CRL lists, and when it was made and wants renewing."""

    path: Path
    serials: frozenset[int]
    last_update: dt.datetime
    next_update: dt.datetime | None

    def is_revoked(self, serial: int) -> bool:
        return serial in self.serials

    def expiry_problem(self, now: dt.datetime) -> str | None:
        """A warning line when nextUpdate has passed or is less than 30 days away; the CRL still applies."""
        if self.next_update is None:
            return None
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.timezone.utc)
        due = f"{self.next_update:%Y-%m-%d %H:%M} UTC"
        fix = "refresh it with `l2vpn pki crl DIR` on the CA and copy it here"
        if now >= self.next_update:
            return f"{self.path}: CRL nextUpdate passed on {due}; it is still enforced, but {fix}"
        if self.next_update - now <= CRL_WARN:
            return f"{self.path}: CRL nextUpdate is {due}, less than {CRL_WARN.days} days away; {fix}"
        return None


def load_crl(path: Path, ca_path: Path) -> Revocations:
    """Read a PEM or DER CRL and check it is signed by the CA in `ca_path`."""
    crl = _parse_crl(path, _read(path, "check tls.crl in the config"))
    cas = _parse_certs(ca_path, _read(ca_path), "the CA certificate (tls.ca)")
    return _verified_revocations(path, crl, cas, ca_path)


def _parse_crl(path: Path, data: bytes) -> x509.CertificateRevocationList:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise PKIError(
            f"{path}: not a CRL (expected -----BEGIN X509 CRL-----; make one with `l2vpn pki crl DIR`)"
        ) from None


def _crl_signed_by(crl: x509.CertificateRevocationList, cas) -> bool:
    for ca in cas:
        try:
            if crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key()):
                return True
        except (TypeError, ValueError, UnsupportedAlgorithm):
            continue
    return False


def _verified_revocations(path: Path, crl: x509.CertificateRevocationList, cas, ca_path: Path) -> Revocations:
    if not _crl_signed_by(crl, cas):
        raise PKIError(
            f"{path}: not signed by the CA in {ca_path} (its issuer is {crl.issuer.rfc4514_string() or 'empty'}); "
            f"make it with `l2vpn pki crl DIR` from that CA"
        )
    return Revocations(
        path=Path(path),
        serials=frozenset(entry.serial_number for entry in crl),
        last_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
    )


# --- reading certificates and keys; each failure is one line naming the file


def _read(path: Path, hint: str = "check the tls paths in the config") -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PKIError(f"{path}: cannot read: {exc.strerror or exc} ({hint})") from None


def _parse_certs(path: Path, data: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise PKIError(f"{path}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----; point it at {what})")
    return certs


def _parse_key(path: Path, data: bytes, hint: str = "point tls.key at the key file"):
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PKIError(
            f"{path}: the key is protected by a passphrase; l2vpn needs it unencrypted "
            f"(`openssl pkey -in {path} -out {path}.plain`, then chmod 600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise PKIError(f"{path}: not a PEM private key (expected -----BEGIN PRIVATE KEY-----; {hint})") from None


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _same_public_key(cert: x509.Certificate, key) -> bool:
    return _public_der(cert.public_key()) == _public_der(key.public_key())


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[-1].value) if names else None


# --- TLS contexts for the data path


def hub_context(tls: TLSConfig) -> ssl.SSLContext:
    """Server side: TLS 1.3 only, and every spoke must show a clientAuth cert from our CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.num_tickets = 0  # no resumption: every session shows and proves its certificate afresh
    _configure(ctx, tls)
    return ctx


def spoke_context(tls: TLSConfig, server_name: str | None) -> ssl.SSLContext:
    """Client side: TLS 1.3 only; the hub's name is checked only when `server_name` is set."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = server_name is not None
    _configure(ctx, tls)
    return ctx


def _configure(ctx: ssl.SSLContext, tls: TLSConfig) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Parse first so a bad file is named precisely; OpenSSL's errors rarely say which.
    _parse_certs(tls.ca, _read(tls.ca), "the CA certificate (tls.ca)")
    cert = _parse_certs(tls.cert, _read(tls.cert), "this node's certificate (tls.cert)")[0]
    exposed = key_mode_problem(tls.key)
    if exposed:
        raise PKIError(exposed)
    key = _parse_key(tls.key, _read(tls.key))
    if not _same_public_key(cert, key):
        raise PKIError(f"{tls.key} does not match {tls.cert}: point tls.key at the key the certificate was issued for")
    try:
        ctx.load_verify_locations(cafile=str(tls.ca))
    except (ssl.SSLError, OSError) as exc:
        raise PKIError(f"{tls.ca}: cannot load as CA certificate: {_reason(exc)}") from None
    try:
        ctx.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    except (ssl.SSLError, OSError) as exc:
        raise PKIError(f"{tls.cert}, {tls.key}: cannot load certificate and key: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def peer_common_name(tls_object) -> str:
    """The CN of the peer's verified certificate (an SSLSocket or SSLObject)."""
    cert = tls_object.getpeercert()
    if not cert:
        raise PKIError("the peer presented no verified certificate")
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    if len(names) != 1:
        raise PKIError(f"the peer certificate must hold exactly one common name, it holds {len(names)}")
    return names[0]


def cert_serial(der: bytes) -> int:
    """The serial number of a DER certificate."""
    try:
        return x509.load_der_x509_certificate(der).serial_number
    except ValueError:
        raise PKIError("the peer certificate is not valid DER") from None


def peer_serial(tls_object) -> int:
    """The serial of the peer's verified certificate (an SSLSocket or SSLObject)."""
    der = tls_object.getpeercert(binary_form=True)
    if not der:
        raise PKIError("the peer presented no verified certificate")
    return cert_serial(der)


class Trust:
    """The CA certificates a node trusts now, to ask of a live peer whether its certificate
    would still be accepted (after a reload changed tls.ca or the CRL)."""

    def __init__(self, ca_path: Path):
        self.ca_path = ca_path
        self.cas = _parse_certs(ca_path, _read(ca_path), "the CA certificate (tls.ca)")

    def problem(self, tls_object, revocations: "Revocations | None",
                now: dt.datetime | None = None) -> str | None:
        """Why the peer's certificate would be refused now, or None."""
        der = tls_object.getpeercert(binary_form=True) if tls_object is not None else None
        if not der:
            return None     # no peer certificate yet: the handshake will check the new CA
        cert = x509.load_der_x509_certificate(der)
        if not any(_issued_by(cert, ca) for ca in self.cas):
            return f"its certificate is not issued by a CA in {self.ca_path} any more"
        now = now or dt.datetime.now(dt.timezone.utc)
        if now > cert.not_valid_after_utc:
            return f"its certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        if revocations is not None and revocations.is_revoked(cert.serial_number):
            return f"its certificate (serial 0x{cert.serial_number:x}) is revoked"
        return None


def key_mode_problem(path: Path) -> str | None:
    """The line refusing a private key open to group or others; None if fine or unreadable."""
    # Group access is refused too: the daemon reads its key as root, before it drops to
    # `user:`, so no group ever needs it.
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None  # the read that follows names the problem
    if mode & 0o077:
        return f"{path}: private key is open to group or others (mode {mode:04o}); refusing to use it: chmod 600 {path}"
    return None


# --- checking a node's files before it runs


def check_tls(tls: TLSConfig, role: str, node: str, now: dt.datetime | None = None) -> list[str]:
    """Every problem with a node's CA, cert and key, one line each; empty means fit to run."""
    if role not in ROLE_USAGE:
        raise ValueError(f"role must be 'hub' or 'spoke', not {role!r}")
    now = now or dt.datetime.now(dt.timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.timezone.utc)
    problems: list[str] = []

    def attempt(fn, *args):
        try:
            return fn(*args)
        except PKIError as exc:
            problems.append(str(exc))
            return None

    ca_data, cert_data, key_data = (attempt(_read, p) for p in (tls.ca, tls.cert, tls.key))
    cas = certs = key = None
    if ca_data is not None:
        cas = attempt(_parse_certs, tls.ca, ca_data, "the CA certificate (tls.ca)")
    if cert_data is not None:
        certs = attempt(_parse_certs, tls.cert, cert_data, "this node's certificate (tls.cert)")
    if key_data is not None:
        key = attempt(_parse_key, tls.key, key_data)
    cert = certs[0] if certs else None

    if key_data is not None:
        exposed = key_mode_problem(tls.key)
        if exposed:
            problems.append(exposed)
    revocations = None
    if tls.crl is not None:
        # An overdue nextUpdate is only a warning (the hub still enforces the CRL), and
        # these lines are all problems, so expiry is left to Revocations.expiry_problem.
        crl_data = attempt(_read, tls.crl, "check tls.crl in the config")
        crl = attempt(_parse_crl, tls.crl, crl_data) if crl_data is not None else None
        if crl is not None and cas:
            revocations = attempt(_verified_revocations, tls.crl, crl, cas, tls.ca)
    for ca in cas or ():
        if not _is_ca(ca):
            problems.append(f"{tls.ca}: {_describe(ca)} is not a CA certificate (point tls.ca at the CA's ca.crt)")
        problems += _validity_problems(tls.ca, ca, now, "make a new CA and reissue every certificate")
    if cert is None:
        return problems

    if key is not None and not _same_public_key(cert, key):
        problems.append(f"{tls.key} does not match {tls.cert}: point tls.key at the key the certificate was issued for")
    if cas and not any(_issued_by(cert, ca) for ca in cas):
        problems.append(
            f"{tls.cert}: not issued by the CA in {tls.ca} (its issuer is {cert.issuer.rfc4514_string() or 'empty'}); "
            f"issue it with `l2vpn pki issue` from that CA"
        )
    reissue = f"issue a new one with `l2vpn pki issue ... {node} --role {role}`"
    problems += _validity_problems(tls.cert, cert, now, reissue)
    problems += _usage_problems(tls.cert, cert, role, node)
    if revocations is not None and revocations.is_revoked(cert.serial_number):
        problems.append(
            f"{tls.cert}: {_describe(cert)} (serial {cert.serial_number:#x}) is revoked by {tls.crl}; {reissue}"
        )

    cn = _common_name(cert)
    if role == "spoke" and cn != node:
        fix = f"set node: {cn} or issue a certificate for {node}" if cn else f"issue a certificate for {node}"
        problems.append(
            f"{tls.cert}: common name is {cn!r} but node is {node!r}; the hub knows a spoke by its certificate CN "
            f"({fix})"
        )
    return problems


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _describe(cert: x509.Certificate) -> str:
    cn = _common_name(cert)
    return f"certificate {cn!r}" if cn else "the certificate"


def _validity_problems(path: Path, cert: x509.Certificate, now: dt.datetime, fix: str) -> list[str]:
    if now < cert.not_valid_before_utc:
        start = f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        return [f"{path}: {_describe(cert)} is not valid until {start} (check this host's clock)"]
    if now > cert.not_valid_after_utc:
        return [f"{path}: {_describe(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC ({fix})"]
    return []


def _usage_problems(path: Path, cert: x509.Certificate, role: str, node: str) -> list[str]:
    problems = []
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and ROLE_USAGE[role] not in usages:
        needed = USAGE_NAME[ROLE_USAGE[role]]
        problems.append(
            f"{path}: extended key usage lacks {needed}, which a {role} certificate needs "
            f"(issue one with `l2vpn pki issue ... {node} --role {role}`)"
        )
    try:
        key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        key_usage = None
    if key_usage is not None and not key_usage.digital_signature:
        problems.append(f"{path}: key usage lacks digitalSignature, which TLS 1.3 needs (reissue the certificate)")
    return problems
