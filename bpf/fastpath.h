/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fastpath.h - macros shared by every fastpath XDP program (kernel side only).
 *
 * FP_MAP declares a map. When the control plane passes -DFP_PIN_DIR="/sys/fs/bpf/..."
 * the map is pinned there: bcc opens the pin when it exists (so a re-attached program keeps
 * its conntrack and counters) and creates and pins it otherwise. Without FP_PIN_DIR (tests,
 * benchmarks) the map is private to the loaded program.
 */
#ifndef FASTPATH_COMMON_H
#define FASTPATH_COMMON_H

#ifdef FP_PIN_DIR
#define FP_MAP(type, key, leaf, name, size) \
	BPF_TABLE_PINNED(type, key, leaf, name, size, FP_PIN_DIR "/" #name)
#define FP_MAP_F(type, key, leaf, name, size, flags) \
	BPF_TABLE_PINNED(type, key, leaf, name, size, FP_PIN_DIR "/" #name, flags)
#else
#define FP_MAP(type, key, leaf, name, size) BPF_TABLE(type, key, leaf, name, size)
#define FP_MAP_F(type, key, leaf, name, size, flags) \
	BPF_F_TABLE(type, key, leaf, name, size, flags)
#endif

/*
 * FP_CHAIN runs several fastpath programs on one interface (SYN guard in slot 0, load
 * balancer in slot 1). The control plane compiles a program with -DFP_CHAIN=1
 * -DFP_CHAIN_NEXT=<slot> only while a later slot is occupied; the program then tail-calls
 * that slot wherever it would return XDP_PASS, and an empty slot falls through to XDP_PASS.
 * FP_CHAIN_PIN is the interface's shared prog array, pinned once for all programs. Without
 * FP_CHAIN nothing of this is compiled, so a lone program runs exactly as before.
 */
#ifndef FP_CHAIN_SLOTS
#define FP_CHAIN_SLOTS 2
#endif
#ifdef FP_CHAIN_PIN
#define FP_CHAIN_MAP() \
	BPF_TABLE_PINNED("prog", u32, u32, chain, FP_CHAIN_SLOTS, FP_CHAIN_PIN)
#else
#define FP_CHAIN_MAP() BPF_TABLE("prog", u32, u32, chain, FP_CHAIN_SLOTS)
#endif

/*
 * FP_BOUND(x, mask): make the verifier see `x` (a 64-bit variable) within `mask`. Linux 6.1
 * and 6.12 keep no bounds for the result of a byte swap (bpf_ntohs), so a packet pointer
 * moved by a length read from a header is refused ("math between pkt pointer and register
 * with unbounded min value"); clang drops a plain `& 0xffff` on a 16-bit value as a no-op,
 * the asm keeps it.
 */
#define FP_BOUND(x, mask) asm volatile("%0 &= " #mask : "+r"(x))

#endif /* FASTPATH_COMMON_H */
