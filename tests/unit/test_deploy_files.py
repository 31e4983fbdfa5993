"""The deployment files agree with the README: the systemd units run l2vpn from the venv
the README installs it in, and name config files the README tells people to write."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "configs").glob("*.service"))


def readme_venv() -> str:
    """The venv the README's Deploying section installs into."""
    text = (REPO / "README.md").read_text()
    found = re.findall(r"python3 -m venv (/\S+) && \1/bin/pip install \.", text)
    assert found, "README no longer says `python3 -m venv DIR && DIR/bin/pip install .`"
    return found[0]


def exec_lines(unit: Path) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.read_text().splitlines()
            if re.match(r"Exec\w*=", line)]


def test_there_are_units_for_hub_and_spoke_and_a_template():
    assert [u.name for u in UNITS] == ["l2vpn-hub.service", "l2vpn-spoke.service",
                                       "l2vpn@.service"]


def service_section(unit: Path) -> dict[str, str]:
    text = unit.read_text().split("[Service]", 1)[1].split("[Install]", 1)[0]
    return dict(line.split("=", 1) for line in text.splitlines()
                if line and not line.startswith("#"))


def test_every_unit_is_type_notify_with_a_watchdog_and_the_same_hardening():
    sections = [service_section(u) for u in UNITS]
    for unit, sec in zip(UNITS, sections):
        assert sec["Type"] == "notify" and int(sec["WatchdogSec"]) > 0, unit.name
        assert sec["DeviceAllow"] == "/dev/net/tun rw", unit.name
        assert sec["ProtectSystem"] == "strict" and sec["NoNewPrivileges"] == "yes"
        assert set(sec["CapabilityBoundingSet"].split()) >= {"CAP_NET_ADMIN"}
        assert "AF_NETLINK" in sec["RestrictAddressFamilies"].split()
    # Only what runs and a hub's descriptor limit may differ between them.
    hardening = [{k: v for k, v in sec.items() if not k.startswith("Exec")
                  and k != "LimitNOFILE"} for sec in sections]
    assert all(h == hardening[0] for h in hardening[1:]), \
        "the units' [Service] settings other than Exec* and LimitNOFILE differ"


def test_every_unit_runs_l2vpn_from_the_readme_venv():
    l2vpn = readme_venv() + "/bin/l2vpn"
    for unit in UNITS:
        lines = exec_lines(unit)
        assert lines, f"{unit.name} has no Exec lines"
        for line in lines:
            assert line.split()[0] == l2vpn, f"{unit.name}: {line} (README installs {l2vpn})"


def test_units_check_then_run_the_same_config():
    verbs = {"l2vpn-hub": "hub", "l2vpn-spoke": "spoke", "l2vpn@": "run"}
    for unit in UNITS:
        pre, start = exec_lines(unit)[:2]
        cfg = start.split("-c", 1)[1].split()[0]
        assert pre.split()[1:] == ["check", "-c", cfg], unit.name
        assert start.split()[1] == verbs[unit.stem], unit.name
        assert cfg.startswith("/etc/l2vpn/"), unit.name
    assert "/etc/l2vpn/%i.yaml" in (REPO / "configs" / "l2vpn@.service").read_text()
