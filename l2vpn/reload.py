"""A node's config read again and applied live (`l2vpn reload`, SIGHUP, systemctl reload).

Theory of operation: nothing changes until everything is known to work. `prepare` reads
the YAML, checks it and the TLS files exactly as `l2vpn check` does, builds the new TLS
context, reads the CRL, and opens the new metrics listener if its address changed; any
problem and the node keeps running what it runs, untouched (ConfigError, one line per
problem). Only then does the node swap the prepared parts in, within one pass of its
loop, so no frame sees half a config. What `config.diff` calls live is applied; what
needs a restart keeps its old value and is reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass

from l2vpn import config, pki, privilege
from l2vpn.errors import ConfigError, L2VPNError, PKIError

TLS_KEYS = ("ca", "cert", "key", "crl")


def tls_problem(cfg, message: str) -> str:
    """Name the config file and the tls key a certificate problem comes from."""
    for key in TLS_KEYS:
        path = getattr(cfg.tls, key)
        if path is not None and message.startswith(str(path)):
            return f"{cfg.path}: tls.{key}: {message}"
    return f"{cfg.path}: tls: {message}"


def problems(cfg, role: str, tls: bool = True) -> list[str]:
    """What `l2vpn check` finds wrong beyond the YAML: TLS files (unless `tls` is false),
    user and group."""
    found = [tls_problem(cfg, line) for line in pki.check_tls(cfg.tls, role, cfg.node)] \
        if tls else []
    if cfg.user is not None:
        try:
            privilege.resolve_config(cfg)
        except ConfigError as e:
            found += e.problems
    return found


def fingerprints(tls) -> dict:
    """tls key -> a hash of its file now (None when unset or unreadable): a reload reports
    a renewed certificate or CRL even when the path stayed the same."""
    out = {}
    for key in TLS_KEYS:
        path = getattr(tls, key)
        try:
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path else None
        except OSError:
            out[key] = None
    return out


def _identity_held(node, new) -> bool:
    """Whether the node dropped its privileges and can no longer read its certificate or
    key: then it keeps the TLS identity (and CA) it loaded at start."""
    return node.identity is not None and \
        not all(os.access(getattr(new.tls, k), os.R_OK) for k in ("cert", "key"))


@dataclass
class Prepared:
    """A checked config and the parts built from it, not yet in use."""

    cfg: object                 # what will run: live keys new, restart-only keys old
    changed: list
    needs_restart: list
    context: object             # ssl.SSLContext for new handshakes
    trust: pki.Trust | None     # to re-check live peers against a new CA; None: same CA
    revocations: object         # pki.Revocations, or None without tls.crl
    fingerprints: dict
    metrics_server: object = None   # a new listener when metrics.listen changed to an address

    def outcome(self) -> dict:
        return {"ok": True, "changed": self.changed, "needs_restart": self.needs_restart}


def prepare(node) -> Prepared:
    """Read and check node.cfg.path and build its parts; ConfigError lists every problem."""
    old = node.cfg
    new = config.load(old.path, node.role)
    held = _identity_held(node, new)
    deferred = []
    if held:
        # After `user:` took root away, the key (0600 root) cannot be read again: the
        # identity loaded at start stays, and changes to it wait for a restart. The CRL,
        # which the dropped user must be able to read, still applies.
        now = fingerprints(new.tls)
        deferred = [f"tls.{k}" for k in ("ca", "cert", "key")
                    if getattr(new.tls, k) != getattr(old.tls, k)
                    or (now[k] is not None and now[k] != node.tls_fingerprints.get(k))]
        new = dataclasses.replace(new, tls=dataclasses.replace(old.tls, crl=new.tls.crl))
    found = problems(new, node.role, tls=not held)
    if found:
        raise ConfigError(found)
    diff = config.diff(old, new)
    cfg = config.merge_live(old, new)
    changed, needs_restart = list(diff.changed), list(diff.needs_restart) + deferred
    stamps = fingerprints(cfg.tls)
    for key in TLS_KEYS:    # the same path with new contents is a change too
        name = f"tls.{key}"
        if held and key != "crl":
            stamps[key] = node.tls_fingerprints.get(key)    # as loaded at start
        elif stamps[key] != node.tls_fingerprints.get(key) and name not in changed:
            changed.append(name)
    try:
        context = node.current_context() if held else node.make_context(cfg)
        trust = None if held else pki.Trust(cfg.tls.ca)    # held: the CA did not change
        revocations = pki.load_crl(cfg.tls.crl, cfg.tls.ca) if cfg.tls.crl else None
    except PKIError as e:
        raise ConfigError([tls_problem(cfg, str(e))]) from None
    prepared = Prepared(cfg, changed, needs_restart, context, trust, revocations, stamps)
    listen = cfg.metrics.listen
    if listen != old.metrics.listen and listen is not None:
        try:
            prepared.metrics_server = node.edges.metrics(node.loop, listen.host, listen.port,
                                                         node.metrics_text)
        except L2VPNError as e:
            raise ConfigError([f"{cfg.path}: metrics.listen: {e}"]) from None
    return prepared
