"""Probes of the kernel networking peers fastpath's benchmarks compare against: ipip and
gre tunnel links, IPVS, and SYNPROXY rules through nft and iptables. Links and rules are
made in the session's scratch namespace, never in the host's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from fastpath.core.namespaces import netns_context
from fastpath.doctor.checks import (
    ROOT,
    Check,
    _kernel_feature_fix,
    _last_lines,
    _ok,
    _run,
    _warn,
)
from fastpath.doctor.session import DoctorSession, _maybe_session
from fastpath.dpdk.sysfs import Host


def probe_tunnels(session: DoctorSession | None = None, root: Path = ROOT) -> Check:
    name = "ipip-gre"
    from pyroute2.netlink.exceptions import NetlinkError

    from fastpath.netns.builder import iproute_in

    kinds = {
        "ipip": {"ipip_local": "192.0.2.1", "ipip_remote": "192.0.2.2"},
        "gre": {"gre_local": "192.0.2.1", "gre_remote": "192.0.2.2"},
    }
    results: dict[str, str] = {}
    with _maybe_session(session) as s, iproute_in(s.netns()) as ipr:
        for kind, attrs in kinds.items():
            ifname = f"fpdoc-{kind}"
            try:
                ipr.link("add", ifname=ifname, kind=kind, **attrs)
                results[kind] = "ok"
                ipr.link("del", ifname=ifname)
            except NetlinkError as exc:
                results[kind] = os.strerror(exc.code)
    missing = [k for k, v in results.items() if v != "ok"]
    detail = ", ".join(f"{k}: {v}" for k, v in results.items())
    if not missing:
        return _ok(name, f"created and deleted {' and '.join(results)} links ({detail})", **results)
    configs = {"ipip": ("CONFIG_NET_IPIP", "ipip"), "gre": ("CONFIG_NET_IPGRE", "ip_gre")}
    return _warn(
        name,
        f"kernel lacks {' and '.join(missing)} ({detail}): the load balancer's "
        f"{'/'.join(missing)} mode can only be verified by golden packets",
        _kernel_feature_fix(root, *(configs[k] for k in missing)),
        **results,
    )


def probe_ipvs(root: Path = ROOT) -> Check:
    name = "ipvs"
    present = Host(root).exists("/proc/net/ip_vs")
    if present:
        return _ok(name, "IPVS present (/proc/net/ip_vs)", present=True)
    return _warn(
        name,
        "kernel lacks IPVS (no /proc/net/ip_vs): benchmarks cannot run IPVS beside the XDP load balancer",
        _kernel_feature_fix(root, ("CONFIG_IP_VS", "ip_vs")),
        present=False,
    )


SYNPROXY_NFT = """\
table inet fpdoc {
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 80 ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm
    }
}
"""


IPTABLES_SYNPROXY = (
    "-w -A INPUT -p tcp --dport 80 -m conntrack --ctstate INVALID,UNTRACKED "
    "-j SYNPROXY --sack-perm --timestamp --wscale 7 --mss 1460"
).split()


def probe_synproxy(session: DoctorSession | None = None) -> Check:
    name = "synproxy"
    nft, iptables = shutil.which("nft"), shutil.which("iptables")
    data: dict[str, Any] = {"nft": nft, "iptables": iptables}
    if nft is None and iptables is None:
        return _warn(
            name,
            "neither nft nor iptables installed: no SYNPROXY peer for the SYN guard benchmark",
            "apt install nftables iptables",
            **data,
        )
    with _maybe_session(session) as s, netns_context(s.netns()):
        # Children inherit the thread's namespace: these rules never touch the host's tables.
        if nft is not None:
            data["nft_version"] = _run([nft, "--version"])[1]
            rc, _, err = _run([nft, "-f", "-"], stdin=SYNPROXY_NFT)
            data["nft_synproxy"] = rc == 0
            data["nft_error"] = _last_lines(err.splitlines(), 1) if rc else None
            if rc == 0:
                deleted = _run([nft, "delete", "table", "inet", "fpdoc"])[0] == 0
                data["nft_cleaned"] = deleted
        if iptables is not None:
            data["iptables_version"] = _run([iptables, "-V"])[1]
            rc, _, err = _run([iptables, *IPTABLES_SYNPROXY])
            data["iptables_synproxy"] = rc == 0
            data["iptables_error"] = _last_lines(err.splitlines(), 1) if rc else None
            if rc == 0:
                _run([iptables, "-w", "-F", "INPUT"])
    have = [t for t in ("nft", "iptables") if data.get(f"{t}_synproxy")]
    if have:
        versions = "; ".join(data[f"{t}_version"] for t in have)
        return _ok(
            name,
            f"SYNPROXY rule accepted by {' and '.join(have)} in a scratch namespace ({versions})",
            **data,
        )
    errors = "; ".join(e for e in (data.get("nft_error"), data.get("iptables_error")) if e)
    return _warn(
        name,
        f"SYNPROXY rejected: {errors}",
        "needs CONFIG_NFT_SYNPROXY / "
        "CONFIG_IP_NF_TARGET_SYNPROXY; without it the SYN guard has no kernel peer "
        "to compare against",
        **data,
    )
