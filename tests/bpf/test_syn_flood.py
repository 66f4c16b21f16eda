"""The flood's live engine (bpf/syn_flood.c) without a wire: compiled with the lab's -D
flags, run through an ordinary BPF_PROG_TEST_RUN on the template SYN, every run must give a
valid SYN (checksums right) from a fresh random source inside the spoofed network. Live
frames themselves are refused on some hosts; the program is the same either way."""

from __future__ import annotations

import ipaddress
import os

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from fastpath.bpf import testrun
from fastpath.labs import flood

pytestmark = pytest.mark.bpf

CASES = [("10.99.0.0/16", "10.66.0.2"), ("192.0.2.0/24", "10.66.0.2"), ("fd99::/64", "fd66::2"),
         ("fd99:0:0:5:7::/80", "fd66::2")]


@pytest.mark.parametrize("options", [flood.MSS_ONLY, flood.LINUX_OPTIONS], ids=["mss", "linux"])
@pytest.mark.parametrize(("src_net", "dst"), CASES)
def test_every_run_makes_a_valid_syn_from_inside_the_network(src_net: str, dst: str, options: bytes) -> None:
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    net = ipaddress.ip_network(src_net)
    template = flood.syn_frame(b"\x02" * 6, b"\x04" * 6, str(net.network_address), dst, 8080, options)
    assert Ether(template)[TCP].dataofs * 4 == 20 + len(options)
    sources, ports = set(), set()
    with flood.load_program(net, 20 + len(options)) as prog:
        for _ in range(16):
            res = testrun.run_expect(prog.prog_fd, template, "XDP_TX", what="syn_flood")
            assert len(res.output) == len(template)
            pkt = Ether(res.output)
            layer = IP if net.version == 4 else IPv6
            ip, tcp = pkt[layer], pkt[TCP]
            assert ip.dst == dst and tcp.dport == 8080 and tcp.flags == "S"
            assert dict(tcp.options)["MSS"] == 1460
            if options == flood.LINUX_OPTIONS:
                assert [o[0] for o in tcp.options] == ["MSS", "SAckOK", "Timestamp", "NOP", "WScale"]
            assert ipaddress.ip_address(ip.src) in net
            assert tcp.sport >= 1024
            sources.add(ip.src)
            ports.add(tcp.sport)
            # Rebuilt without checksums, scapy computes them: they must be what the program wrote.
            fresh = Ether(res.output)
            if net.version == 4:
                del fresh[IP].chksum
            del fresh[TCP].chksum
            assert fresh.build() == res.output, "the program wrote a wrong checksum"
    assert len(sources) > 8 and len(ports) > 8, "sources and ports must be drawn at random"


def test_defines_cover_only_the_host_bits() -> None:
    assert flood.program_defines(ipaddress.ip_network("10.99.0.0/16")) == {
        "SRC_BASE": "0xa630000U", "SRC_MASK": "0xffffU"}
    v6 = flood.program_defines(ipaddress.ip_network("fd99:0:0:5:7::/80"))
    assert v6 == {"FLOOD_V6": 1, "SRC_BASE2": "0x70000U", "SRC_MASK2": "0xffffU",
                  "SRC_BASE3": "0x0U", "SRC_MASK3": "0xffffffffU"}


def test_a_template_of_another_length_is_a_define_and_bad_options_are_refused() -> None:
    net = ipaddress.ip_network("10.99.0.0/16")
    assert flood.program_defines(net, 40)["TCP_LEN"] == 40
    with pytest.raises(ValueError, match="4-byte words"):
        flood.syn_frame(b"\x02" * 6, b"\x04" * 6, "10.99.0.0", "10.66.0.2", 8080, b"\x01")
