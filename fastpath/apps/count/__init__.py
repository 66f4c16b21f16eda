"""The per-CPU packet counter: `bpf/xdp_count.c` (`fastpath count ...`)."""
