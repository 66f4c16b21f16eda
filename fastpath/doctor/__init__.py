"""`fastpath doctor`: measure every kernel feature, tool and privilege fastpath relies on.

Each probe is a small function returning a `Check`; it does the real thing (compile and load
a BPF program, attach XDP to a throw-away veth, set up an io_uring, create an ipip link in a
scratch namespace) rather than guess from version numbers, and it never raises: an
unexpected exception becomes a FAIL row carrying the message.

Probes that only read /proc and /sys take a `root` directory so tests can point them at a
fake tree. Probes that need kernel objects share one `DoctorSession`, which compiles the
probe BPF programs once and creates at most one scratch namespace; closing the session
removes every namespace, link, program and table it made, also when a probe failed.

One module per area: `checks` (the row type, kernel facts several probes need, the tool
runner; probes read /proc and /sys through `fastpath.dpdk.sysfs.Host`), `session` (scratch
namespaces and the probe program, bpf/doctor_probe.c), `kernel` (privileges, kernel, bpffs,
memlock, BTF, headers, bcc), `xdp`, `uring` (io_uring and liburing), `dpdk` (hugepages,
VFIO, NICs, DPDK and its PMDs), `net` (tunnels, IPVS, SYNPROXY) and `cli` (the registry,
the runner, the report and the command). This package re-exports their public names; a
test that replaces a name must patch the module that looks it up (e.g. `cli.PROBES`,
`session.NETNS_DIR`, `dpdk._pkg_config`).

Other modules ask questions through the same API, e.g. for test skips:

    from fastpath import doctor
    if not doctor.check("xdp-native").ok:
        pytest.skip(doctor.check("xdp-native").detail)
"""

from __future__ import annotations

from fastpath.doctor.checks import ROOT, ROOT_FIX, SETUP_HOST, Check, Status, parse_kernel_version
from fastpath.doctor.cli import (
    EPILOG,
    PROBES,
    STATUS_STYLE,
    Probe,
    build_parser,
    check,
    configure_parser,
    exit_code,
    handler,
    main,
    register,
    report,
    run_checks,
    run_probe,
)
from fastpath.doctor.dpdk import (
    MIN_DPDK,
    WANTED_PMDS,
    find_pmd_dirs,
    probe_dpdk,
    probe_dpdk_pmds,
    probe_hugepages,
    probe_pci_nics,
    probe_vfio,
    read_hugepages,
    read_pci_nics,
    read_vfio,
)
from fastpath.doctor.kernel import (
    BTF_MAGIC,
    CAPS,
    MEMCG_BPF_KERNEL,
    MEMLOCK_ENOUGH,
    MIN_KERNEL,
    SYNCOOKIE_KERNEL,
    parse_capabilities,
    probe_bcc,
    probe_bpf_memlock,
    probe_bpffs,
    probe_btf,
    probe_kernel,
    probe_kernel_headers,
    probe_privileges,
)
from fastpath.doctor.net import IPTABLES_SYNPROXY, SYNPROXY_NFT, probe_ipvs, probe_synproxy, probe_tunnels
from fastpath.doctor.session import (
    BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV4,
    BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV6,
    BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV4,
    BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV6,
    FORGED_COOKIE_DELTA,
    NETNS_DIR,
    NETNS_PREFIX,
    PROBE_BPF_CFLAGS,
    PROBE_BPF_PATH,
    PROBE_BPF_TEXT,
    DoctorSession,
    reap_stale_netns,
    temp_netns,
)
from fastpath.doctor.uring import (
    probe_io_uring,
    probe_io_uring_multishot,
    probe_io_uring_opcodes,
    probe_liburing,
)
from fastpath.doctor.xdp import (
    LIVE_FRAMES_FIX,
    XDP_ABORTED,
    XDP_DROP,
    XDP_PASS,
    XDP_TX,
    probe_kernel_peers,
    probe_live_frames,
    probe_syncookie_helpers,
    probe_veth_peers,
    probe_xdp_generic,
    probe_xdp_link,
    probe_xdp_native,
    probe_xdp_test_run,
    syn_packet,
)

__all__ = [
    "BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV4",
    "BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV6",
    "BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV4",
    "BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV6",
    "BTF_MAGIC",
    "CAPS",
    "EPILOG",
    "FORGED_COOKIE_DELTA",
    "IPTABLES_SYNPROXY",
    "LIVE_FRAMES_FIX",
    "MEMCG_BPF_KERNEL",
    "MEMLOCK_ENOUGH",
    "MIN_DPDK",
    "MIN_KERNEL",
    "NETNS_DIR",
    "NETNS_PREFIX",
    "PROBES",
    "PROBE_BPF_CFLAGS",
    "PROBE_BPF_PATH",
    "PROBE_BPF_TEXT",
    "ROOT",
    "ROOT_FIX",
    "SETUP_HOST",
    "STATUS_STYLE",
    "SYNCOOKIE_KERNEL",
    "SYNPROXY_NFT",
    "WANTED_PMDS",
    "XDP_ABORTED",
    "XDP_DROP",
    "XDP_PASS",
    "XDP_TX",
    "Check",
    "DoctorSession",
    "Probe",
    "Status",
    "build_parser",
    "check",
    "configure_parser",
    "exit_code",
    "find_pmd_dirs",
    "handler",
    "main",
    "parse_capabilities",
    "parse_kernel_version",
    "probe_bcc",
    "probe_bpf_memlock",
    "probe_bpffs",
    "probe_btf",
    "probe_dpdk",
    "probe_dpdk_pmds",
    "probe_hugepages",
    "probe_io_uring",
    "probe_io_uring_multishot",
    "probe_io_uring_opcodes",
    "probe_ipvs",
    "probe_kernel",
    "probe_kernel_headers",
    "probe_liburing",
    "probe_live_frames",
    "probe_pci_nics",
    "probe_privileges",
    "probe_kernel_peers",
    "probe_syncookie_helpers",
    "probe_synproxy",
    "probe_tunnels",
    "probe_vfio",
    "probe_veth_peers",
    "probe_xdp_generic",
    "probe_xdp_link",
    "probe_xdp_native",
    "probe_xdp_test_run",
    "read_hugepages",
    "read_pci_nics",
    "read_vfio",
    "reap_stale_netns",
    "register",
    "report",
    "run_checks",
    "run_probe",
    "syn_packet",
    "temp_netns",
]
