"""802.1Q VLANs per port, Open vSwitch's way (access, trunk, native); pure.

Theory of operation
-------------------
Inside the hub every frame belongs to one VLAN, fixed at ingress by `ingress_vlan()`
from the port's policy and the frame's outer tag, and MACs are learnt per (VLAN, MAC).
The frame's bytes stay as the ingress port gave them; `egress()` then makes them fit
each port they leave by: untouched, tag inserted, VID rewritten, tag stripped, or not
carried (None). `carries()` says which ports a flood of a VLAN may reach.

  port          frame in            VLAN            frame out in VLAN v
  access V      untagged / VID 0    V               v == V: untagged
                tagged (VID != 0)   DROP
  trunk A, N    tagged, VID in A+N  VID             v == N: untagged
                untagged / VID 0    N (DROP if      v in A: tagged v
                                    no native)
  transparent   tagged, VID v       v (1-4095)      UNTAGGED: as it came
  (no policy)   untagged / VID 0    UNTAGGED (0)    v: tagged v

- A trunk carries A ∪ {N}, as Open vSwitch's native-untagged port does whether or not
  `trunks` lists N; a frame tagged N on it is accepted, in VLAN N.
- A transparent port is a trunk of every VLAN whose own untagged traffic is a VLAN of
  its own, UNTAGGED, which no access or trunk port carries. Among transparent ports
  every frame passes exactly as it came (today's behaviour, priority tags and VID 4095
  included). A frame of VLAN V leaves one tagged V even if it arrived untagged on an
  access port: so the reply, tagged V, finds its way back into V (kept untagged, it
  would come back in UNTAGGED and never reach the access port).
- Priority tags (VID 0) count as untagged at ingress but are not removed there: the PCP
  survives onto any port where the frame leaves tagged, and the tag is stripped where
  it leaves untagged (Open vSwitch with `priority-tags` off, its default). A rewritten
  tag keeps its PCP and DEI; an inserted one has PCP `pcp` (0 in `egress`).
- Only TPID 0x8100 is a tag here, and only the outer one is read or changed. 802.1ad
  (0x88A8) is an ethertype like any other: such a frame is untagged to this module, and
  leaving a trunk tagged it gets an 802.1Q tag outside its 802.1ad one.
- A frame whose 0x8100 tag is cut short (fewer than 4 bytes after the TPID) is dropped
  by access and trunk ports and is UNTAGGED on a transparent one.

Frames may lead with a virtio-net header (`offset` == VNET_HDR_LEN; see offload.py).
Inserting or removing 4 bytes at Ethernet offset 12 moves every header field that
points past the MACs: csum_start (a position) and hdr_len (a length), each by 4, so a
GSO super-frame still segments right in offload.to_plain() and in the kernel. Plain
frames (`offset` 0) have no such header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from l2vpn.frame import TPID_8021Q, VLAN_HLEN, VNET_HDR_LEN

ACCESS, TRUNK = "access", "trunk"
VID_MIN, VID_MAX = 1, 4094

UNTAGGED = 0   # the VLAN of untagged frames on transparent ports
DROP = -1      # ingress_vlan(): the port does not take this frame

_TPID = TPID_8021Q   # its bytes, 0x81 0x00, are compared as literals on the hot path
_TAG = struct.Struct(">HH")
_U16LE = struct.Struct("<H")
_MACS = 12     # where a tag goes: after dst and src
_HDR_LEN_AT = 2      # virtio-net header fields (little-endian u16) that count from the
_CSUM_START_AT = 6   # Ethernet header, so move when a tag comes or goes


@dataclass(frozen=True)
class VlanPolicy:
    """One port's `vlan:` setting: access with `vid`, or trunk with `allowed` (and an
    optional `native` VLAN, carried untagged)."""

    mode: str
    vid: int | None = None
    allowed: frozenset = frozenset()
    native: int | None = None
    # Derived once, for the per-frame path.
    _untagged_in: int = field(init=False, repr=False, compare=False)   # VLAN or DROP
    _tagged_in: frozenset = field(init=False, repr=False, compare=False)
    _untagged_out: int | None = field(init=False, repr=False, compare=False)
    _tagged_out: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        allowed = frozenset(self.allowed)
        vids = allowed | {v for v in (self.vid, self.native) if v is not None}
        if not all(isinstance(v, int) and VID_MIN <= v <= VID_MAX for v in vids):
            raise ValueError(f"VLAN ids are 1-4094: {self!r}")
        if self.mode == ACCESS:
            if self.vid is None or allowed or self.native is not None:
                raise ValueError(f"an access port has a vid and nothing else: {self!r}")
            derived = (self.vid, frozenset(), self.vid, frozenset())
        elif self.mode == TRUNK:
            if self.vid is not None:
                raise ValueError(f"a trunk has allowed and native, not vid: {self!r}")
            if not vids:
                raise ValueError(f"a trunk with no allowed and no native VLAN carries "
                                 f"nothing: {self!r}")
            native = DROP if self.native is None else self.native
            derived = (native, vids, self.native, allowed - {self.native})
        else:
            raise ValueError(f"VLAN mode {ACCESS!r} or {TRUNK!r}, not {self.mode!r}")
        set_ = object.__setattr__
        set_(self, "allowed", allowed)
        for name, value in zip(("_untagged_in", "_tagged_in", "_untagged_out",
                                "_tagged_out"), derived):
            set_(self, name, value)

    @property
    def vlans(self) -> frozenset:
        """Every VLAN the port carries."""
        if self._untagged_out is None:
            return self._tagged_out
        return self._tagged_out | {self._untagged_out}


def parse_vids(items) -> frozenset:
    """VIDs and "a-b" ranges (1-4094) -> the set of VIDs; ValueError says what is wrong."""
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError("a non-empty list of VLAN ids 1-4094 and \"a-b\" ranges")
    vids = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            low = high = item
        elif isinstance(item, str) and item.count("-") == 1 and \
                all(p.strip().isdigit() for p in item.split("-")):
            low, high = (int(p) for p in item.split("-"))
        else:
            raise ValueError(f"VLAN ids 1-4094 and \"a-b\" ranges, not {item!r}")
        if not VID_MIN <= low <= high <= VID_MAX:
            raise ValueError(f"VLAN ids 1-4094 and \"a-b\" ranges with a <= b, not {item!r}")
        vids.update(range(low, high + 1))
    return frozenset(vids)


def ingress_vlan(policy: VlanPolicy | None, frame, offset: int) -> int:
    """The VLAN of a frame read from a port with `policy`: a VID, UNTAGGED or DROP."""
    t = offset + _MACS
    try:
        if frame[t] != 0x81 or frame[t + 1]:   # not TPID 0x8100: untagged
            return UNTAGGED if policy is None else policy._untagged_in
    except IndexError:                         # a runt (the switch drops it)
        return UNTAGGED if policy is None else policy._untagged_in
    if len(frame) < t + 6:                     # a tag cut short
        return UNTAGGED if policy is None else DROP
    vid = ((frame[t + 2] & 0x0F) << 8) | frame[t + 3]
    if policy is None:
        return vid
    if vid == 0:
        return policy._untagged_in
    return vid if vid in policy._tagged_in else DROP


def carries(policy: VlanPolicy | None, vlan: int) -> bool:
    """True if frames of `vlan` may leave a port with `policy` (flood lists)."""
    if policy is None:
        return vlan >= 0
    return vlan == policy._untagged_out or vlan in policy._tagged_out


def egress(policy: VlanPolicy | None, vlan: int, frame, offset: int):
    """`frame` (of `vlan`, as it came in) made fit to leave a port with `policy`: the same
    object if it fits as it is, a new frame if its tag must change, None if not carried."""
    if policy is None:
        if vlan <= UNTAGGED:
            return frame if vlan == UNTAGGED else None
        want = vlan
    elif vlan == policy._untagged_out:
        want = 0
    elif vlan in policy._tagged_out:
        want = vlan
    else:
        return None
    t = offset + _MACS
    tagged = len(frame) >= t + 6 and frame[t] == 0x81 and frame[t + 1] == 0   # _tagged()
    if not want:
        return untag(frame, offset) if tagged else frame
    if not tagged:
        return tag(frame, want, offset)
    tci = (frame[t + 2] << 8) | frame[t + 3]
    if tci & 0x0FFF == want:
        return frame
    out = bytearray(frame)
    out[t + 2] = (tci >> 8) & 0xF0 | want >> 8   # keep PCP and DEI
    out[t + 3] = want & 0xFF
    return out


def _tagged(frame, t: int) -> bool:
    """True if a whole 802.1Q tag (and the ethertype after it) starts at `t`."""
    return len(frame) >= t + 6 and frame[t] == 0x81 and frame[t + 1] == 0


def tag(frame, vid: int, offset: int = 0, pcp: int = 0) -> bytearray:
    """`frame` with an 802.1Q tag (`vid`, `pcp`) put in front of its ethertype; a vnet
    header (`offset` VNET_HDR_LEN) gets csum_start and hdr_len moved past the tag."""
    if not 0 <= vid <= 4095 or not 0 <= pcp <= 7:
        raise ValueError(f"VID 0-4095 and PCP 0-7, not {vid}/{pcp}")
    t = offset + _MACS
    if len(frame) < t + 2:
        raise ValueError(f"a {len(frame)}-byte frame has no ethertype at {t}")
    out = bytearray(frame)
    out[t:t] = _TAG.pack(_TPID, pcp << 13 | vid)
    if offset:
        _move(out, offset, VLAN_HLEN)
    return out


def untag(frame, offset: int = 0) -> bytearray:
    """`frame` without its outer 802.1Q tag; a vnet header (`offset` VNET_HDR_LEN) gets
    csum_start and hdr_len moved back. ValueError if there is no such tag."""
    t = offset + _MACS
    if not _tagged(frame, t):
        raise ValueError("the frame has no 802.1Q tag to remove")
    out = bytearray(frame)
    del out[t:t + VLAN_HLEN]
    if offset:
        _move(out, offset, -VLAN_HLEN)
    return out


def _move(out: bytearray, offset: int, delta: int) -> None:
    """Shift the vnet header's csum_start (a position) and hdr_len (a length) by `delta`
    where they reach past the MACs: beyond byte 12 once tagged, beyond the tag untagged."""
    if offset != VNET_HDR_LEN:
        raise ValueError(f"a frame starts at 0 or after a vnet header ({VNET_HDR_LEN}), "
                         f"not at {offset}")
    # a position >= 12 moves with the bytes after the MACs; a length > 12 covers them
    tag_room = VLAN_HLEN if delta < 0 else 0
    for at, first in ((_CSUM_START_AT, _MACS + tag_room),
                      (_HDR_LEN_AT, _MACS + 1 + tag_room)):
        value = _U16LE.unpack_from(out, at)[0]
        if first <= value <= 0xFFFF - delta:
            _U16LE.pack_into(out, at, value + delta)
