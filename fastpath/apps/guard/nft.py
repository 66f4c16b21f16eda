"""The netfilter half of the SYN guard: SYNPROXY rules for the ACKs XDP has vetted.

XDP answers SYNs with cookie SYN-ACKs and never lets the SYN reach the stack, so the
client's ACK arrives for a connection the kernel has never seen. With conntrack's
`nf_conntrack_tcp_loose` at 0 that ACK is INVALID, and the SYNPROXY statement takes it:
it checks the cookie (the kernel's own format, which the XDP helper issued), then opens the
connection to the local server and splices the two halves with sequence adjustment.

One nftables table per guarded interface, named after it, in the interface's namespace;
the protected ports are a named set, so changing them is one atomic set update:

    table inet fastpath_synguard_eth0_2 {
        set cookie_ports { type inet_service; elements = { 80, 443 } }
        chain input {
            type filter hook input priority filter; policy accept;
            iifname "eth0" tcp dport @cookie_ports ct state invalid,untracked synproxy ...
            iifname "eth0" tcp dport @cookie_ports ct state invalid drop
        }
    }

With `--fragments pass` XDP lets first fragments to protected ports through, and the SYN
they reassemble into would be NEW to conntrack, pass the rules above and reach the server
as a half-open connection: a fragmented SYN flood would bypass the guard. Two more chains
close that. Before conntrack reassembles (defrag hooks at priority -400), `fragments`
sets one bit of the packet mark (FRAG_MARK, added to the mark, no other bit touched) on the
first fragment of every TCP datagram from the interface; the reassembled packet keeps the
first fragment's metadata, so right after reassembly `reassembled` finds the bit on a SYN
to a cookie port and exempts it from conntrack (`notrack`, as SYNPROXY set-ups do for
every SYN), and clears the bit on every packet again. The input rule then answers that
SYN like any untracked one: SYNPROXY sends a cookie SYN-ACK and drops it, and the client's
ACK takes the same path as after an XDP SYN-ACK. A reassembled IPv6 SYN is dropped there
instead (see _fragment_chains):

        chain fragments {
            type filter hook prerouting priority -450; policy accept;
            iifname "eth0" ip frag-off & 0x3fff == 0x2000 meta l4proto tcp meta mark set mark | 0x00400000
            iifname "eth0" frag frag-off 0 frag more-fragments 1 meta l4proto tcp meta mark set ...
        }
        chain reassembled {
            type filter hook prerouting priority -350; policy accept;
            iifname "eth0" meta mark & 0x00400000 != 0 meta nfproto ipv6 tcp dport @cookie_ports ... drop
            iifname "eth0" meta mark & 0x00400000 != 0 tcp dport @cookie_ports tcp flags ... syn notrack
            meta mark & 0x00400000 != 0 meta mark set meta mark & 0xffbfffff
        }
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fastpath.bpf import xdp
from fastpath.errors import CapabilityError, FastpathError
from fastpath.netns.procs import run_in_netns

TABLE_PREFIX = "fastpath_synguard_"
TCP_LOOSE = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"
CONNTRACK_FIX = "the kernel needs nf_conntrack (modprobe nf_conntrack)"
# The packet-mark bit that carries "reassembled from fragments" from before conntrack's
# defrag to right after it (set and cleared there; never seen by other rules).
FRAG_MARK = 0x00400000
# Before conntrack's defrag hooks (NF_IP_PRI_CONNTRACK_DEFRAG, -400), and after them but
# before the raw table (-300), so the user's raw rules see the mark already cleared.
PRIO_BEFORE_DEFRAG, PRIO_AFTER_DEFRAG = -450, -350


def require() -> None:
    if shutil.which("nft") is None:
        raise CapabilityError("the nft command is missing (SYN cookies need SYNPROXY rules)",
                              fix="apt-get install nftables, or attach with --no-cookies")


def table_name(ifname: str, ifindex: int) -> str:
    """`fastpath_synguard_<ifname>_<ifindex>`: unique per interface, a valid nft name."""
    return f"{TABLE_PREFIX}{re.sub(r'[^A-Za-z0-9_]', '_', ifname)}_{ifindex}"


def render(table: str, ifname: str, ports: Sequence[int], defines: Mapping[str, int],
           fragments: bool = False) -> str:
    """The table as an nft script (the caller prefixes what makes it an atomic replace);
    `fragments`: XDP passes first fragments, so reassembled SYNs get SYNPROXY too."""
    opts = [f"mss {int(defines.get('SG_MSS4', 1460))}"]
    wscale = int(defines.get("SG_WSCALE", 7))
    if wscale != 15:
        opts.append(f"wscale {wscale}")
    if int(defines.get("SG_TIMESTAMPS", 1)):
        opts.append("timestamp")
    if int(defines.get("SG_SACK", 1)):
        opts.append("sack-perm")
    elements = f"\n\t\telements = {{ {', '.join(str(p) for p in sorted(ports))} }}" if ports else ""
    name = ifname.replace('"', "")
    return (
        f"table inet {table} {{\n"
        f'\tcomment "fastpath SYN guard on {name}: SYNPROXY for ACKs whose cookie XDP checked"\n'
        f"\tset cookie_ports {{\n\t\ttype inet_service{elements}\n\t}}\n"
        + (_fragment_chains(name) if fragments else "")
        + f"\tchain input {{\n"
        f"\t\ttype filter hook input priority filter; policy accept;\n"
        f'\t\tiifname "{name}" tcp dport @cookie_ports ct state invalid,untracked '
        f"synproxy {' '.join(opts)}\n"
        f'\t\tiifname "{name}" tcp dport @cookie_ports ct state invalid drop\n'
        f"\t}}\n}}\n"
    )


def _fragment_chains(name: str) -> str:
    """Mark first TCP fragments before defrag; after it, drop the IPv6 SYNs they became,
    exempt the IPv4 ones from conntrack (so the input rule's SYNPROXY answers them) and
    clear the mark. The nft synproxy statement checks a segment's TCP checksum with the
    IPv4 routine (nf_ip_checksum), which a reassembled IPv6 segment fails: it would drop
    the SYN without an answer anyway. No IPv6 client fragments a SYN (it is far below the
    1280-byte minimum MTU), so only an attacker loses something."""
    mark = f"0x{FRAG_MARK:08x}"
    keep = f"0x{0xFFFFFFFF & ~FRAG_MARK:08x}"
    first = "meta l4proto tcp meta mark set meta mark | " + mark
    return (
        f"\tchain fragments {{\n"
        f"\t\ttype filter hook prerouting priority {PRIO_BEFORE_DEFRAG}; policy accept;\n"
        f'\t\tiifname "{name}" ip frag-off & 0x3fff == 0x2000 {first}\n'
        f'\t\tiifname "{name}" frag frag-off 0 frag more-fragments 1 {first}\n'
        f"\t}}\n"
        f"\tchain reassembled {{\n"
        f"\t\ttype filter hook prerouting priority {PRIO_AFTER_DEFRAG}; policy accept;\n"
        f'\t\tiifname "{name}" meta mark & {mark} != 0 meta nfproto ipv6 tcp dport @cookie_ports '
        f"tcp flags & (syn|ack) == syn drop\n"
        f'\t\tiifname "{name}" meta mark & {mark} != 0 tcp dport @cookie_ports '
        f"tcp flags & (syn|ack) == syn notrack\n"
        f"\t\tmeta mark & {mark} != 0 meta mark set meta mark & {keep}\n"
        f"\t}}\n"
    )


def _nft(netns: str | None, args: Sequence[str],
         script: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["nft", *args]
    if netns is not None:
        return run_in_netns(netns, argv, input=script, check=False, timeout=30)
    return subprocess.run(argv, input=script, capture_output=True, text=True, timeout=30, check=False)


def _fail(what: str, res: subprocess.CompletedProcess[str]) -> FastpathError:
    lines = [ln.strip() for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
    return FastpathError(f"{what} failed: {lines[0] if lines else f'nft exit {res.returncode}'}",
                         fix="check that nftables and the kernel's SYNPROXY support are there "
                             "(fastpath doctor)")


def install(netns: str | None, table: str, ifname: str, ports: Sequence[int],
            defines: Mapping[str, int], fragments: bool = False) -> None:
    """Create or replace the table in one nft transaction (no moment without rules)."""
    script = (f"add table inet {table}\ndelete table inet {table}\n"
              + render(table, ifname, ports, defines, fragments))
    res = _nft(netns, ["-f", "-"], script)
    if res.returncode != 0:
        raise _fail("installing the SYNPROXY rules", res)


def exists(netns: str | None, table: str) -> bool:
    return _nft(netns, ["list", "table", "inet", table]).returncode == 0


def remove(netns: str | None, table: str) -> bool:
    """Delete the table; False when it was not there."""
    if not exists(netns, table):
        return False
    res = _nft(netns, ["delete", "table", "inet", table])
    if res.returncode != 0:
        raise _fail(f"removing nft table {table}", res)
    return True


def ports(netns: str | None, table: str) -> list[int]:
    """The ports in the table's cookie_ports set (what SYNPROXY guards right now)."""
    res = _nft(netns, ["list", "set", "inet", table, "cookie_ports"])
    if res.returncode != 0:
        return []
    m = re.search(r"elements\s*=\s*\{([^}]*)\}", res.stdout)
    return sorted(int(p) for p in re.findall(r"\d+", m.group(1))) if m else []


def set_tcp_loose(netns: str | None, value: int) -> int:
    """Set nf_conntrack_tcp_loose in `netns`; returns the previous value. At 0 conntrack
    does not pick up mid-stream ACKs as established, so SYNPROXY sees the handshake ACK."""
    return swap_sysctl(netns, TCP_LOOSE, lambda _old: value, fix=CONNTRACK_FIX)


def swap_sysctl(netns: str | None, path: str, value: Callable[[int], int], fix: str = "") -> int:
    """Set the integer sysctl at `path` in `netns` to `value(old)` (not written when equal);
    returns the old value. CapabilityError when it cannot be read or written."""
    with xdp.in_netns(netns):
        try:
            old = int(Path(path).read_text().split()[0])
            new = value(old)
            if new != old:
                Path(path).write_text(f"{new}\n")
        except OSError as exc:
            raise CapabilityError(f"cannot set {path}: {exc.strerror}", fix=fix or None) from None
    return old
