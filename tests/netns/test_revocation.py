"""Revocation and certificate validity at the hub, with real daemons in a fresh lab each.

The hub refuses a revoked certificate at the handshake and, when its CRL is reloaded
(the file changes, or SIGHUP), ends the live sessions whose certificate is now listed
and leaves every other session alone. A CRL that fails to load keeps the previous one.
Expired and not-yet-valid certificates are refused by OpenSSL's verification, and the
hub's log says which.
"""

import datetime as dt
import os
import re
import shutil
import signal
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import labnet

pytestmark = pytest.mark.netns

FAST = {"keepalive": (1, 5), "reconnect": (0.5, 1)}
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
CRL_SIZE = 4096   # the SIGHUP test pads its CRL file to this size, so a new one fits in place


def assert_ping(lab, src, dst, count=3):
    r = lab.ping(lab.ns(src), lab.ip(dst), count=count)
    assert r.ok, f"ping {src} -> {dst}: {r}\n{r.output}"


def hub_sessions(lab):
    return {s["node"]: s for s in lab.status("hub")["sessions"]}


def log_since(lab, name, mark):
    return lab.log(name)[mark:]


def log_time(line):
    m = LOG_TIME.match(line)
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") if m else None


def refusals_revoked(text, name):
    return [ln for ln in text.splitlines()
            if "refused" in ln and "revoked" in ln and f"certificate of {name} " in ln]


def revoke(lab, name):
    """`l2vpn pki revoke` NAME; returns its serial (the CLI moves NAME.crt/.key aside)."""
    out = lab.l2vpn("pki", "revoke", str(lab.pki_dir), name, check=True)
    m = re.search(r"\(serial (0x[0-9a-f]+)\)", out.stdout)
    assert m, out.stdout
    return int(m.group(1), 16)


def moved_aside(lab, name, serial):
    """The TLS files of a revoked spoke, where `pki revoke` put them."""
    d = lab.pki_dir / "revoked"
    return {"cert": str(d / f"{name}-{serial:x}.crt"), "key": str(d / f"{name}-{serial:x}.key")}


def stays_out(lab, name, seconds, min_refusals, mark):
    """For `seconds`, name never has a session at the hub; returns the refusal lines seen
    since mark (at least min_refusals of them, each naming name's certificate revoked)."""
    deadline = time.monotonic() + seconds
    while True:
        assert name not in hub_sessions(lab), f"{name} is back up at the hub"
        assert lab.running("hub"), lab.log_tail("hub")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    refused = refusals_revoked(log_since(lab, "hub", mark), name)
    assert len(refused) >= min_refusals, (
        f"{len(refused)} refusals of {name} in {seconds} s:\n{lab.log_tail('hub')}")
    return refused


def untouched(lab, before):
    """The sessions in `before` are the same sessions: same id (the hub never reuses one)."""
    after = hub_sessions(lab)
    for name, s in before.items():
        assert name in after, f"{name} lost its session"
        assert after[name]["id"] == s["id"], \
            f"{name}'s session was re-established: id {s['id']} -> {after[name]['id']}"
        assert after[name]["remote"] == s["remote"], f"{name} reconnected"


# --------------------------------------------------------- revoke while sessions are up


def test_revoking_a_live_spoke_ends_only_its_session(make_lab):
    lab = make_lab(spokes=["site-a", "site-b", "site-c"], start=False, **FAST)
    lab.l2vpn("pki", "crl", str(lab.pki_dir), check=True)
    lab.update_config("hub", {"tls": {"crl": str(lab.pki_dir / "crl.pem")}})
    lab.start_all()
    lab.wait_sessions()
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-c"))
    others = {n: s for n, s in hub_sessions(lab).items() if n != "site-b"}
    mark, mark_b = len(lab.log("hub")), len(lab.log("site-b"))

    wall0, t0 = dt.datetime.now(), time.monotonic()
    serial = revoke(lab, "site-b")
    lab.wait_until(lambda: "site-b" not in hub_sessions(lab), 10,
                   what="the hub to end site-b's session", alive=["hub", "site-b"])
    seen_s = time.monotonic() - t0
    ended = [ln for ln in log_since(lab, "hub", mark).splitlines()
             if "site-b" in ln and "now revoked" in ln]
    assert ended, lab.log_tail("hub")
    logged_s = (log_time(ended[0]) - wall0).total_seconds()
    timing = (f"revoke -> session end: {logged_s:.2f} s by the hub's log, "
              f"{seen_s:.2f} s seen in status (CLI run included)")
    print(timing)
    assert seen_s < 3.0, timing
    assert f"0x{serial:x}" in ended[0], ended[0]
    assert re.search(r"reload \(.*crl\.pem changed\): .* lists 1 revoked certificates",
                     log_since(lab, "hub", mark)), lab.log_tail("hub")

    # site-b keeps trying; every attempt is refused at the handshake, for its certificate
    stays_out(lab, "site-b", 5, min_refusals=2, mark=mark)
    assert lab.running("site-b")
    b_log = log_since(lab, "site-b", mark_b)
    assert "peer said goodbye (certificate revoked)" in b_log, b_log
    retries = b_log.split("certificate revoked", 1)[1]
    assert len(re.findall(r"hub unreachable \(the hub closed the connection after the TLS "
                          r"handshake, before its hello: it refused this spoke", retries)) >= 2, b_log
    assert lab.status("site-b")["sessions"] == []

    # the others never noticed
    untouched(lab, others)
    assert_ping(lab, "site-a", "site-c")
    assert_ping(lab, "site-c", "site-a")


# ------------------------------------------------------------ SIGHUP, and bad CRL files


def write_in_place(path, data):
    """Overwrite path in place, keeping inode, size and mtime: no file watcher can see it."""
    before = os.stat(path)
    assert len(data) == before.st_size
    with open(path, "r+b") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
        (before.st_ino, before.st_size, before.st_mtime_ns)


def padded(data):
    assert len(data) < CRL_SIZE
    return data + b"\n" * (CRL_SIZE - len(data))


def test_sighup_applies_a_crl_the_watcher_cannot_see_and_bad_crls_keep_the_old(make_lab):
    lab = make_lab(spokes=["site-a", "site-b", "site-c"], start=False, **FAST)
    lab.l2vpn("pki", "crl", str(lab.pki_dir), check=True)
    hub_crl = lab.workdir / "hub-crl.pem"      # the hub's copy, not the CA's file
    hub_crl.write_bytes(padded((lab.pki_dir / "crl.pem").read_bytes()))
    lab.update_config("hub", {"tls": {"crl": str(hub_crl)}})
    lab.start_all()
    lab.wait_sessions()
    hub = lab.daemon_pid("hub")
    assert hub == lab.nodes["hub"].proc.pid
    others = {n: s for n, s in hub_sessions(lab).items() if n != "site-c"}
    mark = len(lab.log("hub"))

    serial = revoke(lab, "site-c")            # the CA's CRL now lists site-c ...
    os.kill(hub, signal.SIGSTOP)              # ... and is copied in while the hub is frozen,
    try:                                      # so no tick sees the write half-done
        write_in_place(hub_crl, padded((lab.pki_dir / "crl.pem").read_bytes()))
    finally:
        os.kill(hub, signal.SIGCONT)
    assert "site-c" in hub_sessions(lab), "the hub applied the CRL before SIGHUP"
    os.kill(hub, signal.SIGHUP)
    lab.wait_until(lambda: "site-c" not in hub_sessions(lab), 5,
                   what="SIGHUP to end site-c's session", alive=["hub"])
    text = log_since(lab, "hub", mark)
    assert re.search(rf"reload \(SIGHUP\): {re.escape(str(hub_crl))} lists 1 revoked "
                     rf"certificates", text), text
    assert "changed)" not in text, "the file watcher fired, so SIGHUP proved nothing:\n" + text
    assert re.search(rf"spoke site-c: certificate \(serial 0x{serial:x}\) is now revoked", text), text

    # Garbage written over the CRL: the watcher reads it, says so, keeps the revocations.
    mark = len(lab.log("hub"))
    hub_crl.write_bytes(b"this is not a CRL\n")
    lab.wait_until(lambda: re.search(r"reload \(.*changed\): .*not a CRL.*keeping the "
                                     r"previous CRL", log_since(lab, "hub", mark)), 5,
                   what="the hub to reject the garbage CRL", alive=["hub"])
    os.kill(hub, signal.SIGHUP)
    # SIGHUP reloads the whole config: a bad CRL keeps all of it, the CRL included.
    lab.wait_until(lambda: re.search(r"reload \(SIGHUP\): .*not a CRL.*keeping the previous "
                                     r"config", log_since(lab, "hub", mark)), 5,
                   what="SIGHUP to reject the garbage CRL", alive=["hub"])
    errors = [ln for ln in log_since(lab, "hub", mark).splitlines() if "not a CRL" in ln]
    assert all(" ERROR " in ln and str(hub_crl) in ln for ln in errors), errors

    # A CRL signed by another CA (an empty one, which would let site-c back in): rejected.
    foreign = lab.workdir / "other-ca"
    lab.l2vpn("pki", "init", str(foreign), check=True)
    lab.l2vpn("pki", "crl", str(foreign), check=True)
    shutil.copyfile(foreign / "crl.pem", hub_crl)
    lab.wait_until(lambda: re.search(r"reload \(.*changed\): .*not signed by the CA.*keeping "
                                     r"the previous CRL", log_since(lab, "hub", mark)), 5,
                   what="the hub to reject the foreign CRL", alive=["hub"])

    # site-c is still refused for its revoked certificate; the others are untouched
    stays_out(lab, "site-c", 3, min_refusals=1, mark=mark)
    assert lab.running("hub")
    untouched(lab, others)
    assert_ping(lab, "site-a", "site-b")


# ----------------------------------------------------------------- revoked at start


def test_hub_started_with_a_crl_refuses_the_revoked_spoke_from_the_start(make_lab):
    lab = make_lab(spokes=["site-a", "site-b"], start=False, **FAST)
    serial = revoke(lab, "site-b")
    lab.update_config("site-b", {"tls": moved_aside(lab, "site-b", serial)})
    lab.update_config("hub", {"tls": {"crl": str(lab.pki_dir / "crl.pem")}})
    lab.start_all()
    lab.wait_sessions(spokes=["site-a"])
    refused = stays_out(lab, "site-b", 3, min_refusals=2, mark=0)
    assert f"serial 0x{serial:x}" in refused[0], refused[0]
    assert "spoke site-b up" not in lab.log("hub")
    assert lab.running("site-b") and lab.status("site-b")["sessions"] == []
    assert_ping(lab, "site-a", "hub")


# ---------------------------------------------------- expired and not yet valid


def issue_dated(lab, name, not_before, not_after, folder):
    """A clientAuth certificate for name from the lab's CA with the given validity."""
    ca = x509.load_pem_x509_certificate((lab.pki_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((lab.pki_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                     False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(mode=0o700, exist_ok=True)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return {"cert": str(cert_path), "key": str(key_path)}


def test_expired_and_not_yet_valid_certificates_are_refused(make_lab):
    lab = make_lab(spokes=["site-a", "site-b", "site-c"], start=False, **FAST)
    now = dt.datetime.now(dt.timezone.utc)
    day = dt.timedelta(days=1)
    lab.update_config("site-b", {"tls": issue_dated(lab, "site-b", now - 3 * day, now - day,
                                                    lab.workdir / "expired")})
    lab.update_config("site-c", {"tls": issue_dated(lab, "site-c", now + day, now + 30 * day,
                                                    lab.workdir / "future")})
    # `check` finds both before anything runs
    for name, words in (("site-b", "expired on"), ("site-c", "is not valid until")):
        out = lab.l2vpn("check", "-c", str(lab.nodes[name].config))
        assert out.returncode == 2, out.stdout + out.stderr
        assert any("tls.cert" in ln and words in ln for ln in out.stdout.splitlines()), out.stdout

    lab.start_all()       # the spokes start anyway: they do not check their own dates
    lab.wait_sessions(spokes=["site-a"])
    b_ip, c_ip = lab.nodes["site-b"].underlay_ip, lab.nodes["site-c"].underlay_ip

    def refused(ip, why):
        return [ln for ln in lab.log("hub").splitlines()
                if f"session from {ip}:" in ln and f"certificate verify failed: {why}" in ln]

    lab.wait_until(lambda: len(refused(b_ip, "certificate has expired")) >= 2
                   and len(refused(c_ip, "certificate is not yet valid")) >= 2, 10,
                   what="two refusals each of the expired and the future certificate",
                   alive=["hub", "site-a", "site-b", "site-c"])
    hub_log = lab.log("hub")
    assert "spoke site-b up" not in hub_log and "spoke site-c up" not in hub_log, hub_log
    assert sorted(hub_sessions(lab)) == ["site-a"]
    # the spokes keep running and retrying, and say the hub refused them (TLS alerts)
    for name, alert in (("site-b", "certificate expired"), ("site-c", "bad certificate")):
        assert lab.running(name)
        st = lab.status(name)
        assert st["sessions"] == [], st
        assert len(re.findall(rf"hub unreachable \(hub refused us: [^)]*{alert}\)",
                              lab.log(name))) >= 2, lab.log_tail(name)
    assert_ping(lab, "site-a", "hub")


# ------------------------------------------------------------------- check tls.crl


def test_check_and_hub_reject_an_unusable_crl_in_one_line(make_lab):
    lab = make_lab(spokes=["site-a"], start=False)
    garbage = lab.workdir / "garbage-crl.pem"
    garbage.write_bytes(b"-----BEGIN X509 CRL-----\nnot base64 at all\n-----END X509 CRL-----\n")
    foreign = lab.workdir / "other-ca"
    lab.l2vpn("pki", "init", str(foreign), check=True)
    lab.l2vpn("pki", "crl", str(foreign), check=True)
    for crl, words in ((garbage, "not a CRL"), (foreign / "crl.pem", "not signed by the CA")):
        path = lab.update_config("hub", {"tls": {"crl": str(crl)}},
                                 lab.workdir / f"hub-{crl.parent.name}.yaml")
        out = lab.l2vpn("check", "-c", str(path))
        assert out.returncode == 2, out.stdout + out.stderr
        lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"{path}: tls.crl: {crl}: "), lines[0]
        assert words in lines[0], lines[0]
        # the hub refuses to start the same way, and leaves nothing behind
        run = lab.l2vpn("hub", "-c", str(path), ns=lab.ns("hub"), timeout_s=20)
        assert run.returncode == 2, run.stdout + run.stderr
        assert "Traceback" not in run.stdout + run.stderr
        assert [ln for ln in run.stderr.splitlines() if ln.strip()] == lines
        assert not labnet.link_exists(lab.ns("hub"), labnet.HUB_TAP)
