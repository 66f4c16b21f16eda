"""The XDP L4 load balancer: `bpf/l4lb.c`, Maglev hashing and its control plane (`fastpath lb ...`)."""
