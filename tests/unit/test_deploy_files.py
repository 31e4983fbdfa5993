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


def test_there_are_units_for_hub_and_spoke():
    assert [u.name for u in UNITS] == ["l2vpn-hub.service", "l2vpn-spoke.service"]


def test_every_unit_runs_l2vpn_from_the_readme_venv():
    l2vpn = readme_venv() + "/bin/l2vpn"
    for unit in UNITS:
        lines = exec_lines(unit)
        assert lines, f"{unit.name} has no Exec lines"
        for line in lines:
            assert line.split()[0] == l2vpn, f"{unit.name}: {line} (README installs {l2vpn})"


def test_units_check_then_run_the_same_config():
    for unit in UNITS:
        role = unit.stem.removeprefix("l2vpn-")
        pre, start = exec_lines(unit)[:2]
        cfg = start.split("-c", 1)[1].split()[0]
        assert pre.split()[1:] == ["check", "-c", cfg], unit.name
        assert start.split()[1] == role, unit.name
        assert cfg.startswith("/etc/l2vpn/"), unit.name
