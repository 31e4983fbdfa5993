"""pcapng blocks read back by scapy's reader, and their framing checked by hand."""

from scapy.layers.l2 import ARP, Ether
from scapy.utils import PcapNgReader

from l2vpn import pcapng


def capture(tmp_path):
    f1 = bytes(Ether(src="02:00:00:00:00:0a", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="198.19.0.10"))
    f2 = bytes(Ether(src="02:00:00:00:00:0b", dst="02:00:00:00:00:0a") / (b"y" * 3))
    data = (pcapng.section_header() + pcapng.interface("site-a", "l2vpn port site-a") +
            pcapng.packet(0, 1796299957.25, f1, pcapng.INBOUND) +
            pcapng.interface("site-b") +
            pcapng.packet(1, 1796299958.5, f2, pcapng.OUTBOUND))
    path = tmp_path / "cap.pcapng"
    path.write_bytes(data)
    return path, [f1, f2]


def test_scapy_reads_back_frames_interfaces_times_and_directions(tmp_path):
    path, frames = capture(tmp_path)
    with PcapNgReader(str(path)) as reader:
        got = list(reader)
    assert [bytes(p) for p in got] == frames
    assert [float(p.time) for p in got] == [1796299957.25, 1796299958.5]
    assert [p.sniffed_on for p in got] == ["site-a", "site-b"]
    assert [p.direction for p in got] == [pcapng.INBOUND, pcapng.OUTBOUND]
    assert [i[0] for i in reader.interfaces] == [pcapng.LINKTYPE_ETHERNET] * 2


def test_every_block_is_32_bit_aligned_and_its_lengths_agree(tmp_path):
    path, _ = capture(tmp_path)
    data = path.read_bytes()
    p = 0
    kinds = []
    while p < len(data):
        kind = int.from_bytes(data[p:p + 4], "little")
        length = int.from_bytes(data[p + 4:p + 8], "little")
        assert length % 4 == 0
        assert int.from_bytes(data[p + length - 4:p + length], "little") == length
        kinds.append(kind)
        p += length
    assert p == len(data)
    assert kinds == [0x0A0D0D0A, 1, 6, 1, 6]


def test_statistics_comments_and_split_for_a_live_reader(tmp_path):
    path, frames = capture(tmp_path)
    data = (pcapng.section_header(comment="waiting for site-c") + path.read_bytes()[len(pcapng.section_header()):] +
            pcapng.statistics(0, 1796299959.0, 1796299957.0, 7, 3))
    blocks, used = pcapng.split(data[:-5])             # the last block not whole yet
    assert used == len(data) - len(pcapng.statistics(0, 0, 0, 0, 0))
    blocks, used = pcapng.split(data)
    assert used == len(data)
    assert [k for k, _ in blocks] == [pcapng.SHB, pcapng.IDB, pcapng.EPB, pcapng.IDB,
                                      pcapng.EPB, pcapng.ISB]
    assert pcapng.comment_of(blocks[0][1]) == "waiting for site-c"
    assert pcapng.dropped_of(blocks[-1][1]) == 3
    path.write_bytes(data)
    with PcapNgReader(str(path)) as reader:
        assert [bytes(p) for p in reader] == frames
