"""l2vpn.offload against the running kernel's own software GSO, live (root).

netns-lab/gso_capture.py makes real super-frames through offloading TAPs and has the
kernel segment each (a vnet TAP bridged to a plain one), so whatever kernel runs the
suite is checked too, not only the one that made tests/unit/data/kernel_gso.json. Random
hand-made super-frames then go through the same reference: where the kernel makes frames
we must make the same bytes, and where it drops a frame we must raise OffloadError.
"""

import os
import random
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "netns-lab"))

import gso_capture  # noqa: E402
from l2vpn.offload import GSO_ECN, GSO_UDP_L4, OffloadError, to_plain  # noqa: E402

pytestmark = pytest.mark.netns

RANDOM_FRAMES = 1000


def ours(frame):
    """to_plain's frames as bytes, or None where it raises OffloadError."""
    try:
        return [bytes(f) for f in to_plain(frame)]
    except OffloadError:
        return None


def first_difference(a: list, b: list) -> str:
    if a is None or b is None:
        return f"kernel {'dropped it' if b is None else f'made {len(b)} frames'}, we " \
               f"{'refused it' if a is None else f'made {len(a)} frames'}"
    if len(a) != len(b):
        return f"we made {len(a)} frames, the kernel {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            at = next(j for j in range(min(len(x), len(y)) + 1) if x[j:j + 1] != y[j:j + 1])
            return f"frame {i} differs at byte {at}"
    return "equal"


@pytest.fixture(scope="module")
def kernel_doc():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return gso_capture.collect()


def test_the_capture_made_what_it_meant(kernel_doc):
    cases = {n: bytes.fromhex(c["vnet"]) for n, c in kernel_doc["cases"].items()}
    info = {n: gso_capture.parse(f) for n, f in cases.items()}
    assert info["tcp4_fin"]["tcp_flags"] & 0x01 and info["tcp6_fin"]["tcp_flags"] & 0x01
    assert info["tcp4_ecn_cwr"]["gso_type"] & GSO_ECN and info["tcp4_ecn_cwr"]["tcp_flags"] & 0x80
    assert info["tcp4_vlan"]["vlans"] == 1 and info["tcp4_qinq_fin"]["vlans"] == 2
    for name in ("tcp4", "tcp6", "tcp4_vlan", "tcp4_qinq_fin", "tcp4_ecn_cwr"):
        assert info[name]["gso_type"] and len(kernel_doc["cases"][name]["kernel"]) > 1, name
    for name in ("udp4_uso", "udp6_uso"):
        if name in info:
            assert info[name]["gso_type"] == GSO_UDP_L4, name


def test_to_plain_matches_this_kernel_on_real_and_edge_case_frames(kernel_doc):
    bad = []
    for name, case in kernel_doc["cases"].items():
        want = case["kernel"] and [bytes.fromhex(h) for h in case["kernel"]]
        got = ours(bytes.fromhex(case["vnet"]))
        if got != want:
            bad.append(f"{name}: {first_difference(got, want)}")
    assert not bad, f"kernel {kernel_doc['kernel']}:\n" + "\n".join(bad)


def _random_frame(rng: random.Random) -> bytes:
    udp = rng.random() < 0.35
    v6 = rng.random() < 0.5
    gso_size = rng.choice([rng.randrange(1, 80), rng.randrange(300, 1500)])
    whole = rng.choice([0, 1, 1, 2, 3, 4])
    payload = max(1, whole * gso_size + rng.randrange(0, gso_size + 1))
    tags = [(rng.choice([0x8100, 0x88A8]), rng.randrange(4096))
            for _ in range(rng.choice([0, 0, 1, 2]))]
    return gso_capture.build(
        rng, v6=v6, udp=udp, vlans=tags, payload=payload, gso_size=gso_size,
        ip_opts=rng.choice([0, 0, 4, 40]), ext_hdrs=rng.choice([(), (), (60,), (0, 43, 60)]),
        tcp_opts=rng.choice([0, 12, 12, 40]), tcp_flags=rng.randrange(256),
        needs_csum=rng.random() < 0.85, seed=rng.choice(["full", "full", "nolen", "random"]),
        ecn=not udp and rng.random() < 0.3, ip_id=rng.randrange(65536),
        len_field=rng.choice(["right", "right", "wrong"]))


def test_to_plain_matches_this_kernel_on_random_super_frames():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    seed = int(time.time())
    rng = random.Random(seed)
    bad = []
    with gso_capture.namespaces("seg") as (ns,), gso_capture.Segmenter(ns) as seg:
        for i in range(RANDOM_FRAMES):
            frame = _random_frame(rng)
            want, got = seg.segment(frame), ours(frame)
            if got != want:
                bad.append(f"#{i} {gso_capture.parse(frame)}: {first_difference(got, want)}\n"
                           f"    {frame.hex()}")
    assert not bad, f"seed {seed}: {len(bad)} of {RANDOM_FRAMES} differ:\n" + "\n".join(bad[:5])
