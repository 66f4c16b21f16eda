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

#endif /* FASTPATH_COMMON_H */
