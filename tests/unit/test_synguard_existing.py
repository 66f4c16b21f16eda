"""fastpath/apps/guard/existing.py without privileges: the ctnetlink request it sends for a carried-over
connection (decoded by pyroute2's own conntrack message class), the sock_diag request, and
the IPv6 frame of the flood generator."""

from __future__ import annotations

import ipaddress
import socket
import struct

from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from fastpath.apps.guard import existing
from fastpath.labs import flood


def _conn(client: str, server: str, state: int = existing.TCP_ESTABLISHED) -> existing.Connection:
    return existing.Connection(ipaddress.ip_address(client), 40000, ipaddress.ip_address(server), 8080, state)


def _decode(raw: bytes) -> nfct_msg:
    length, msg_type, flags, _seq, _pid = struct.unpack_from("=IHHII", raw)
    assert length == len(raw)
    assert msg_type == existing.NFNL_SUBSYS_CTNETLINK << 8 | existing.IPCTNL_MSG_CT_NEW
    assert flags == (existing.NLM_F_REQUEST | existing.NLM_F_ACK | existing.NLM_F_CREATE |
                     existing.NLM_F_EXCL)
    msg = nfct_msg(raw)
    msg.decode()
    return msg


def _tuple(msg: nfct_msg, name: str) -> tuple:
    t = msg.get_attr(name)
    ip, proto = t.get_attr("CTA_TUPLE_IP"), t.get_attr("CTA_TUPLE_PROTO")
    addrs = [v for k, v in ip["attrs"]]
    return (*addrs, proto.get_attr("CTA_PROTO_NUM"), proto.get_attr("CTA_PROTO_SRC_PORT"),
            proto.get_attr("CTA_PROTO_DST_PORT"))


def test_conntrack_entry_is_the_one_a_mid_stream_pickup_makes():
    raw = existing.conntrack_message(_conn("10.66.0.1", "10.66.0.2"), timeout=432000)
    msg = _decode(raw)
    assert msg["nfgen_family"] == socket.AF_INET
    assert _tuple(msg, "CTA_TUPLE_ORIG") == ("10.66.0.1", "10.66.0.2", 6, 40000, 8080)
    assert _tuple(msg, "CTA_TUPLE_REPLY") == ("10.66.0.2", "10.66.0.1", 6, 8080, 40000)
    assert msg.get_attr("CTA_TIMEOUT") == 432000
    assert msg.get_attr("CTA_STATUS") == existing.STATUS_CHOICES[0]
    assert existing.STATUS_CHOICES == (
        existing.IPS_SEEN_REPLY | existing.IPS_ASSURED | existing.IPS_CONFIRMED,
        existing.IPS_SEEN_REPLY | existing.IPS_ASSURED)
    tcp = msg.get_attr("CTA_PROTOINFO").get_attr("CTA_PROTOINFO_TCP")
    assert tcp.get_attr("CTA_PROTOINFO_TCP_STATE") == existing.CT_ESTABLISHED
    liberal = existing.IP_CT_TCP_FLAG_SACK_PERM | existing.IP_CT_TCP_FLAG_BE_LIBERAL
    assert tcp.get_attr("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL") == (liberal, liberal)
    assert tcp.get_attr("CTA_PROTOINFO_TCP_FLAGS_REPLY") == (liberal, liberal)


def test_conntrack_entry_v6_and_closing_states():
    msg = _decode(existing.conntrack_message(_conn("fd66::1", "fd66::2", existing.TCP_CLOSE_WAIT), 60))
    assert msg["nfgen_family"] == socket.AF_INET6
    assert _tuple(msg, "CTA_TUPLE_ORIG") == ("fd66::1", "fd66::2", 6, 40000, 8080)
    tcp = msg.get_attr("CTA_PROTOINFO").get_attr("CTA_PROTOINFO_TCP")
    assert tcp.get_attr("CTA_PROTOINFO_TCP_STATE") == existing.CT_CLOSE_WAIT
    assert 3 not in existing.CT_STATE and 12 not in existing.CT_STATE, "no request sockets (SYN-RECV)"
    assert existing.CT_STATE[existing.TCP_FIN_WAIT1] == existing.CT_FIN_WAIT
    assert set(existing.CT_STATE.values()) <= set(existing.CT_TIMEOUT_SYSCTL)


def test_ipv4_mapped_sockets_come_out_as_ipv4():
    assert existing._unmap(ipaddress.ip_address("::ffff:10.66.0.1")) == ipaddress.ip_address("10.66.0.1")
    assert existing._unmap(ipaddress.ip_address("fd66::1")) == ipaddress.ip_address("fd66::1")


def test_sock_diag_request_asks_for_every_carried_state():
    req = existing._diag_request(socket.AF_INET6)
    assert len(req) == 56  # struct inet_diag_req_v2
    family, proto, _ext, _pad, states = struct.unpack_from("=BBBBI", req)
    assert (family, proto) == (socket.AF_INET6, socket.IPPROTO_TCP)
    assert states == sum(1 << s for s in existing.CT_STATE)
    assert not states & (1 << 10 | 1 << 6 | 1 << 3 | 1 << 12), "not LISTEN, TIME-WAIT or SYN-RECV"


def test_flood_frame_v6_is_a_valid_syn():
    raw = flood.syn_frame(b"\x02" * 6, b"\x04" * 6, "fd99::", "fd66::2", 8080)
    pkt = Ether(raw)
    assert pkt[IPv6].plen == 24 and pkt[IPv6].nh == 6 and pkt[IPv6].dst == "fd66::2"
    assert pkt["TCP"].flags == "S" and pkt["TCP"].options == [("MSS", 1460)]
    assert len(raw) == 14 + 40 + 24


def _dumped(status: int, tsoff: int | None = None, dport: int = 8080, state: int = 3) -> bytes:
    """A conntrack entry as a dump returns it (after its netlink header), encoded by pyroute2."""
    msg = nfct_msg()
    msg["nfgen_family"] = socket.AF_INET
    proto = [("CTA_PROTO_NUM", socket.IPPROTO_TCP), ("CTA_PROTO_SRC_PORT", 40000),
             ("CTA_PROTO_DST_PORT", dport)]
    tcp = [("CTA_PROTOINFO_TCP_STATE", state)]
    attrs = [("CTA_TUPLE_ORIG", {"attrs": [("CTA_TUPLE_PROTO", {"attrs": proto})]}),
             ("CTA_STATUS", status),
             ("CTA_PROTOINFO", {"attrs": [("CTA_PROTOINFO_TCP", {"attrs": tcp})]})]
    if tsoff is not None:
        attrs.append(("CTA_SYNPROXY", {"attrs": [("CTA_SYNPROXY_ISN", 1), ("CTA_SYNPROXY_ITS", 2),
                                                 ("CTA_SYNPROXY_TSOFF", tsoff)]}))
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data[16:msg["header"]["length"]])


def test_a_connection_is_spliced_when_synproxy_translates_its_sequence_or_timestamps():
    """What keeps on-demand rules armed: SYNPROXY translating a live connection's sequence
    numbers (IPS_SEQ_ADJUST) or, with a sequence offset of 0 (a server that answered with a
    cookie equal to the guard's), its timestamps (CTA_SYNPROXY's TSOFF)."""
    ports = {8080}
    assert existing._spliced_entry(_dumped(existing.IPS_SEQ_ADJUST), ports)
    assert existing._spliced_entry(_dumped(0, tsoff=5), ports)
    assert not existing._spliced_entry(_dumped(0, tsoff=0), ports), "nothing translated"
    assert not existing._spliced_entry(_dumped(existing.IPS_CONFIRMED), ports), "not through SYNPROXY"
    assert not existing._spliced_entry(_dumped(existing.IPS_SEQ_ADJUST, dport=80), ports), "another port"
    assert not existing._spliced_entry(_dumped(existing.IPS_SEQ_ADJUST, state=existing.CT_TIME_WAIT), ports)
