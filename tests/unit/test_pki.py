import datetime as dt
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from l2vpn import pki
from l2vpn.config import TLSConfig
from l2vpn.errors import PKIError


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    """One CA with a hub and a spoke certificate, shared read-only by the tests."""
    directory = tmp_path_factory.mktemp("pki")
    pki.init_ca(directory)
    pki.issue(directory, "hub", "hub", ips=["198.18.0.1"], dns_names=["hub.example.net"])
    pki.issue(directory, "site-a", "spoke")
    return directory


@pytest.fixture(scope="module")
def other_ca_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("other-pki")
    pki.init_ca(directory, common_name="someone else's CA")
    pki.issue(directory, "hub", "hub")
    pki.issue(directory, "site-a", "spoke")
    return directory


def tls_for(directory, name, ca_dir=None):
    return TLSConfig(ca=(ca_dir or directory) / "ca.crt", cert=directory / f"{name}.crt", key=directory / f"{name}.key")


def load_cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_pair():
    """Run a client and a server handshake against each other over a socketpair, no threads."""
    opened = []

    def run(client_ctx, server_ctx, server_hostname=None):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        client = client_ctx.wrap_socket(a, server_hostname=server_hostname, do_handshake_on_connect=False)
        server = server_ctx.wrap_socket(b, server_side=True, do_handshake_on_connect=False)
        opened.extend([client, server])
        pending, errors = {"client": client, "server": server}, {}
        for _ in range(50):
            for side, sock in list(pending.items()):
                try:
                    sock.do_handshake()
                    del pending[side]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except (ssl.SSLError, OSError) as exc:
                    errors[side] = exc
                    del pending[side]
            if errors or not pending:
                break
        assert errors or not pending, "handshake made no progress"
        return client, server, errors

    yield run
    for sock in opened:
        sock.close()


# --- init_ca


def test_init_ca_writes_a_p256_ca_with_private_key_0600(tmp_path):
    cert_path, key_path = pki.init_ca(tmp_path / "new" / "pki", common_name="Test CA")
    assert (cert_path, key_path) == (tmp_path / "new/pki/ca.crt", tmp_path / "new/pki/ca.key")
    assert mode(key_path) == 0o600
    cert = load_cert(cert_path)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test CA"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    cert.verify_directly_issued_by(cert)


def test_init_ca_refuses_to_replace_an_existing_key(tmp_path):
    (tmp_path / "ca.key").write_text("precious")
    with pytest.raises(PKIError, match="ca.key already exists"):
        pki.init_ca(tmp_path)
    assert (tmp_path / "ca.key").read_text() == "precious"
    assert not (tmp_path / "ca.crt").exists()


def test_init_ca_twice_refuses_and_keeps_the_first_ca(tmp_path):
    pki.init_ca(tmp_path)
    before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(PKIError):
        pki.init_ca(tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == before


# --- issue


def test_issue_hub_certificate_contents(ca_dir):
    cert = load_cert(ca_dir / "hub.crt")
    ca = load_cert(ca_dir / "ca.crt")
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hub"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hub", "hub.example.net"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.0.1")]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert mode(ca_dir / "hub.key") == 0o600


def test_issue_spoke_certificate_has_client_auth_only(ca_dir):
    cert = load_cert(ca_dir / "site-a.crt")
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["site-a"]


def test_issue_uses_random_serials(ca_dir):
    assert load_cert(ca_dir / "hub.crt").serial_number != load_cert(ca_dir / "site-a.crt").serial_number


def test_issue_refuses_to_overwrite_a_key(tmp_path):
    pki.init_ca(tmp_path)
    pki.issue(tmp_path, "site-b", "spoke")
    before = (tmp_path / "site-b.key").read_bytes()
    with pytest.raises(PKIError, match="site-b.key already exists"):
        pki.issue(tmp_path, "site-b", "spoke")
    assert (tmp_path / "site-b.key").read_bytes() == before


def test_issue_without_a_ca_says_how_to_make_one(tmp_path):
    with pytest.raises(PKIError) as info:
        pki.issue(tmp_path, "hub", "hub")
    assert str(info.value) == f"no CA in {tmp_path}: run `l2vpn pki init {tmp_path}` first"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "hub", "role": "switch"}, "unknown role 'switch'"),
        ({"name": "bad/name", "role": "hub"}, "bad certificate name 'bad/name'"),
        ({"name": "hub", "role": "hub", "ips": ["198.18.0.300"]}, "not an IP address: '198.18.0.300'"),
        ({"name": "hub", "role": "hub", "dns_names": ["häb.example"]}, "not a DNS name: 'häb.example'"),
    ],
)
def test_issue_rejects_bad_input_without_writing(tmp_path, kwargs, message):
    pki.init_ca(tmp_path)
    with pytest.raises(PKIError, match=message):
        pki.issue(tmp_path, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]


# --- check_tls


def test_check_tls_accepts_our_own_certificates(ca_dir):
    assert pki.check_tls(tls_for(ca_dir, "hub"), "hub", "hub") == []
    assert pki.check_tls(tls_for(ca_dir, "site-a"), "spoke", "site-a") == []


def copy_pki(src, dst, *names):
    dst.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(src / name, dst / name)
    for key in dst.glob("*.key"):
        key.chmod(0o600)
    return dst


def test_check_tls_reports_missing_files(tmp_path):
    tls = TLSConfig(tmp_path / "ca.crt", tmp_path / "x.crt", tmp_path / "x.key")
    found = pki.check_tls(tls, "spoke", "x")
    assert found == [
        f"{p}: cannot read: No such file or directory (check the tls paths in the config)"
        for p in (tls.ca, tls.cert, tls.key)
    ]


def test_check_tls_reports_files_that_are_not_pem(ca_dir, tmp_path):
    d = copy_pki(ca_dir, tmp_path / "d", "ca.crt", "site-a.crt", "site-a.key")
    (d / "site-a.crt").write_text("hello\n")
    (d / "site-a.key").write_bytes((ca_dir / "site-a.crt").read_bytes())
    found = pki.check_tls(tls_for(d, "site-a"), "spoke", "site-a")
    assert found == [
        f"{d / 'site-a.crt'}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----; "
        "point it at this node's certificate (tls.cert))",
        f"{d / 'site-a.key'}: not a PEM private key (expected -----BEGIN PRIVATE KEY-----; "
        "point tls.key at the key file)",
    ]


def test_check_tls_reports_key_that_does_not_match(ca_dir, tmp_path):
    d = copy_pki(ca_dir, tmp_path / "d", "ca.crt", "site-a.crt")
    shutil.copy(ca_dir / "hub.key", d / "site-a.key")
    found = pki.check_tls(tls_for(d, "site-a"), "spoke", "site-a")
    assert found == [
        f"{d / 'site-a.key'} does not match {d / 'site-a.crt'}: point tls.key at the key the certificate was issued for"
    ]


def test_check_tls_reports_cert_from_another_ca(ca_dir, other_ca_dir):
    tls = tls_for(other_ca_dir, "site-a", ca_dir=ca_dir)
    (line,) = pki.check_tls(tls, "spoke", "site-a")
    assert line.startswith(f"{tls.cert}: not issued by the CA in {tls.ca} (its issuer is CN=someone else's CA)")


def test_check_tls_reports_expired_and_not_yet_valid(ca_dir):
    tls = tls_for(ca_dir, "site-a")
    cert = load_cert(tls.cert)
    (late,) = pki.check_tls(tls, "spoke", "site-a", now=cert.not_valid_after_utc + dt.timedelta(days=1))
    assert late.startswith(f"{tls.cert}: certificate 'site-a' expired on ")
    early = pki.check_tls(tls, "spoke", "site-a", now=cert.not_valid_before_utc - dt.timedelta(days=1))
    assert len(early) == 2
    assert early[0].startswith(f"{tls.ca}: certificate 'l2vpn CA' is not valid until ")
    assert early[1].startswith(f"{tls.cert}: certificate 'site-a' is not valid until ")
    assert all(line.endswith("(check this host's clock)") for line in early)
    naive_late = (cert.not_valid_after_utc + dt.timedelta(days=1)).replace(tzinfo=None)
    assert pki.check_tls(tls, "spoke", "site-a", now=naive_late) == [late]


def test_check_tls_reports_wrong_extended_key_usage(ca_dir):
    assert pki.check_tls(tls_for(ca_dir, "hub"), "spoke", "hub") == [
        f"{ca_dir / 'hub.crt'}: extended key usage lacks clientAuth, which a spoke certificate needs "
        "(issue one with `l2vpn pki issue ... hub --role spoke`)"
    ]
    assert pki.check_tls(tls_for(ca_dir, "site-a"), "hub", "hub") == [
        f"{ca_dir / 'site-a.crt'}: extended key usage lacks serverAuth, which a hub certificate needs "
        "(issue one with `l2vpn pki issue ... hub --role hub`)"
    ]


def test_check_tls_accepts_a_certificate_without_eku(ca_dir, tmp_path):
    ca_cert = load_cert(ca_dir / "ca.crt")
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    d = copy_pki(ca_dir, tmp_path / "d", "ca.crt")
    (d / "plain.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "plain.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (d / "plain.key").chmod(0o600)
    assert pki.check_tls(tls_for(d, "plain"), "spoke", "plain") == []
    assert pki.check_tls(tls_for(d, "plain"), "hub", "hub") == []


def test_check_tls_reports_a_key_open_to_others(ca_dir, tmp_path):
    d = copy_pki(ca_dir, tmp_path / "d", "ca.crt", "site-a.crt", "site-a.key")
    (d / "site-a.key").chmod(0o640)
    key = d / "site-a.key"
    assert pki.check_tls(tls_for(d, "site-a"), "spoke", "site-a") == [
        f"{key}: private key is open to group or others (mode 0640); refusing to use it: chmod 600 {key}"
    ]


def test_check_tls_reports_spoke_cn_that_is_not_the_node_name(ca_dir):
    tls = tls_for(ca_dir, "site-a")
    assert pki.check_tls(tls, "spoke", "site-b") == [
        f"{tls.cert}: common name is 'site-a' but node is 'site-b'; the hub knows a spoke by its certificate CN "
        "(set node: site-a or issue a certificate for site-b)"
    ]
    assert pki.check_tls(tls_for(ca_dir, "hub"), "hub", "main-hub") == []


def test_check_tls_reports_a_leaf_given_as_ca(ca_dir):
    tls = TLSConfig(ca=ca_dir / "hub.crt", cert=ca_dir / "site-a.crt", key=ca_dir / "site-a.key")
    found = pki.check_tls(tls, "spoke", "site-a")
    assert found[0] == f"{tls.ca}: certificate 'hub' is not a CA certificate (point tls.ca at the CA's ca.crt)"
    assert found[1].startswith(f"{tls.cert}: not issued by the CA in {tls.ca}")
    assert len(found) == 2


def test_check_tls_reports_an_encrypted_key(ca_dir, tmp_path):
    d = copy_pki(ca_dir, tmp_path / "d", "ca.crt", "site-a.crt")
    key = serialization.load_pem_private_key((ca_dir / "site-a.key").read_bytes(), None)
    (d / "site-a.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    (d / "site-a.key").chmod(0o600)
    (line,) = pki.check_tls(tls_for(d, "site-a"), "spoke", "site-a")
    assert line.startswith(f"{d / 'site-a.key'}: the key is protected by a passphrase")


# --- contexts


def test_contexts_are_tls13_only_and_require_certificates(ca_dir):
    hub = pki.hub_context(tls_for(ca_dir, "hub"))
    named = pki.spoke_context(tls_for(ca_dir, "site-a"), "hub")
    unnamed = pki.spoke_context(tls_for(ca_dir, "site-a"), None)
    for ctx in (hub, named, unnamed):
        assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert named.check_hostname and not unnamed.check_hostname
    assert hub.num_tickets == 0


def test_context_load_failures_are_one_line_naming_the_file(ca_dir, tmp_path):
    missing = TLSConfig(ca_dir / "ca.crt", tmp_path / "nope.crt", ca_dir / "hub.key")
    with pytest.raises(PKIError, match=f"^{tmp_path / 'nope.crt'}: cannot read: No such file"):
        pki.hub_context(missing)
    (tmp_path / "junk.crt").write_text("junk")
    with pytest.raises(PKIError, match=f"^{tmp_path / 'junk.crt'}: not a PEM certificate"):
        pki.spoke_context(TLSConfig(tmp_path / "junk.crt", ca_dir / "site-a.crt", ca_dir / "site-a.key"), None)
    mismatched = TLSConfig(ca_dir / "ca.crt", ca_dir / "hub.crt", ca_dir / "site-a.key")
    with pytest.raises(PKIError) as info:
        pki.hub_context(mismatched)
    assert str(info.value) == (
        f"{mismatched.key} does not match {mismatched.cert}: point tls.key at the key the certificate was issued for"
    )


# --- real TLS handshakes


def test_mutual_tls13_handshake_and_peer_names(ca_dir, tls_pair):
    client, server, errors = tls_pair(
        pki.spoke_context(tls_for(ca_dir, "site-a"), "hub"), pki.hub_context(tls_for(ca_dir, "hub")), "hub"
    )
    assert errors == {}
    assert client.version() == server.version() == "TLSv1.3"
    assert pki.peer_common_name(server) == "site-a"
    assert pki.peer_common_name(client) == "hub"
    client.sendall(b"frame")
    assert server.recv(16) == b"frame"


def test_hub_ip_san_matches_server_name(ca_dir, tls_pair):
    _, _, errors = tls_pair(
        pki.spoke_context(tls_for(ca_dir, "site-a"), "198.18.0.1"),
        pki.hub_context(tls_for(ca_dir, "hub")),
        "198.18.0.1",
    )
    assert errors == {}


def test_spoke_refuses_hub_with_another_name(ca_dir, tls_pair):
    _, _, errors = tls_pair(
        pki.spoke_context(tls_for(ca_dir, "site-a"), "other"), pki.hub_context(tls_for(ca_dir, "hub")), "other"
    )
    assert isinstance(errors["client"], ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in errors["client"].verify_message


def test_hub_refuses_spoke_from_another_ca(ca_dir, other_ca_dir, tls_pair):
    spoke = pki.spoke_context(tls_for(other_ca_dir, "site-a", ca_dir=ca_dir), None)
    _, _, errors = tls_pair(spoke, pki.hub_context(tls_for(ca_dir, "hub")))
    assert isinstance(errors["server"], ssl.SSLCertVerificationError)
    assert errors["server"].verify_message == "unable to get local issuer certificate"


def test_spoke_refuses_hub_from_another_ca(ca_dir, other_ca_dir, tls_pair):
    hub = pki.hub_context(tls_for(other_ca_dir, "hub", ca_dir=ca_dir))
    _, _, errors = tls_pair(pki.spoke_context(tls_for(ca_dir, "site-a"), None), hub)
    assert isinstance(errors["client"], ssl.SSLCertVerificationError)
    assert errors["client"].verify_message == "unable to get local issuer certificate"


def test_hub_refuses_a_hub_certificate_used_as_client(ca_dir, tls_pair):
    impostor = pki.spoke_context(tls_for(ca_dir, "hub"), None)
    _, _, errors = tls_pair(impostor, pki.hub_context(tls_for(ca_dir, "hub")))
    assert isinstance(errors["server"], ssl.SSLCertVerificationError)
    assert errors["server"].verify_message.endswith("certificate purpose")  # "unsuitable" in OpenSSL 3


def test_spoke_refuses_a_spoke_certificate_used_as_server(ca_dir, tls_pair):
    impostor = pki.hub_context(tls_for(ca_dir, "site-a"))
    _, _, errors = tls_pair(pki.spoke_context(tls_for(ca_dir, "site-a"), None), impostor)
    assert isinstance(errors["client"], ssl.SSLCertVerificationError)
    assert errors["client"].verify_message.endswith("certificate purpose")  # "unsuitable" in OpenSSL 3


def test_hub_refuses_tls12(ca_dir, tls_pair):
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_verify_locations(cafile=str(ca_dir / "ca.crt"))
    old.load_cert_chain(str(ca_dir / "site-a.crt"), str(ca_dir / "site-a.key"))
    old.check_hostname = False
    _, _, errors = tls_pair(old, pki.hub_context(tls_for(ca_dir, "hub")))
    assert errors["server"].reason == "UNSUPPORTED_PROTOCOL"


# --- certificates made with the openssl CLI


def test_openssl_made_rsa_spoke_certificate_works(ca_dir, tmp_path, tls_pair):
    d = copy_pki(ca_dir, tmp_path / "d", "ca.crt", "ca.key")
    (d / "ext.cnf").write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                               "extendedKeyUsage=clientAuth\n")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "site-r.key", "-subj", "/CN=site-r",
            "-out", "site-r.csr", cwd=d)
    openssl("x509", "-req", "-in", "site-r.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "4242",
            "-days", "30", "-sha256", "-extfile", "ext.cnf", "-out", "site-r.crt", cwd=d)
    (d / "site-r.key").chmod(0o600)
    tls = tls_for(d, "site-r")
    assert pki.check_tls(tls, "spoke", "site-r") == []
    _, server, errors = tls_pair(pki.spoke_context(tls, "hub"), pki.hub_context(tls_for(ca_dir, "hub")), "hub")
    assert errors == {}
    assert pki.peer_common_name(server) == "site-r"


def test_openssl_made_rsa_ca_and_certificates_work(tmp_path, tls_pair):
    d = tmp_path
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
            "-subj", "/CN=Easy-RSA CA", cwd=d)
    for name, usage in (("hub", "serverAuth"), ("site-e", "clientAuth")):
        (d / f"{name}.cnf").write_text(f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                                       f"extendedKeyUsage={usage}\nsubjectAltName=DNS:{name}\n")
        openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={name}",
                "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "7",
                "-days", "30", "-sha256", "-extfile", f"{name}.cnf", "-out", f"{name}.crt", cwd=d)
        (d / f"{name}.key").chmod(0o600)
    assert pki.check_tls(tls_for(d, "hub"), "hub", "hub") == []
    assert pki.check_tls(tls_for(d, "site-e"), "spoke", "site-e") == []
    client, server, errors = tls_pair(
        pki.spoke_context(tls_for(d, "site-e"), "hub"), pki.hub_context(tls_for(d, "hub")), "hub"
    )
    assert errors == {}
    assert client.version() == "TLSv1.3"
    assert pki.peer_common_name(server) == "site-e"


# --- peer_common_name


class FakePeer:
    def __init__(self, cert, der=None):
        self.cert, self.der = cert, der

    def getpeercert(self, binary_form=False):
        return self.der if binary_form else self.cert


def test_peer_common_name_refuses_missing_or_ambiguous_names():
    with pytest.raises(PKIError, match="no verified certificate"):
        pki.peer_common_name(FakePeer(None))
    two = {"subject": ((("commonName", "a"),), (("commonName", "b"),))}
    with pytest.raises(PKIError, match="exactly one common name, it holds 2"):
        pki.peer_common_name(FakePeer(two))
    assert pki.peer_common_name(FakePeer({"subject": ((("organizationName", "x"),), (("commonName", "c"),))})) == "c"



# --- revocation


def serial_of(path):
    return load_cert(path).serial_number


def load_crl_object(path):
    return x509.load_pem_x509_crl(path.read_bytes())


def crl_number(path):
    return load_crl_object(path).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_make_crl_then_revoke_two_names(fresh_ca):
    ca = fresh_ca / "ca.crt"
    assert pki.make_crl(fresh_ca) == fresh_ca / pki.CRL_FILE == fresh_ca / "crl.pem"
    assert pki.load_crl(fresh_ca / "crl.pem", ca).serials == frozenset()
    a, b, hub = (serial_of(fresh_ca / f"{n}.crt") for n in ("site-a", "site-b", "hub"))
    assert pki.revoke(fresh_ca, "site-a") == (fresh_ca / "crl.pem", a)
    assert pki.load_crl(fresh_ca / "crl.pem", ca).serials == {a}
    assert pki.revoke(fresh_ca, "site-b") == (fresh_ca / "crl.pem", b)
    revocations = pki.load_crl(fresh_ca / "crl.pem", ca)
    assert revocations.serials == {a, b}
    assert revocations.is_revoked(a) and revocations.is_revoked(b) and not revocations.is_revoked(hub)


def test_revoke_makes_the_crl_when_there_is_none(fresh_ca):
    crl, serial = pki.revoke(fresh_ca, "site-a")
    assert pki.load_crl(crl, fresh_ca / "ca.crt").serials == {serial}


def test_crl_contents(fresh_ca):
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    crl_path, serial = pki.revoke(fresh_ca, "site-a", days=90)
    after = dt.datetime.now(dt.timezone.utc)
    crl = load_crl_object(crl_path)
    ca = load_cert(fresh_ca / "ca.crt")
    assert crl.is_signature_valid(ca.public_key())
    assert isinstance(crl.signature_hash_algorithm, hashes.SHA256)
    assert crl.issuer == ca.subject
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert before - pki.BACKDATE <= crl.last_update_utc <= after - pki.BACKDATE
    assert before + dt.timedelta(days=90) <= crl.next_update_utc <= after + dt.timedelta(days=90)
    (entry,) = list(crl)
    assert entry.serial_number == serial
    assert before <= entry.revocation_date_utc <= after


def test_openssl_verifies_our_crl(fresh_ca):
    crl_path, _ = pki.revoke(fresh_ca, "site-a")
    done = subprocess.run(["openssl", "crl", "-in", str(crl_path), "-CAfile", str(fresh_ca / "ca.crt"), "-noout"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "verify OK" in done.stdout + done.stderr


def test_crl_number_increases_and_entries_are_kept(fresh_ca):
    pki.make_crl(fresh_ca)
    assert crl_number(fresh_ca / "crl.pem") == 1
    _, serial = pki.revoke(fresh_ca, "site-a")
    assert crl_number(fresh_ca / "crl.pem") == 2
    pki.make_crl(fresh_ca, days=30)
    assert crl_number(fresh_ca / "crl.pem") == 3
    revocations = pki.load_crl(fresh_ca / "crl.pem", fresh_ca / "ca.crt")
    assert revocations.serials == {serial}
    assert revocations.next_update - revocations.last_update < dt.timedelta(days=31)


def test_crl_days_must_be_sensible(fresh_ca):
    for days in (0, -1, pki.MAX_DAYS + 1):
        with pytest.raises(PKIError, match="days must be a whole number from 1 to"):
            pki.make_crl(fresh_ca, days=days)
    assert not (fresh_ca / "crl.pem").exists()


def test_load_crl_refuses_a_crl_from_another_ca(fresh_ca, other_ca_dir, tmp_path):
    foreign = tmp_path / "foreign.pem"
    other = copy_pki(other_ca_dir, tmp_path / "other", "ca.crt", "ca.key")
    foreign.write_bytes(pki.make_crl(other).read_bytes())
    with pytest.raises(PKIError) as info:
        pki.load_crl(foreign, fresh_ca / "ca.crt")
    message = str(info.value)
    assert message.startswith(f"{foreign}: not signed by the CA in {fresh_ca / 'ca.crt'} (its issuer is CN=someone else")
    assert "\n" not in message


def test_load_crl_refuses_a_crl_signed_by_another_key_with_the_same_name(fresh_ca, tmp_path):
    twin = tmp_path / "twin"
    pki.init_ca(twin)  # also "CN=l2vpn CA", but another key
    with pytest.raises(PKIError, match="not signed by the CA in"):
        pki.load_crl(pki.make_crl(twin), fresh_ca / "ca.crt")


def test_make_crl_refuses_to_extend_a_crl_it_did_not_sign(fresh_ca, tmp_path):
    other = tmp_path / "other"
    pki.init_ca(other)
    foreign = pki.make_crl(other).read_bytes()
    (fresh_ca / "crl.pem").write_bytes(foreign)
    for attempt in (lambda: pki.make_crl(fresh_ca), lambda: pki.revoke(fresh_ca, "site-a")):
        with pytest.raises(PKIError, match=f"^{fresh_ca / 'crl.pem'}: not signed by the CA in {fresh_ca}; move it aside"):
            attempt()
    assert (fresh_ca / "crl.pem").read_bytes() == foreign
    assert (fresh_ca / "site-a.crt").exists()


def test_revoke_a_name_that_was_never_issued(fresh_ca):
    with pytest.raises(PKIError) as info:
        pki.revoke(fresh_ca, "site-z")
    assert str(info.value) == (
        f"{fresh_ca / 'site-z.crt'} does not exist: give the NAME of a certificate issued in {fresh_ca}"
    )
    assert not (fresh_ca / "crl.pem").exists()


def test_revoke_without_a_ca(tmp_path):
    with pytest.raises(PKIError, match=r"no CA in .*: run `l2vpn pki init"):
        pki.revoke(tmp_path, "site-a")


def test_revoke_refuses_a_certificate_from_another_ca(fresh_ca, other_ca_dir):
    shutil.copy(other_ca_dir / "site-a.crt", fresh_ca / "intruder.crt")
    with pytest.raises(PKIError) as info:
        pki.revoke(fresh_ca, "intruder")
    assert str(info.value).startswith(
        f"{fresh_ca / 'intruder.crt'}: not issued by the CA in {fresh_ca} (its issuer is CN=someone else's CA)"
    )
    assert (fresh_ca / "intruder.crt").exists()
    assert not (fresh_ca / "crl.pem").exists() and not (fresh_ca / "revoked").exists()


def test_revoke_refuses_the_ca_itself_and_bad_names(fresh_ca):
    with pytest.raises(PKIError, match="ca.crt is a CA certificate: revoke hub and spoke certificates only"):
        pki.revoke(fresh_ca, "ca")
    with pytest.raises(PKIError, match="bad certificate name '../site-a'"):
        pki.revoke(fresh_ca, "../site-a")
    assert sorted(p.name for p in fresh_ca.iterdir()) == [
        "ca.crt", "ca.key", "hub.crt", "hub.key", "site-a.crt", "site-a.key", "site-b.crt", "site-b.key"
    ]


def test_revoke_moves_the_files_aside_so_the_name_can_be_issued_again(fresh_ca):
    old_key = (fresh_ca / "site-a.key").read_bytes()
    crl, serial = pki.revoke(fresh_ca, "site-a")
    folder = fresh_ca / "revoked"
    assert mode(folder) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == [f"site-a-{serial:x}.crt", f"site-a-{serial:x}.key"]
    assert serial_of(folder / f"site-a-{serial:x}.crt") == serial
    assert (folder / f"site-a-{serial:x}.key").read_bytes() == old_key
    assert mode(folder / f"site-a-{serial:x}.key") == 0o600
    assert not (fresh_ca / "site-a.crt").exists() and not (fresh_ca / "site-a.key").exists()

    pki.issue(fresh_ca, "site-a", "spoke")
    fresh = serial_of(fresh_ca / "site-a.crt")
    assert fresh != serial
    assert not pki.load_crl(crl, fresh_ca / "ca.crt").is_revoked(fresh)
    tls = TLSConfig(fresh_ca / "ca.crt", fresh_ca / "site-a.crt", fresh_ca / "site-a.key", crl=crl)
    assert pki.check_tls(tls, "spoke", "site-a") == []


def test_revoke_a_certificate_without_its_key(fresh_ca):
    (fresh_ca / "site-a.key").unlink()
    _, serial = pki.revoke(fresh_ca, "site-a")
    assert [p.name for p in (fresh_ca / "revoked").iterdir()] == [f"site-a-{serial:x}.crt"]


def test_revoke_again_is_idempotent(fresh_ca):
    crl, serial = pki.revoke(fresh_ca, "site-a")
    # As if the move had failed after the CRL was written: the certificate is back in place.
    shutil.copy(fresh_ca / "revoked" / f"site-a-{serial:x}.crt", fresh_ca / "site-a.crt")
    assert pki.revoke(fresh_ca, "site-a") == (crl, serial)
    assert [entry.serial_number for entry in load_crl_object(crl)] == [serial]
    assert crl_number(crl) == 2
    with pytest.raises(PKIError) as info:
        pki.revoke(fresh_ca, "site-a")
    assert str(info.value) == (
        f"{fresh_ca / 'site-a.crt'} does not exist: site-a was already revoked "
        f"({fresh_ca / 'revoked' / f'site-a-{serial:x}.crt'}); nothing to revoke"
    )


def test_crl_is_replaced_atomically(fresh_ca, monkeypatch):
    pki.make_crl(fresh_ca)
    pki.revoke(fresh_ca, "site-a")
    assert sorted(p.name for p in fresh_ca.iterdir() if p.name.startswith(".") or "crl" in p.name) == ["crl.pem"]
    before = (fresh_ca / "crl.pem").read_bytes()

    def fail(src, dst):
        assert os.path.dirname(src) == str(fresh_ca)  # the temporary file sits beside the CRL
        assert Path(src).read_bytes().startswith(b"-----BEGIN X509 CRL-----")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(PKIError) as info:
        pki.revoke(fresh_ca, "site-b")
    assert str(info.value) == f"cannot write {fresh_ca / 'crl.pem'}: No space left on device"
    assert (fresh_ca / "crl.pem").read_bytes() == before
    assert (fresh_ca / "site-b.crt").exists()
    assert sorted(p.name for p in fresh_ca.iterdir() if p.name.startswith(".") or "crl" in p.name) == ["crl.pem"]


def test_crl_mode_is_0644_whatever_the_umask(fresh_ca):
    old = os.umask(0o077)
    try:
        pki.make_crl(fresh_ca)
        assert mode(fresh_ca / "crl.pem") == 0o644
        pki.revoke(fresh_ca, "site-a")
    finally:
        os.umask(old)
    assert mode(fresh_ca / "crl.pem") == 0o644


def revocations(due, path="/etc/l2vpn/crl.pem"):
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    next_update = None if due is None else now + due
    return now, pki.Revocations(Path(path), frozenset({7}), now - dt.timedelta(days=1), next_update)


@pytest.mark.parametrize("due, expected", [
    (dt.timedelta(days=-1), "/etc/l2vpn/crl.pem: CRL nextUpdate passed on 2029-12-31 00:00 UTC; it is still "
                            "enforced, but refresh it with `l2vpn pki crl DIR` on the CA and copy it here"),
    (dt.timedelta(0), "/etc/l2vpn/crl.pem: CRL nextUpdate passed on 2030-01-01 00:00 UTC; it is still "
                      "enforced, but refresh it with `l2vpn pki crl DIR` on the CA and copy it here"),
    (dt.timedelta(days=29), "/etc/l2vpn/crl.pem: CRL nextUpdate is 2030-01-30 00:00 UTC, less than 30 days away; "
                            "refresh it with `l2vpn pki crl DIR` on the CA and copy it here"),
    (dt.timedelta(days=31), None),
    (None, None),
])
def test_expiry_problem(due, expected):
    now, crl = revocations(due)
    assert crl.expiry_problem(now) == expected
    assert crl.expiry_problem(now.replace(tzinfo=None)) == expected


def test_expiry_problem_of_made_crls(fresh_ca):
    now = dt.datetime.now(dt.timezone.utc)
    pki.make_crl(fresh_ca, days=10)
    assert "less than 30 days away" in pki.load_crl(fresh_ca / "crl.pem", fresh_ca / "ca.crt").expiry_problem(now)
    pki.make_crl(fresh_ca)
    fresh = pki.load_crl(fresh_ca / "crl.pem", fresh_ca / "ca.crt")
    assert fresh.expiry_problem(now) is None
    assert "nextUpdate passed" in fresh.expiry_problem(now + dt.timedelta(days=pki.CRL_DAYS + 1))


def test_load_crl_accepts_der(fresh_ca, tmp_path):
    _, serial = pki.revoke(fresh_ca, "site-a")
    der = tmp_path / "crl.der"
    der.write_bytes(load_crl_object(fresh_ca / "crl.pem").public_bytes(serialization.Encoding.DER))
    revocations = pki.load_crl(der, fresh_ca / "ca.crt")
    assert revocations.serials == {serial} and revocations.path == der


@pytest.mark.parametrize("content", [b"garbage\n", b"", b"-----BEGIN X509 CRL-----\nnope\n-----END X509 CRL-----\n",
                                     b"\x30\x03\x02\x01\x00"])
def test_load_crl_refuses_what_is_not_a_crl(fresh_ca, tmp_path, content):
    path = tmp_path / "crl.pem"
    path.write_bytes(content)
    with pytest.raises(PKIError) as info:
        pki.load_crl(path, fresh_ca / "ca.crt")
    assert str(info.value) == (
        f"{path}: not a CRL (expected -----BEGIN X509 CRL-----; make one with `l2vpn pki crl DIR`)"
    )


def test_load_crl_refuses_a_certificate_given_as_crl(fresh_ca):
    with pytest.raises(PKIError, match="not a CRL"):
        pki.load_crl(fresh_ca / "ca.crt", fresh_ca / "ca.crt")


def test_load_crl_unreadable_files(fresh_ca, tmp_path):
    with pytest.raises(PKIError) as info:
        pki.load_crl(tmp_path / "nope.pem", fresh_ca / "ca.crt")
    assert str(info.value) == (
        f"{tmp_path / 'nope.pem'}: cannot read: No such file or directory (check tls.crl in the config)"
    )
    crl = pki.make_crl(fresh_ca)
    with pytest.raises(PKIError, match=f"^{tmp_path / 'ca.crt'}: cannot read: No such file"):
        pki.load_crl(crl, tmp_path / "ca.crt")


def test_check_tls_with_a_crl(fresh_ca, other_ca_dir, tmp_path):
    def check(name, crl, role="spoke", **kw):
        tls = TLSConfig(fresh_ca / "ca.crt", fresh_ca / f"{name}.crt", fresh_ca / f"{name}.key", crl=crl)
        return pki.check_tls(tls, role, name, **kw)

    crl = pki.make_crl(fresh_ca, days=1)
    assert check("site-a", crl) == []
    # An overdue CRL is still enforced by the hub: not a problem for check_tls.
    assert check("site-a", crl, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)) == []

    serial = serial_of(fresh_ca / "site-a.crt")
    kept = tmp_path / "site-a"
    kept.mkdir()
    shutil.copy(fresh_ca / "site-a.crt", kept / "site-a.crt")
    shutil.copy(fresh_ca / "site-a.key", kept / "site-a.key")
    pki.revoke(fresh_ca, "site-a")
    tls = TLSConfig(fresh_ca / "ca.crt", kept / "site-a.crt", kept / "site-a.key", crl=crl)
    assert pki.check_tls(tls, "spoke", "site-a") == [
        f"{tls.cert}: certificate 'site-a' (serial {serial:#x}) is revoked by {crl}; "
        "issue a new one with `l2vpn pki issue ... site-a --role spoke`"
    ]
    assert check("hub", crl, role="hub") == []

    assert check("hub", tmp_path / "nope.pem", role="hub") == [
        f"{tmp_path / 'nope.pem'}: cannot read: No such file or directory (check tls.crl in the config)"
    ]
    (tmp_path / "junk.pem").write_text("junk")
    assert check("hub", tmp_path / "junk.pem", role="hub") == [
        f"{tmp_path / 'junk.pem'}: not a CRL (expected -----BEGIN X509 CRL-----; make one with `l2vpn pki crl DIR`)"
    ]
    other = copy_pki(other_ca_dir, tmp_path / "other", "ca.crt", "ca.key")
    (line,) = check("hub", pki.make_crl(other), role="hub")
    assert line.startswith(f"{other / 'crl.pem'}: not signed by the CA in {fresh_ca / 'ca.crt'}")


def test_check_tls_with_an_unreadable_ca_does_not_judge_the_crl(fresh_ca, tmp_path):
    crl = pki.make_crl(fresh_ca)
    tls = TLSConfig(tmp_path / "ca.crt", fresh_ca / "hub.crt", fresh_ca / "hub.key", crl=crl)
    assert pki.check_tls(tls, "hub", "hub") == [
        f"{tmp_path / 'ca.crt'}: cannot read: No such file or directory (check the tls paths in the config)"
    ]


# --- private key modes


@pytest.mark.parametrize("key_mode, exposed", [(0o600, False), (0o400, False), (0o640, True), (0o644, True),
                                                (0o604, True), (0o620, True)])
def test_key_mode_problem(tmp_path, key_mode, exposed):
    key = tmp_path / "node.key"
    key.write_text("secret")
    key.chmod(key_mode)
    expected = (
        f"{key}: private key is open to group or others (mode {key_mode:04o}); refusing to use it: chmod 600 {key}"
    )
    assert pki.key_mode_problem(key) == (expected if exposed else None)


def test_key_mode_problem_leaves_a_missing_key_to_the_read(tmp_path):
    assert pki.key_mode_problem(tmp_path / "nope.key") is None


@pytest.mark.parametrize("make", [pki.hub_context, lambda tls: pki.spoke_context(tls, None)])
def test_contexts_refuse_a_key_open_to_others(ca_dir, tmp_path, make):
    d = copy_pki(ca_dir, tmp_path / "d", "ca.crt", "hub.crt", "hub.key")
    key = d / "hub.key"
    make(tls_for(d, "hub"))  # 0600: fine
    key.chmod(0o644)
    with pytest.raises(PKIError) as info:
        make(tls_for(d, "hub"))
    assert str(info.value) == (
        f"{key}: private key is open to group or others (mode 0644); refusing to use it: chmod 600 {key}"
    )


# --- peer serials


def memory_handshake(client_ctx, server_ctx, server_hostname=None):
    """Handshake two SSLObjects over MemoryBIOs, shuttling bytes by hand: no sockets at all."""
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname=server_hostname)
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    done = set()
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            if name not in done:
                try:
                    side.do_handshake()
                    done.add(name)
                except ssl.SSLWantReadError:
                    pass
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
        if len(done) == 2:
            return client, server
    raise AssertionError(f"handshake stalled; done: {done}")


def test_peer_serial_over_memory_bios(ca_dir):
    client, server = memory_handshake(pki.spoke_context(tls_for(ca_dir, "site-a"), "hub"),
                                      pki.hub_context(tls_for(ca_dir, "hub")), "hub")
    assert isinstance(server, ssl.SSLObject)
    assert pki.peer_serial(server) == serial_of(ca_dir / "site-a.crt")
    assert pki.peer_serial(client) == serial_of(ca_dir / "hub.crt")


def test_peer_serial_over_sockets(ca_dir, tls_pair):
    client, server, errors = tls_pair(pki.spoke_context(tls_for(ca_dir, "site-a"), None),
                                      pki.hub_context(tls_for(ca_dir, "hub")))
    assert errors == {}
    assert isinstance(server, ssl.SSLSocket)
    assert pki.peer_serial(server) == serial_of(ca_dir / "site-a.crt")


def test_peer_serial_needs_a_certificate():
    with pytest.raises(PKIError, match="^the peer presented no verified certificate$"):
        pki.peer_serial(FakePeer(None, None))
    with pytest.raises(PKIError, match="not valid DER"):
        pki.peer_serial(FakePeer(None, b"\x30\x00"))


def test_cert_serial(ca_dir):
    cert = load_cert(ca_dir / "site-a.crt")
    assert pki.cert_serial(cert.public_bytes(serialization.Encoding.DER)) == cert.serial_number
