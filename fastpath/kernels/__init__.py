"""The kernel matrix (`make kernels`): every BPF program compiled and loaded, and the BPF test
suites run, under Debian's kernels booted with virtme-ng, and under the running kernel.

packages: which Debian packages make a kernel, fetched and unpacked under build/kernels.
programs: the load sweep (every program of bpf/ with its default and extreme -D options).
guest:    what runs inside a kernel (the sweep, then tests/bpf), writing results as JSON.
vm:       the virtme-ng command line and a supervised boot.
report:   verdicts per program and the kernel x program table.
cli:      `python -m fastpath.kernels`, the front end `scripts/kernels.sh` calls.
"""
