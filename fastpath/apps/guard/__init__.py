"""The XDP SYN-flood guard: `bpf/syn_guard.c` and its control plane (`fastpath xdp ...`)."""
