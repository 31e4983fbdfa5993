"""The README's main job, `./netns-lab/lab`, run as a user runs it: plain and with
`--vlans` (sites in VLAN 20 reach each other, the hub's TAP in VLAN 30 stays apart)."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parents[2] / "netns-lab" / "lab"


@pytest.mark.parametrize("args", [[], ["--vlans"]], ids=["plain", "vlans"])
def test_the_demo_lab_runs_and_its_pings_come_out_as_designed(args, tmp_path):
    env = dict(os.environ, L2VPN_LAB_PREFIX=f"l2d{uuid.uuid4().hex[:5]}-",
               L2VPN_LAB_DIR=str(tmp_path / "run"))     # not the user's own l2lab-* demo
    out = subprocess.run([sys.executable, str(LAB), "-c", "1", *args], capture_output=True,
                         text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "lab: all pings answered" in out.stdout
    pings = [line for line in out.stdout.splitlines() if line.strip().startswith("ping ")]
    assert len(pings) == 7
    apart = [line for line in pings if " apart " in line]
    if args:
        assert len(apart) == 3 and all("hub" in line for line in apart)
        assert "VLAN" in out.stdout and " 20 " in out.stdout and " 30 " in out.stdout
    else:
        assert apart == []
    assert "4 frames captured" in out.stdout
