// SPDX-License-Identifier: GPL-2.0
/*
 * synflood_floors - the floors of the `synflood` benchmark: the least any defence can do
 * with a flood frame, measured right before each defence so its own cost can be told apart
 * from the lab's (generator, veth, bridge, the answer's way back).
 *
 * - drop_all: drop every frame; the floor of the drop defences (and, on the attacker, the
 *   cheapest way to ignore the SYN-ACKs to spoofed addresses that come back);
 * - reflect: send every frame straight back with its MAC addresses swapped, as a SYN-ACK
 *   would go; the floor of the answering defences (XDP cookies, kernel cookies, SYNPROXY),
 *   which all pay for that transmission alike.
 *
 * Techniques: no parsing beyond the Ethernet header, no maps.
 * Minimum kernel: 5.9 (attached through an XDP bpf_link).
 * Usage: fastpath/bench/scenarios/synflood.py attaches them in the flood lab.
 * Manual test: fastpath bench synflood --quick
 */
#include <uapi/linux/bpf.h>

#define ETH_ALEN 6
#define ETH_HLEN 14

int drop_all(struct xdp_md *ctx)
{
	return XDP_DROP;
}

int reflect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	unsigned char tmp[ETH_ALEN];

	if (data + ETH_HLEN > data_end)
		return XDP_DROP;
	__builtin_memcpy(tmp, data, ETH_ALEN);
	__builtin_memcpy(data, data + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(data + ETH_ALEN, tmp, ETH_ALEN);
	return XDP_TX;
}
