// SPDX-License-Identifier: GPL-2.0
/*
 * l2fwd_redirect - the XDP contender of the `l2fwd` benchmark: every frame that arrives on
 * one port leaves on the other, in the driver, with no DPDK and no stack.
 *
 * Techniques: a one-slot device map (the egress port), filled by the benchmark from inside
 * the forwarding namespace; bpf_redirect_map.
 * Minimum kernel: 4.14 (BPF_MAP_TYPE_DEVMAP); native XDP on veth needs 4.19.
 * Usage: fastpath/bench/scenarios/l2fwd.py attaches it to fwd:p0 and puts fwd:p1 in slot 0.
 * Manual test: fastpath bench l2fwd --quick
 */
#include <uapi/linux/bpf.h>

BPF_DEVMAP(egress, 1);

int xdp_redirect(struct xdp_md *ctx)
{
	return egress.redirect_map(0, 0);
}
