import datetime as dt
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess

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
        f"{key}: private key is open to group or others (mode 0640): chmod 600 {key}"
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
    def __init__(self, cert):
        self.cert = cert

    def getpeercert(self):
        return self.cert


def test_peer_common_name_refuses_missing_or_ambiguous_names():
    with pytest.raises(PKIError, match="no verified certificate"):
        pki.peer_common_name(FakePeer(None))
    two = {"subject": ((("commonName", "a"),), (("commonName", "b"),))}
    with pytest.raises(PKIError, match="exactly one common name, it holds 2"):
        pki.peer_common_name(FakePeer(two))
    assert pki.peer_common_name(FakePeer({"subject": ((("organizationName", "x"),), (("commonName", "c"),))})) == "c"
