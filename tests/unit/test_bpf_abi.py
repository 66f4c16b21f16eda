"""fastpath/bpf/syscall.py against the kernel's UAPI headers, compiled with the system's C
compiler: every constant (commands, attach type, update and XDP flags, map types) and the
offset and size of every field of its ctypes mirrors of `union bpf_attr` variants and
`struct bpf_*_info`; plus the helper ids doctor's probe program declares by number."""

from __future__ import annotations

import ctypes
import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastpath import doctor
from fastpath.apps.guard import abi as guard_abi
from fastpath.bpf import loader, syscall

HEADERS = ("linux/bpf.h", "linux/if_link.h")

# Each Structure -> (C type, member path prefix). Variants that are anonymous members of
# `union bpf_attr` in the header have no prefix: their fields are reached directly.
LAYOUTS: dict[type[ctypes.Structure], tuple[str, str]] = {
    syscall._MapElemAttr: ("union bpf_attr", ""),
    syscall._ObjAttr: ("union bpf_attr", ""),
    syscall._BatchAttr: ("union bpf_attr", "batch."),
    syscall._ProgLoadAttr: ("union bpf_attr", ""),
    syscall._GetFdByIdAttr: ("union bpf_attr", ""),
    syscall._TestRunAttr: ("union bpf_attr", "test."),
    syscall._InfoByFdAttr: ("union bpf_attr", "info."),
    syscall._LinkCreateAttr: ("union bpf_attr", "link_create."),
    syscall._LinkUpdateAttr: ("union bpf_attr", "link_update."),
    syscall._LinkDetachAttr: ("union bpf_attr", "link_detach."),
    syscall._BpfMapInfo: ("struct bpf_map_info", ""),
    syscall._BpfProgInfo: ("struct bpf_prog_info", ""),
    syscall._BpfLinkInfo: ("struct bpf_link_info", ""),
    syscall.XdpMd: ("struct xdp_md", ""),
}

# Helper ids doctor passes to its probe program as -D flags (bcc's helpers.h predates them).
DOCTOR_HELPERS = {
    "BPF_FUNC_tcp_raw_gen_syncookie_ipv4": doctor.BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV4,
    "BPF_FUNC_tcp_raw_gen_syncookie_ipv6": doctor.BPF_FUNC_TCP_RAW_GEN_SYNCOOKIE_IPV6,
    "BPF_FUNC_tcp_raw_check_syncookie_ipv4": doctor.BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV4,
    "BPF_FUNC_tcp_raw_check_syncookie_ipv6": doctor.BPF_FUNC_TCP_RAW_CHECK_SYNCOOKIE_IPV6,
}


def fields(struct: type[ctypes.Structure | ctypes.Union], prefix: str = "", base: int = 0) -> Iterator[
    tuple[str, int, int]
]:
    """(C member path, offset, size) of every named leaf field, through nested and anonymous
    members; `_`-prefixed leaves are padding with no header counterpart."""
    anonymous = getattr(struct, "_anonymous_", ())
    for name, ctype, *_ in struct._fields_:
        offset = base + getattr(struct, name).offset
        if issubclass(ctype, ctypes.Structure | ctypes.Union):
            yield from fields(ctype, prefix if name in anonymous else f"{prefix}{name}.", offset)
        elif not name.startswith("_"):
            yield f"{prefix}{name}", offset, ctypes.sizeof(ctype)


def constants() -> dict[str, int]:
    """syscall.py's public integer constants by their header names (commands lack `BPF_`)."""
    out = {}
    for name, value in vars(syscall).items():
        if name.startswith("_") or not name.isupper() or not isinstance(value, int):
            continue
        out[name if name.startswith(("BPF_", "XDP_")) else f"BPF_{name}"] = value
    for value, kind in syscall.MAP_TYPES.items():
        out[f"BPF_MAP_TYPE_{kind.upper()}"] = value
    return out


def layout_program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", *(f"#include <{h}>" for h in HEADERS)]
    lines.append("int main(void)\n{")
    for name in {**constants(), **DOCTOR_HELPERS}:
        lines.append(f'    printf("{name} %lld\\n", (long long){name});')
    for struct, (ctype, prefix) in LAYOUTS.items():
        for member, _, _ in fields(struct, prefix):
            lines.append(
                f'    printf("{ctype}/{member} %zu %zu\\n", offsetof({ctype}, {member}), '
                f"sizeof((({ctype} *)0)->{member}));"
            )
    lines.append("    return 0;\n}\n")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, ...]]:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or not all(Path("/usr/include", h).exists() for h in HEADERS):
        pytest.skip("needs a C compiler and linux-libc-dev")
    work = tmp_path_factory.mktemp("bpf_abi")
    (work / "layout.c").write_text(layout_program())
    built = subprocess.run(
        [cc, "-o", str(work / "layout"), str(work / "layout.c")], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, f"a name syscall.py mirrors is not in the headers:\n{built.stderr}"
    out = subprocess.run([str(work / "layout")], capture_output=True, text=True, check=True).stdout
    values = {}
    for line in out.splitlines():
        key, *numbers = line.rsplit(" ", 2) if "/" in line else line.rsplit(" ", 1)
        values[key] = tuple(int(n) for n in numbers)
    return values


def nested(struct: type[ctypes.Structure | ctypes.Union]) -> Iterator[type]:
    for _, ctype, *_ in struct._fields_:
        if issubclass(ctype, ctypes.Structure | ctypes.Union):
            yield ctype
            yield from nested(ctype)


def test_every_structure_in_syscall_py_is_checked() -> None:
    defined = {
        obj
        for obj in vars(syscall).values()
        if isinstance(obj, type) and issubclass(obj, ctypes.Structure) and obj.__module__ == syscall.__name__
    }
    inside = {t for struct in LAYOUTS for t in nested(struct)}
    assert defined - inside == set(LAYOUTS)


def test_constants_match_the_headers(header_values: dict[str, tuple[int, ...]]) -> None:
    expected = {**constants(), **DOCTOR_HELPERS}
    assert {name: header_values[name][0] for name in expected} == expected


def test_structure_offsets_and_sizes_match_the_headers(header_values: dict[str, tuple[int, ...]]) -> None:
    ours = {
        f"{ctype}/{member}": (offset, size)
        for struct, (ctype, prefix) in LAYOUTS.items()
        for member, offset, size in fields(struct, prefix)
    }
    assert {key: header_values[key] for key in ours} == ours


def test_percpu_map_types_are_the_percpu_ones() -> None:
    assert {v for v, kind in syscall.MAP_TYPES.items() if "percpu" in kind} == syscall.PERCPU_MAP_TYPES


def test_a_failed_command_raises_bpf_error_with_errno_and_command() -> None:
    with pytest.raises(syscall.BpfError) as info:
        syscall.prog_info(-1)
    assert isinstance(info.value, OSError)
    assert info.value.errno in (errno.EBADF, errno.EBADFD, errno.EPERM)
    assert info.value.what == "object info" and str(info.value).startswith(f"[Errno {info.value.errno}]")


# -- program headers: bpf/syn_guard.h against fastpath/apps/guard/abi.py -----------------------

GUARD_STRUCTS: dict[type[ctypes.Structure], str] = {
    guard_abi.SgConfig: "struct sg_config",
    guard_abi.SgCounter: "struct sg_counter",
    guard_abi.SgLpmV4: "struct sg_lpm_v4",
    guard_abi.SgLpmV6: "struct sg_lpm_v6",
    guard_abi.SgSourceKey: "struct sg_source_key",
    guard_abi.SgSource: "struct sg_source",
    guard_abi.SgFlowKey: "struct sg_flow_key",
    guard_abi.SgFlow: "struct sg_flow",
    guard_abi.SgAdaptive: "struct sg_adaptive",
    guard_abi.SgPortRate: "struct sg_port_rate",
    guard_abi.SgPortState: "struct sg_port_state",
    guard_abi.SgAddr: "struct sg_addr",
    guard_abi.SgProtectedList: "struct sg_protected_list",
    guard_abi.SgBan: "struct sg_ban",
}


def test_every_guard_map_structure_is_checked() -> None:
    used = {t for pair in guard_abi.MAP_TYPES.values() for t in pair if issubclass(t, ctypes.Structure)}
    assert used <= set(GUARD_STRUCTS)


def test_guard_structures_match_syn_guard_h(tmp_path: Path) -> None:
    """Every mirror in fastpath/apps/guard/abi.py has the size and field offsets the C compiler
    gives the structs of bpf/syn_guard.h, and the stat ids and flags are the header's."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or not Path("/usr/include/linux/types.h").exists():
        pytest.skip("needs a C compiler and linux-libc-dev")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>",
             f'#include "{loader.bpf_source_dir() / "syn_guard.h"}"', "int main(void)\n{"]
    for struct, ctype in GUARD_STRUCTS.items():
        lines.append(f'    printf("{ctype} %zu\\n", sizeof({ctype}));')
        for member, _, _ in fields(struct):
            lines.append(f'    printf("{ctype}/{member} %zu %zu\\n", offsetof({ctype}, {member}), '
                         f"sizeof((({ctype} *)0)->{member}));")
    consts = {"SG_OUTCOMES": guard_abi.SG_OUTCOMES, "SG_STAT_MAX": guard_abi.SG_STAT_MAX,
              "SG_CFG_COOKIES": guard_abi.CFG_COOKIES, "SG_CFG_ADAPTIVE": guard_abi.CFG_ADAPTIVE,
              "SG_EVENT_SOCKET": guard_abi.STAT["flow_socket"],
              "SG_EVENT_FLOW_END": guard_abi.STAT["flow_ends"],
              "SG_EVENT_FLOW_IDLE": guard_abi.STAT["flow_idle"],
              "SG_EVENT_TO_COOKIE": guard_abi.STAT["to_cookie"],
              "SG_EVENT_TO_PASS": guard_abi.STAT["to_pass"]}
    for name in consts:
        lines.append(f'    printf("{name} %lld\\n", (long long){name});')
    lines.append("    return 0;\n}\n")
    (tmp_path / "sg.c").write_text("\n".join(lines))
    built = subprocess.run([cc, "-o", str(tmp_path / "sg"), str(tmp_path / "sg.c")], capture_output=True,
                           text=True, check=False)
    assert built.returncode == 0, built.stderr
    out = subprocess.run([str(tmp_path / "sg")], capture_output=True, text=True, check=True).stdout
    values = {}
    for line in out.splitlines():
        key, *numbers = line.rsplit(" ", 2) if "/" in line else line.rsplit(" ", 1)
        values[key] = tuple(int(n) for n in numbers)
    ours: dict[str, tuple[int, ...]] = {}
    for struct, ctype in GUARD_STRUCTS.items():
        ours[ctype] = (ctypes.sizeof(struct),)
        ours.update({f"{ctype}/{m}": (off, size) for m, off, size in fields(struct)})
    ours.update({name: (value,) for name, value in consts.items()})
    assert {k: values[k] for k in ours} == ours
