"""DPDK control plane: build fastpath-l2fwd (build), hugepages (hugepages), NIC binding
(devbind), EAL command lines (eal), supervised l2fwd runs (l2fwd), `fastpath dpdk` (cli).
All kernel files are reached through one `sysfs.Host` root so tests use fake trees."""
