"""The tunnel decapsulator for load-balanced backends: `bpf/decap.c` (`fastpath lb decap ...`)."""
