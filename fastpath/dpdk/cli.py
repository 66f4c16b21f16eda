"""`fastpath dpdk`: build l2fwd, manage hugepages, bind NICs, run l2fwd under supervision."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from fastpath.core.args import add_actions, add_command, add_json_arg
from fastpath.dpdk import build, devbind, eal, hugepages, hugepools, l2fwd, pci
from fastpath.dpdk.sysfs import Host
from fastpath.errors import FastpathError
from fastpath.output import info, print_json, print_table

EPILOG = """\
examples:
  fastpath dpdk build                      compile fastpath-l2fwd against the system DPDK
  fastpath dpdk hugepages show             pools per size and node, mounts, stale files
  fastpath dpdk hugepages reserve 512M     raise the 2M pool (system-wide total) to 512 MiB
  fastpath dpdk hugepages reserve 1G --pagesize 1G --node 0
  fastpath dpdk hugepages release          give back only what fastpath reserved
  fastpath dpdk hugepages clean --dry-run  stale DPDK hugepage files no process maps or locks
  fastpath dpdk devices                    PCI NICs, their drivers and why they are in use
  fastpath dpdk bind 0000:03:00.0 --driver vfio-pci --dry-run
  fastpath dpdk bind eth1 --netns lab-fwd --driver vfio-pci --dry-run
  fastpath dpdk restore 0000:03:00.0       back to the driver it had
  fastpath dpdk l2fwd run --vdev null --vdev null --duration 5
  fastpath dpdk l2fwd run --netns lab-fwd --vdev af_packet:veth0 --vdev af_packet:veth1 --json
"""

L2FWD_EPILOG = """\
examples:
  fastpath dpdk l2fwd run --vdev null --vdev null --duration 3 --json
  fastpath dpdk l2fwd run --netns fwd --vdev af_packet:p0 --vdev af_packet:p1 --cores 0
  fastpath dpdk l2fwd run --vdev af_xdp:veth0 --vdev af_xdp:veth1 --no-mac-updating
stop with Ctrl-C: l2fwd gets SIGINT (then SIGTERM, SIGKILL) and its files are cleaned up.
"""


def register(subparsers: Any) -> None:
    dpdk = add_command(subparsers, "dpdk",
                       help="DPDK: build l2fwd, hugepages, NIC binding, supervised l2fwd runs",
                       description="Build, configure and run fastpath's DPDK l2fwd safely.", epilog=EPILOG)
    # Hidden: point every sysfs/procfs access at a fake tree (tests, demos).
    dpdk.add_argument("--root", default="/", help=argparse.SUPPRESS)
    sub = add_actions(dpdk, "dpdk_command")

    p = sub.add_parser("build", help="compile fastpath-l2fwd (checks DPDK >= 22.11 and PMDs)")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    add_json_arg(p, "print the build record as JSON")
    p.set_defaults(func=cmd_build)

    _register_hugepages(sub)

    p = sub.add_parser("devices", help="PCI network devices, drivers, IOMMU groups, kernel use")
    p.add_argument("--all", action="store_true", help="every PCI device, not only NICs")
    p.add_argument("--netns", metavar="NAME",
                   help="also show the interfaces that NICs have in this network namespace")
    add_json_arg(p)
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("bind", help="bind a NIC to vfio-pci or uio_pci_generic, after checks")
    p.add_argument("dev", metavar="DEV", help="PCI address (0000:03:00.0) or interface name")
    p.add_argument("--driver", required=True, help="vfio-pci or uio_pci_generic")
    p.add_argument("--dry-run", action="store_true", help="check and show the writes only")
    p.add_argument("--force", action="store_true",
                   help="bind even if the interface is up or has addresses/routes "
                        "(never when it carries the SSH session or is a bond/bridge member)")
    p.add_argument("--noiommu", action="store_true",
                   help="allow vfio's unsafe no-IOMMU mode for a device with no IOMMU group")
    p.add_argument("--netns", metavar="NAME",
                   help="DEV is an interface in this network namespace")
    add_json_arg(p, "print the plan as JSON")
    p.set_defaults(func=cmd_bind)

    p = sub.add_parser("unbind", help="detach a NIC from its driver (after the same checks)")
    p.add_argument("dev", metavar="DEV")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("--netns", metavar="NAME",
                   help="DEV is an interface in this network namespace")
    add_json_arg(p)
    p.set_defaults(func=cmd_unbind)

    p = sub.add_parser("restore", help="return a NIC to the driver it had before fastpath")
    p.add_argument("dev", metavar="DEV")
    p.add_argument("--dry-run", action="store_true")
    add_json_arg(p)
    p.set_defaults(func=cmd_restore)

    l2 = sub.add_parser("l2fwd", help="run fastpath-l2fwd under supervision",
                        epilog=L2FWD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    l2sub = add_actions(l2, "l2fwd_command")
    p = l2sub.add_parser("run", help="start l2fwd, stream stats, stop and clean up",
                         epilog=L2FWD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vdev", action="append", default=[], metavar="KIND[:IFACE]",
                   help="af_packet:IFACE, af_xdp:IFACE, null, tap[:NAME], memif:SOCKET "
                        "(repeat; ports are numbered in order, --vdev before --pci)")
    p.add_argument("--pci", action="append", default=[], metavar="BDF",
                   help="a PCI NIC already bound to a DPDK driver (repeat)")
    p.add_argument("--cores", default="0", help="CPUs for lcores, e.g. 0 or 0-1 (default 0)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: run until Ctrl-C)")
    p.add_argument("--period", type=float, default=1.0, metavar="S",
                   help="stats period in seconds (default 1)")
    p.add_argument("--portmask", help="hex mask of ports to forward (default: all)")
    p.add_argument("--portmap", help="explicit pairs, e.g. '(0,1),(2,3)'")
    p.add_argument("--ports-per-core", type=int, default=None, metavar="N",
                   help="ports (RX queues) each lcore polls (default: spread evenly)")
    p.add_argument("--no-mac-updating", action="store_true",
                   help="forward frames unchanged (default: rewrite MACs)")
    p.add_argument("--promiscuous", action="store_true", help="promiscuous mode on every port")
    p.add_argument("--idle-sleep-us", type=int, default=0, metavar="US",
                   help="sleep when a poll finds nothing (default 0: busy-poll)")
    p.add_argument("--netns", help="run l2fwd inside this network namespace")
    p.add_argument("--in-memory", action="store_true",
                   help="hugepages without files (--in-memory) even when a mount exists")
    add_json_arg(p, "one JSON event per line on stdout")
    p.set_defaults(func=cmd_l2fwd_run)


def _register_hugepages(sub: Any) -> None:
    hp = sub.add_parser(
        "hugepages",
        help="show, reserve, release, mount, unmount hugepages",
        description=(
            "Without --node a size is the system-wide total of that page size (the kernel "
            "spreads it over NUMA nodes); with --node N it is node N's own count. reserve "
            "only raises counts and reads back what the kernel granted; release gives back "
            "only pages fastpath reserved."
        ),
    )
    hsub = add_actions(hp, "hugepages_command")

    def common(p: argparse.ArgumentParser, node: bool = True) -> None:
        p.add_argument("--pagesize", default=None, help="2M or 1G (default: the kernel's default)")
        if node:
            p.add_argument("--node", type=str, default=None, metavar="N", help="one NUMA node")
        add_json_arg(p)

    p = hsub.add_parser("show", help="pools (total and per node), free pages, mounts, stale files")
    add_json_arg(p)
    p.set_defaults(func=cmd_hp_show)
    p = hsub.add_parser("reserve", help="raise a pool to hold at least SIZE (512M, 2G, 256pages)")
    p.add_argument("size", metavar="SIZE")
    common(p)
    p.set_defaults(func=cmd_hp_reserve)
    p = hsub.add_parser("release", help="give back the pages fastpath reserved")
    common(p)
    p.set_defaults(func=cmd_hp_release)
    p = hsub.add_parser("mount", help="mount hugetlbfs for a page size")
    p.add_argument("path", nargs="?", help="mount point (default /dev/hugepages[-SIZE])")
    common(p, node=False)
    p.set_defaults(func=cmd_hp_mount)
    p = hsub.add_parser("unmount", help="unmount hugetlbfs mounts that fastpath made")
    p.add_argument("path", nargs="?")
    common(p, node=False)
    p.set_defaults(func=cmd_hp_unmount)
    p = hsub.add_parser(
        "clean",
        help="remove stale DPDK hugepage files (no process maps or locks them)",
        description=(
            "Remove hugepage files that crashed DPDK processes left in hugetlbfs mounts: files "
            "named <prefix>map_<n> that no process maps (/proc/*/maps) and nobody locks. "
            "Other files in the mounts are never touched."
        ),
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be removed")
    p.add_argument("--prefix", help="only files of this DPDK --file-prefix")
    p.add_argument("--mount", metavar="PATH", help="only this hugetlbfs mount")
    add_json_arg(p)
    p.set_defaults(func=cmd_hp_clean)


def _host(args: argparse.Namespace) -> Host:
    return Host(Path(getattr(args, "root", "/") or "/"))


def _net(host: Host) -> pci.NetState:
    # A fake tree has no netlink behind it: its interfaces have no addresses or routes.
    return pci.NetlinkState() if host.is_real else pci.StaticNetState()


def _links(args: argparse.Namespace, host: Host) -> pci.Links | None:
    """The interfaces of --netns NAME, read over netlink."""
    netns = getattr(args, "netns", None)
    if netns is None:
        return None
    if not host.is_real:
        raise FastpathError("--netns reads a live network namespace; it cannot be combined "
                            "with a fake --root tree")
    return pci.NetlinkLinks(netns)


# ---------------------------------------------------------------- build


def cmd_build(args: argparse.Namespace) -> int:
    result = build.build(force=args.force, progress=info)
    if args.json:
        print_json({"binary": result.binary, "built": result.built, **result.info})
        return 0
    verb = "built" if result.built else "up to date"
    info(f"fastpath-l2fwd {verb}: {result.binary}")
    pmds = result.info.get("pmds", {})
    print_table(
        ["item", "value"],
        [
            ["binary", result.binary],
            ["DPDK", result.info.get("dpdk_version")],
            ["compiler", result.info.get("compiler")],
            ["method", result.info.get("method")],
            ["PMD dir", result.info.get("pmd_dir")],
            ["PMDs", ", ".join(f"{k}{'' if v else ' (missing)'}" for k, v in pmds.items())],
            ["built at", result.info.get("built_at")],
        ],
    )
    return 0


# ---------------------------------------------------------------- hugepages


def _pagesize(args: argparse.Namespace, host: Host) -> int:
    if args.pagesize is not None:
        return hugepools.parse_pagesize(args.pagesize)
    default = hugepools.default_page_kb(host)
    if default is None:
        raise FastpathError("no default hugepage size known (no Hugepagesize in /proc/meminfo); "
                            "give --pagesize 2M or 1G")
    return default


def _node(args: argparse.Namespace) -> int | None:
    if getattr(args, "node", None) is None:
        return None
    text = str(args.node)
    if not text.isdigit():
        raise FastpathError(f"bad node {text!r}: give a NUMA node number such as 0")
    return int(text)


def cmd_hp_show(args: argparse.Namespace) -> int:
    host = _host(args)
    data = hugepages.show(host)
    if args.json:
        print_json(data)
        return 0
    if not data["sizes"]:
        info("this kernel has no hugepage support")
        return 0
    rows = []
    for size in data["sizes"]:
        added = sum(int(v["reserved"]) - int(v["baseline"])
                    for v in size["fastpath_reserved"].values())
        rows.append([size["pagesize"], "system total", size["total"], size["free"],
                     size["surplus"], size["reserved"], added or "",
                     ", ".join(size["mounts"]) or "not mounted"])
        for n in size["nodes"]:
            rows.append(["", f"node {n['node']}", n["total"], n["free"], n["surplus"], "", "", ""])
    print_table(["page", "scope", "total", "free", "surplus", "resv", "by fastpath", "mounts"],
                rows, title="hugepages")
    if data["mounts"]:
        print_table(
            ["mount", "page", "files", "in use", "stale", "stale size"],
            [[m["path"], m["pagesize"], m["files"], m["files_in_use"], len(m["stale_files"]),
              hugepools.format_bytes(m["stale_bytes"])] for m in data["mounts"]],
        )
    for m in data["mounts"]:
        if m["stale_files"]:
            prefixes = sorted({f.split("map_")[0] for f in m["stale_files"]})
            info(f"{len(m['stale_files'])} stale hugepage files in {m['path']} (no process "
                 f"holds them; from crashed DPDK runs, prefixes {', '.join(prefixes)}); "
                 f"they pin {hugepools.format_bytes(m['stale_bytes'])}: remove them with "
                 f"'fastpath dpdk hugepages clean'")
    return 0


def _print_change(change: hugepools.Change, as_json: bool) -> None:
    if as_json:
        print_json(change.to_json())
        return
    arrow = f"{change.before} -> {change.granted}" if change.changed else str(change.granted)
    info(f"{change.pagesize} pages, {change.scope}: {arrow} ({change.note})")


def cmd_hp_reserve(args: argparse.Namespace) -> int:
    host = _host(args)
    size = hugepools.parse_size(args.size)
    change = hugepools.reserve(size, _pagesize(args, host), _node(args), host)
    _print_change(change, args.json)
    return 0


def cmd_hp_release(args: argparse.Namespace) -> int:
    host = _host(args)
    change = hugepools.release(_pagesize(args, host), _node(args), host)
    _print_change(change, args.json)
    return 0


def cmd_hp_mount(args: argparse.Namespace) -> int:
    host = _host(args)
    path, new = hugepages.mount(_pagesize(args, host), args.path, host)
    if args.json:
        print_json({"path": path, "mounted": new})
    else:
        info(f"hugetlbfs {'mounted' if new else 'already mounted'} at {path}")
    return 0


def cmd_hp_unmount(args: argparse.Namespace) -> int:
    host = _host(args)
    size_kb = hugepools.parse_pagesize(args.pagesize) if args.pagesize else None
    done = hugepages.unmount(size_kb, args.path, host)
    if args.json:
        print_json({"unmounted": done})
    else:
        info(f"unmounted {', '.join(done)}" if done else "fastpath mounted nothing to unmount")
    return 0


def cmd_hp_clean(args: argparse.Namespace) -> int:
    host = _host(args)
    result = hugepages.clean(host, dry_run=args.dry_run, prefix=args.prefix,
                             mount_path=args.mount)
    if args.json:
        print_json({**result.to_json(), "dry_run": args.dry_run})
        return 0
    if not result.mounts:
        info("no hugetlbfs mount: nothing to clean")
        return 0
    if result.stale:
        print_table(["file", "prefix", "size", "action"],
                    [[f.path, f.prefix, hugepools.format_bytes(f.size),
                      "removed" if f.removed else "would remove"] for f in result.stale])
    size = hugepools.format_bytes(result.stale_bytes)
    if not result.stale:
        info(f"no stale DPDK hugepage files in {', '.join(result.mounts)}")
    elif args.dry_run:
        info(f"would remove {len(result.stale)} stale files ({size}); run without --dry-run")
    else:
        info(f"removed {len(result.stale)} stale files, {size} of hugepages freed")
    if result.in_use:
        info(f"{result.in_use} DPDK hugepage files are in use by running processes and stay")
    if result.foreign:
        info(f"{len(result.foreign)} unused files not named like DPDK's stay "
             f"({result.foreign[0]}...): other programs keep data in hugetlbfs on purpose")
    return 0


# ---------------------------------------------------------------- devices and binding


def _kernel_use(host: Host, net: pci.NetState, dev: pci.PciDevice,
                other: pci.NetState | None = None) -> list[str]:
    refusals = devbind.interface_refusals(host, net, dict(os.environ), dev, other)
    return [r.reason.split(";")[0] for r in refusals]


def _ifname(iface: pci.Interface) -> str:
    return iface.name if iface.netns is None else f"{iface.name} (netns {iface.netns})"


def cmd_devices(args: argparse.Namespace) -> int:
    host = _host(args)
    links = _links(args, host)
    devices = pci.list_devices(host, network_only=not args.all, links=links)
    net = _net(host)
    other = pci.NetlinkState(links.netns) if links is not None else None
    drivers = {d: pci.driver_loaded(host, d) for d in devbind.DPDK_DRIVERS}
    iommu = bool(host.listdir("/sys/kernel/iommu_groups"))
    if args.json:
        print_json({
            "devices": [{**d.to_json(), "kernel_use": _kernel_use(host, net, d, other)}
                        for d in devices],
            "drivers_loaded": drivers,
            "iommu_groups": iommu,
        })
        return 0
    if not devices:
        info("no PCI network device on this machine: nothing to bind. DPDK still runs on "
             "virtual devices: fastpath dpdk l2fwd run --vdev af_packet:IFACE (or af_xdp, null)")
    else:
        print_table(
            ["PCI address", "device", "driver", "interfaces", "IOMMU group", "kernel use"],
            [[d.address, f"{d.vendor}:{d.device} {d.class_name}", d.driver or "-",
              ", ".join(_ifname(i) for i in d.interfaces) or "-", d.iommu_group or "none",
              "; ".join(_kernel_use(host, net, d, other)) or "free"] for d in devices],
        )
    loaded = ", ".join(f"{k} {'loaded' if v else 'not loaded'}" for k, v in drivers.items())
    info(f"DPDK drivers: {loaded}; IOMMU: {'on' if iommu else 'off (no IOMMU groups)'}")
    return 0


def _show_plan(plan: devbind.Plan, as_json: bool, dry_run: bool) -> None:
    if as_json:
        print_json({**plan.to_json(), "dry_run": dry_run})
        return
    dev = plan.device
    target = plan.target_driver or "no driver"
    info(f"{plan.action} {dev.address} ({', '.join(dev.interface_names) or 'no interface'}): "
         f"{dev.driver or 'no driver'} -> {target}")
    if plan.nothing_to_do:
        info("nothing to do: already there")
        return
    for r in plan.refusals:
        state = "overridden by --force" if plan.forced and r.overridable else "refused"
        info(f"  {state}: {r.reason}")
    for w in plan.warnings:
        info(f"  warning: {w}")
    if dry_run:
        for write in plan.writes:
            info(f"  would write {write.value.strip()!r} to {write.path}")


def _finish(plan: devbind.Plan, args: argparse.Namespace, host: Host) -> int:
    _show_plan(plan, args.json, args.dry_run)
    if plan.blocking:
        raise FastpathError(
            f"refusing to {plan.action} {plan.device.address}: "
            + "; ".join(r.reason for r in plan.blocking)
        )
    if args.dry_run or plan.nothing_to_do:
        return 0
    after = devbind.apply(plan, host)
    if not args.json:
        info(f"{after.address} is now on {after.driver or 'no driver'}")
    return 0


def cmd_bind(args: argparse.Namespace) -> int:
    host = _host(args)
    plan = devbind.plan_bind(args.dev, args.driver, host=host, net=_net(host), force=args.force,
                             noiommu=args.noiommu, links=_links(args, host))
    return _finish(plan, args, host)


def cmd_unbind(args: argparse.Namespace) -> int:
    host = _host(args)
    plan = devbind.plan_unbind(args.dev, host=host, net=_net(host), force=args.force,
                               links=_links(args, host))
    return _finish(plan, args, host)


def cmd_restore(args: argparse.Namespace) -> int:
    host = _host(args)
    plan = devbind.plan_restore(args.dev, host=host)
    return _finish(plan, args, host)


# ---------------------------------------------------------------- l2fwd run


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _stats_line(ev: dict[str, Any]) -> str:
    ports = "  ".join(f"p{p['port']} rx {p['rx']} tx {p['tx']} drop {p['dropped']}"
                      for p in ev["ports"])
    t = ev["total"]
    return f"{ev.get('uptime_s', 0):7.1f}s  {ports}  | total rx {t['rx']} tx {t['tx']} " \
           f"drop {t['dropped']}"


def cmd_l2fwd_run(args: argparse.Namespace) -> int:
    host = _host(args)
    if args.duration is not None and args.duration <= 0:
        raise FastpathError(f"bad duration {args.duration}: give seconds > 0")
    cores = eal.parse_cores(args.cores)
    online = eal.online_cpus(host)
    offline = [c for c in cores if c not in online]
    if offline:
        raise FastpathError(f"cores {offline} are not online here (online: {online})")
    opts = l2fwd.L2fwdOptions(
        vdevs=[eal.parse_vdev(v) for v in args.vdev],
        pci=list(args.pci),
        cores=cores,
        portmask=args.portmask,
        portmap=args.portmap,
        ports_per_lcore=args.ports_per_core,
        period_s=args.period,
        mac_updating=not args.no_mac_updating,
        promiscuous=args.promiscuous,
        idle_sleep_us=args.idle_sleep_us,
        netns=args.netns,
        in_memory=args.in_memory,
    )
    l2fwd.check_devices(opts, host)
    run = l2fwd.L2fwdProcess(opts, host=host, progress=info)
    try:
        ready = run.start()
        ports = ", ".join(f"{p['port']}:{p['name']}->{p['dst_port']}" for p in ready["ports"])
        memory = run.eal.memory.reason if run.eal.memory else "?"
        info(f"l2fwd running (pid {ready['pid']}, file prefix {run.eal.file_prefix}, "
             f"{memory}): {ports}; stop with Ctrl-C")
        if args.json:
            _emit(ready)
        for ev in run.iter_stats(args.duration):
            if args.json:
                _emit(ev)
            else:
                info(_stats_line(ev))
    except KeyboardInterrupt:
        info("stopping l2fwd")
    finally:
        result = run.stop()
    if args.json:
        _emit({"event": "result", **result.to_json()})
    elif result.final is not None:
        t = result.final["total"]
        info(f"stopped ({', '.join(result.signals) or 'exited'}); final: "
             + "  ".join(f"p{p['port']} rx {p['rx']} tx {p['tx']} drop {p['dropped']}"
                         for p in result.final["ports"])
             + f"  | total rx {t['rx']} tx {t['tx']} drop {t['dropped']}")
    if result.crashed:
        raise FastpathError(
            f"l2fwd exited with code {result.returncode} (signals sent: "
            f"{', '.join(result.signals) or 'none'}); cleaned {len(result.cleaned)} leftover "
            f"path(s); last output: {' | '.join(result.log_tail[-3:]) or 'none'}"
        )
    return 0
