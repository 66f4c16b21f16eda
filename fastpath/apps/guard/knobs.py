"""Namespace sysctls the SYN guard sets while it needs them, and gives back after.

- `nf_conntrack_tcp_loose` = 0 while the SYNPROXY rules are in: conntrack then leaves the
  cookie ACK INVALID, so SYNPROXY sees it (fastpath/apps/guard/nft.py).
- `net.ipv4.tcp_syncookies` >= 1 while the guard uses cookies at all. SYNs do reach the
  listener while the guard has cookies on: adaptive ports pass up to a window's threshold
  per CPU before they switch, and the SYNs that arrive while the on-demand rules arm.
  Under a spoofed flood those fill the listener's SYN queue with half-open connections
  (for `tcp_synack_retries` worth of retransmits). With syncookies at 0 the listener then
  drops the SYN with which SYNPROXY opens the server half of a connection the client
  already sees established, and SYNPROXY never sends it again: the connection hangs. At 1
  the kernel answers a SYN with a cookie only when the queue is full, so nothing changes
  while it is not.

Guards in one namespace share both. Only the guard that changed a sysctl keeps its old
value (under an option key of its state); when it goes while another guard there still
needs the setting it hands the value on, and the last one restores it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastpath.apps.guard import nft
from fastpath.bpf import xdp


@dataclass(frozen=True)
class Knob:
    key: str                     # the option key that keeps the value from before
    path: str
    want: Callable[[int], int]   # the value the guard needs, given the current one
    fix: str = ""


TCP_LOOSE = Knob("tcp_loose_was", nft.TCP_LOOSE, lambda _old: 0, nft.CONNTRACK_FIX)
SYNCOOKIES = Knob("syncookies_was", "/proc/sys/net/ipv4/tcp_syncookies", lambda old: max(old, 1))
KEYS = (TCP_LOOSE.key, SYNCOOKIES.key)


def hold(att: xdp.Attachment, knob: Knob, others: Sequence[xdp.Attachment]) -> int | None:
    """Make the sysctl what the guard needs in `att`'s namespace, unless `att` or one of
    `others` (guards there that need it too) already did. Returns the value it had when this
    call changed it (kept in att.options), else None."""
    if knob.key in att.options or any(knob.key in o.options for o in others):
        return None
    old = nft.swap_sysctl(att.netns, knob.path, knob.want, knob.fix)
    if knob.want(old) == old:
        return None
    att.options[knob.key] = old
    return old


def release(att: xdp.Attachment, knob: Knob, others: Sequence[xdp.Attachment]) -> None:
    """`att` no longer needs the sysctl: the first of `others` takes over the value from
    before (its state saved), or with none left it is restored."""
    was = att.options.pop(knob.key, None)
    if was is None:
        return
    if others:
        others[0].options[knob.key] = was
        xdp.save_state(others[0])
        return
    nft.swap_sysctl(att.netns, knob.path, lambda _now: int(str(was)), knob.fix)
