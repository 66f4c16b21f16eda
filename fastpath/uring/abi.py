"""The io_uring kernel ABI by name: setup and SQE/CQE flags, feature bits, opcode numbers,
and the opcodes fastpath's echo servers submit. Numbers come from linux/io_uring.h and never
change; the bindings (ring.py) and the raw-syscall ring doctor probes with (rawring.py) both
read them from here.
"""

from __future__ import annotations

# Syscall numbers: io_uring came after the syscall tables were unified, so they are the
# same on every architecture fastpath runs on.
NR_IO_URING_SETUP = 425
NR_IO_URING_ENTER = 426
NR_IO_URING_REGISTER = 427

IORING_SETUP_IOPOLL = 1 << 0
IORING_SETUP_SQPOLL = 1 << 1
IORING_SETUP_SQ_AFF = 1 << 2
IORING_SETUP_CQSIZE = 1 << 3
IORING_SETUP_CLAMP = 1 << 4
IORING_SETUP_SUBMIT_ALL = 1 << 7
IORING_SETUP_COOP_TASKRUN = 1 << 8
IORING_SETUP_TASKRUN_FLAG = 1 << 9
IORING_SETUP_SINGLE_ISSUER = 1 << 12
IORING_SETUP_DEFER_TASKRUN = 1 << 13

SETUP_FLAG_NAMES = {
    IORING_SETUP_IOPOLL: "IOPOLL",
    IORING_SETUP_SQPOLL: "SQPOLL",
    IORING_SETUP_SQ_AFF: "SQ_AFF",
    IORING_SETUP_CQSIZE: "CQSIZE",
    IORING_SETUP_CLAMP: "CLAMP",
    IORING_SETUP_SUBMIT_ALL: "SUBMIT_ALL",
    IORING_SETUP_COOP_TASKRUN: "COOP_TASKRUN",
    IORING_SETUP_TASKRUN_FLAG: "TASKRUN_FLAG",
    IORING_SETUP_SINGLE_ISSUER: "SINGLE_ISSUER",
    IORING_SETUP_DEFER_TASKRUN: "DEFER_TASKRUN",
}

FEATURE_NAMES = {
    1 << 0: "SINGLE_MMAP",
    1 << 1: "NODROP",
    1 << 2: "SUBMIT_STABLE",
    1 << 3: "RW_CUR_POS",
    1 << 4: "CUR_PERSONALITY",
    1 << 5: "FAST_POLL",
    1 << 6: "POLL_32BITS",
    1 << 7: "SQPOLL_NONFIXED",
    1 << 8: "EXT_ARG",
    1 << 9: "NATIVE_WORKERS",
    1 << 10: "RSRC_TAGS",
    1 << 11: "CQE_SKIP",
    1 << 12: "LINKED_FILE",
    1 << 13: "REG_REG_RING",
    1 << 14: "RECVSEND_BUNDLE",
    1 << 15: "MIN_TIMEOUT",
    1 << 16: "RW_ATTR",
    1 << 17: "NO_IOWAIT",
}
IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_FEAT_NODROP = 1 << 1
IORING_FEAT_EXT_ARG = 1 << 8

IOSQE_FIXED_FILE = 1 << 0
IOSQE_IO_DRAIN = 1 << 1
IOSQE_IO_LINK = 1 << 2
IOSQE_IO_HARDLINK = 1 << 3
IOSQE_ASYNC = 1 << 4
IOSQE_BUFFER_SELECT = 1 << 5
IOSQE_CQE_SKIP_SUCCESS = 1 << 6

IORING_CQE_F_BUFFER = 1 << 0
IORING_CQE_F_MORE = 1 << 1
IORING_CQE_F_SOCK_NONEMPTY = 1 << 2
IORING_CQE_F_NOTIF = 1 << 3
IORING_CQE_BUFFER_SHIFT = 16

IORING_TIMEOUT_ABS = 1 << 0
IORING_TIMEOUT_ETIME_SUCCESS = 1 << 5

IORING_ASYNC_CANCEL_ALL = 1 << 0
IORING_ASYNC_CANCEL_FD = 1 << 1
IORING_ASYNC_CANCEL_ANY = 1 << 2

IO_URING_OP_SUPPORTED = 1 << 0

# Opcode numbers by name, in kernel order (numbers past SENDMSG_ZC are newer than
# liburing 2.3's header but fixed by the kernel ABI).
OPCODES: tuple[str, ...] = (
    "NOP", "READV", "WRITEV", "FSYNC", "READ_FIXED", "WRITE_FIXED", "POLL_ADD",
    "POLL_REMOVE", "SYNC_FILE_RANGE", "SENDMSG", "RECVMSG", "TIMEOUT", "TIMEOUT_REMOVE",
    "ACCEPT", "ASYNC_CANCEL", "LINK_TIMEOUT", "CONNECT", "FALLOCATE", "OPENAT", "CLOSE",
    "FILES_UPDATE", "STATX", "READ", "WRITE", "FADVISE", "MADVISE", "SEND", "RECV",
    "OPENAT2", "EPOLL_CTL", "SPLICE", "PROVIDE_BUFFERS", "REMOVE_BUFFERS", "TEE",
    "SHUTDOWN", "RENAMEAT", "UNLINKAT", "MKDIRAT", "SYMLINKAT", "LINKAT", "MSG_RING",
    "FSETXATTR", "SETXATTR", "FGETXATTR", "GETXATTR", "SOCKET", "URING_CMD", "SEND_ZC",
    "SENDMSG_ZC", "READ_MULTISHOT", "WAITID", "FUTEX_WAIT", "FUTEX_WAKE", "FUTEX_WAITV",
    "FIXED_FD_INSTALL", "FTRUNCATE", "BIND", "LISTEN", "RECV_ZC", "EPOLL_WAIT",
    "READV_FIXED", "WRITEV_FIXED", "PIPE",
)  # fmt: skip
OP = {name: number for number, name in enumerate(OPCODES)}

#: Opcodes the echo servers cannot run without.
ECHO_OPCODES = ("ACCEPT", "RECV", "SEND", "ASYNC_CANCEL", "TIMEOUT", "READ", "CLOSE")

#: Feature bit names in bit order (doctor lists the features a ring reports).
FEATURES: tuple[str, ...] = tuple(FEATURE_NAMES[1 << i] for i in range(len(FEATURE_NAMES)))

IORING_REGISTER_PROBE = 8
IORING_REGISTER_PBUF_RING = 22
IORING_UNREGISTER_PBUF_RING = 23
IORING_ENTER_GETEVENTS = 1 << 0
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000
IORING_ACCEPT_MULTISHOT = 1 << 0
IORING_RECV_MULTISHOT = 1 << 1


def flag_names(value: int, names: dict[int, str]) -> list[str]:
    """The names of the bits set in `value` (SETUP_FLAG_NAMES, FEATURE_NAMES), low bit first."""
    return [name for bit, name in sorted(names.items()) if value & bit]
