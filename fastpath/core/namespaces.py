"""Named network namespaces: enter one from Python, find what lives in one, probe support.

Named namespaces are the iproute2 kind (`ip netns`): a bind mount of an nsfs inode under
/run/netns/<name>. Everything here works on that convention so that `ip netns`, pyroute2
and fastpath all see the same namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Iterator

from fastpath.errors import CapabilityError, FastpathError

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_BIND, MS_REC, MS_SHARED = 0x1000, 0x4000, 0x100000

_libc_lock = threading.Lock()
_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    with _libc_lock:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return _libc


def netns_path(name: str) -> str:
    """The bind-mount path of a named namespace (what `ip netns` uses)."""
    if not name or "/" in name or name in (".", ".."):
        raise FastpathError(f"invalid network namespace name {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


def _libc_call(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _share_run_dir(libc: ctypes.CDLL) -> None:
    """Make /run/netns a shared mount (binding it onto itself first if it is no mount point),
    as iproute2 does, so a namespace mounted there shows in every mount namespace."""
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    run_dir = NETNS_RUN_DIR.encode()
    if libc.mount(b"none", run_dir, None, MS_SHARED | MS_REC, None) == 0:
        return
    err = ctypes.get_errno()
    if err != errno.EINVAL:
        raise OSError(err, f"share {NETNS_RUN_DIR}: {os.strerror(err)}")
    _libc_call(libc.mount(run_dir, run_dir, b"none", MS_BIND | MS_REC, None), f"bind {NETNS_RUN_DIR}")
    _libc_call(libc.mount(b"none", run_dir, None, MS_SHARED | MS_REC, None), f"share {NETNS_RUN_DIR}")


def create_netns(name: str) -> None:
    """Create named namespace `name`, as `ip netns add` does: a new network namespace
    bind-mounted at /run/netns/<name>.

    A short-lived thread makes it (unshare acts on the calling thread only) instead of a
    forked child (pyroute2's way): forking a large Python process costs tens of
    milliseconds, more than the namespace itself, and a lab makes one per node.
    Raises FileExistsError when the name is taken, OSError when the kernel refuses.
    """
    path = netns_path(name)
    libc = _get_libc()
    _share_run_dir(libc)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    failure: list[BaseException] = []

    def make() -> None:
        try:
            _libc_call(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            # thread-self: this thread's new namespace, not the thread-group leader's.
            _libc_call(libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None),
                       f"bind the namespace to {path}")  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            failure.append(exc)

    # The thread ends right after, taking its namespace membership with it: nothing else
    # ever runs in the new namespace by accident.
    worker = threading.Thread(target=make, name=f"netns-{name}")
    worker.start()
    worker.join()
    if failure:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise failure[0]


def list_netns() -> list[str]:
    """Names of every named network namespace on the machine, sorted."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the block with this thread in network namespace `netns` (None: stay put)."""
    if netns is None:
        yield
        return
    with netns_context(netns):
        yield


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def netns_inode(name: str) -> tuple[int, int]:
    """(st_dev, st_ino) of a named namespace: the identity /proc/PID/ns/net links compare to."""
    st = os.stat(netns_path(name))
    return st.st_dev, st.st_ino


def _setns(fd: int) -> None:
    if _get_libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def netns_context(name: str) -> Iterator[None]:
    """Run the body with the *calling thread* inside namespace `name`, then switch back.

    Sockets (netlink, BPF links, TCP) created in the body stay bound to `name` after the
    block ends, which is the point: create them here, use them anywhere. Only the calling
    thread moves (setns acts per thread), so other threads are unaffected. Python 3.11 has no
    os.setns, hence libc through ctypes.
    """
    path = netns_path(name)
    # thread-self, not self: /proc/self is the thread-group leader, which may be elsewhere.
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FastpathError(f"network namespace {name!r} does not exist; see `ip netns list`") from None
        try:
            try:
                _setns(target)
            except OSError as exc:
                if exc.errno == errno.EPERM:
                    raise CapabilityError(
                        f"cannot enter network namespace {name!r}: permission denied; "
                        "run as root (CAP_SYS_ADMIN)"
                    ) from None
                raise FastpathError(f"cannot enter network namespace {name!r}: {exc}") from None
        finally:
            os.close(target)
        try:
            yield
        finally:
            # If this fails the thread would silently keep working in the lab namespace,
            # which is far worse than a crash, so let the error propagate.
            _setns(home)
    finally:
        os.close(home)


def open_netns(name: str) -> int:
    """An fd on a named namespace. Holding it keeps the namespace, and so its inode number,
    alive: nsfs recycles inode numbers the moment a namespace is freed."""
    return os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)


def netns_fd_inode(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def pids_in_netns(name: str) -> list[int]:
    """Pids of every process whose network namespace is `name` (matched by nsfs inode)."""
    try:
        fd = open_netns(name)
    except FileNotFoundError:
        return []
    try:
        return pids_in_netns_inode(netns_fd_inode(fd))
    finally:
        os.close(fd)


def pids_in_netns_inode(ident: tuple[int, int]) -> list[int]:
    me = os.getpid()
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            # Exited while we looked, a zombie (no namespaces left) or not ours to see.
            continue
        if (st.st_dev, st.st_ino) == ident and int(entry) != me:
            pids.append(int(entry))
    return sorted(pids)


def umount_detach(path: str) -> None:
    """Lazily unmount `path` (MNT_DETACH), as `umount -l` does."""
    if _get_libc().umount2(path.encode(), 2) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def netns_unavailable_reason() -> str | None:
    """Why named network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); run as root"
    if not os.path.exists("/proc/self/ns/net"):
        return "this kernel has no network namespace support (CONFIG_NET_NS)"
    return None
