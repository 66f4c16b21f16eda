// SPDX-License-Identifier: GPL-2.0-only
/*
 * ffi_shim.c - liburing's inline helpers as real symbols, for ctypes.
 *
 * Purpose:    fastpath/uring/liburing.py drives io_uring through liburing with ctypes.
 *             liburing >= 2.4 ships liburing-ffi.so, which exports every helper that
 *             liburing.h defines `static inline` (io_uring_prep_*, io_uring_cqe_seen,
 *             io_uring_cq_advance, buffer-ring and set-data helpers). Debian 12 ships
 *             liburing 2.3, which has no such library; this shim is the stand-in and
 *             exports the same names with the same signatures, so Python binds one
 *             set of names whichever library it loads.
 * Techniques: every inline helper is renamed by a macro before <liburing.h> is
 *             included, so the header's definitions become private `fp_inl_*`
 *             functions and this file can define the public name as an exported
 *             wrapper around them (compiled with -fvisibility=hidden: only FP_EXPORT
 *             and echo_core.h's FASTPATH_ECHO_API symbols leave the library). The
 *             non-inline liburing API (io_uring_queue_init_params, io_uring_submit, ...)
 *             resolves through this library's DT_NEEDED on liburing.so.2. Extra batched
 *             helpers keep per-completion work out of Python: fastpath_uring_* reap and
 *             recycle, and the echo core (fastpath_echo_*, echo_core.c linked in: the
 *             same code fastpath-uring-echo runs) does the Python echo server's per-CQE
 *             bookkeeping for a whole batch in one call. A layout table lets Python
 *             check its ctypes mirrors of struct io_uring & co. (and of the echo core's
 *             structs) against the compiler's view before it runs.
 * Kernel:     whatever liburing supports (the echo core: 6.0+, multishot recv into a
 *             provided-buffer ring). Only fastpath_echo_enter enters the kernel, once per
 *             batch; the other helpers make no syscalls unless the SQ is full.
 * Usage:      built (with echo_core.c) and installed by uring/Makefile as
 *             $(PREFIX)/lib/fastpath/libfastpath_uring_ffi.so; loaded by liburing.py.
 * Test:       python -c 'from fastpath.uring import liburing as l; print(l.load().kind)'
 */
#include <stddef.h>
#include <stdint.h>

/* Step 1: rename the header's inline helpers so the public names are free to export. */
#define io_uring_cq_advance fp_inl_io_uring_cq_advance
#define io_uring_cqe_seen fp_inl_io_uring_cqe_seen
#define io_uring_sqe_set_data fp_inl_io_uring_sqe_set_data
#define io_uring_cqe_get_data fp_inl_io_uring_cqe_get_data
#define io_uring_sqe_set_data64 fp_inl_io_uring_sqe_set_data64
#define io_uring_cqe_get_data64 fp_inl_io_uring_cqe_get_data64
#define io_uring_sqe_set_flags fp_inl_io_uring_sqe_set_flags
#define io_uring_prep_rw fp_inl_io_uring_prep_rw
#define io_uring_prep_nop fp_inl_io_uring_prep_nop
#define io_uring_prep_read fp_inl_io_uring_prep_read
#define io_uring_prep_write fp_inl_io_uring_prep_write
#define io_uring_prep_readv fp_inl_io_uring_prep_readv
#define io_uring_prep_writev fp_inl_io_uring_prep_writev
#define io_uring_prep_accept fp_inl_io_uring_prep_accept
#define io_uring_prep_multishot_accept fp_inl_io_uring_prep_multishot_accept
#define io_uring_prep_connect fp_inl_io_uring_prep_connect
#define io_uring_prep_recv fp_inl_io_uring_prep_recv
#define io_uring_prep_recv_multishot fp_inl_io_uring_prep_recv_multishot
#define io_uring_prep_send fp_inl_io_uring_prep_send
#define io_uring_prep_close fp_inl_io_uring_prep_close
#define io_uring_prep_shutdown fp_inl_io_uring_prep_shutdown
#define io_uring_prep_cancel64 fp_inl_io_uring_prep_cancel64
#define io_uring_prep_cancel fp_inl_io_uring_prep_cancel
#define io_uring_prep_cancel_fd fp_inl_io_uring_prep_cancel_fd
#define io_uring_prep_timeout fp_inl_io_uring_prep_timeout
#define io_uring_prep_timeout_remove fp_inl_io_uring_prep_timeout_remove
#define io_uring_prep_link_timeout fp_inl_io_uring_prep_link_timeout
#define io_uring_prep_poll_add fp_inl_io_uring_prep_poll_add
#define io_uring_prep_poll_remove fp_inl_io_uring_prep_poll_remove
#define io_uring_sq_ready fp_inl_io_uring_sq_ready
#define io_uring_sq_space_left fp_inl_io_uring_sq_space_left
#define io_uring_cq_ready fp_inl_io_uring_cq_ready
#define io_uring_peek_cqe fp_inl_io_uring_peek_cqe
#define io_uring_wait_cqe fp_inl_io_uring_wait_cqe
#define io_uring_wait_cqe_nr fp_inl_io_uring_wait_cqe_nr
#define io_uring_opcode_supported fp_inl_io_uring_opcode_supported
#define io_uring_buf_ring_mask fp_inl_io_uring_buf_ring_mask
#define io_uring_buf_ring_init fp_inl_io_uring_buf_ring_init
#define io_uring_buf_ring_add fp_inl_io_uring_buf_ring_add
#define io_uring_buf_ring_advance fp_inl_io_uring_buf_ring_advance
#define io_uring_buf_ring_cq_advance fp_inl_io_uring_buf_ring_cq_advance

/* Step 2: the system header, compiled once here exactly as any liburing user sees it. */
#include <liburing.h>

#include "echo_core.h"

#undef io_uring_cq_advance
#undef io_uring_cqe_seen
#undef io_uring_sqe_set_data
#undef io_uring_cqe_get_data
#undef io_uring_sqe_set_data64
#undef io_uring_cqe_get_data64
#undef io_uring_sqe_set_flags
#undef io_uring_prep_rw
#undef io_uring_prep_nop
#undef io_uring_prep_read
#undef io_uring_prep_write
#undef io_uring_prep_readv
#undef io_uring_prep_writev
#undef io_uring_prep_accept
#undef io_uring_prep_multishot_accept
#undef io_uring_prep_connect
#undef io_uring_prep_recv
#undef io_uring_prep_recv_multishot
#undef io_uring_prep_send
#undef io_uring_prep_close
#undef io_uring_prep_shutdown
#undef io_uring_prep_cancel64
#undef io_uring_prep_cancel
#undef io_uring_prep_cancel_fd
#undef io_uring_prep_timeout
#undef io_uring_prep_timeout_remove
#undef io_uring_prep_link_timeout
#undef io_uring_prep_poll_add
#undef io_uring_prep_poll_remove
#undef io_uring_sq_ready
#undef io_uring_sq_space_left
#undef io_uring_cq_ready
#undef io_uring_peek_cqe
#undef io_uring_wait_cqe
#undef io_uring_wait_cqe_nr
#undef io_uring_opcode_supported
#undef io_uring_buf_ring_mask
#undef io_uring_buf_ring_init
#undef io_uring_buf_ring_add
#undef io_uring_buf_ring_advance
#undef io_uring_buf_ring_cq_advance

#define FP_EXPORT __attribute__((visibility("default")))

/* Bumped whenever a fastpath_* signature or the layout table format changes. */
#define FASTPATH_SHIM_ABI 2

#ifndef FP_LIBURING_VERSION
#define FP_LIBURING_VERSION "unknown" /* set by the Makefile from pkg-config */
#endif

/* Step 3: the public liburing-ffi names, one thin wrapper each. */
FP_EXPORT void io_uring_cq_advance(struct io_uring *ring, unsigned nr)
{
	fp_inl_io_uring_cq_advance(ring, nr);
}

FP_EXPORT void io_uring_cqe_seen(struct io_uring *ring, struct io_uring_cqe *cqe)
{
	fp_inl_io_uring_cqe_seen(ring, cqe);
}

FP_EXPORT void io_uring_sqe_set_data(struct io_uring_sqe *sqe, void *data)
{
	fp_inl_io_uring_sqe_set_data(sqe, data);
}

FP_EXPORT void *io_uring_cqe_get_data(const struct io_uring_cqe *cqe)
{
	return fp_inl_io_uring_cqe_get_data(cqe);
}

FP_EXPORT void io_uring_sqe_set_data64(struct io_uring_sqe *sqe, __u64 data)
{
	fp_inl_io_uring_sqe_set_data64(sqe, data);
}

FP_EXPORT __u64 io_uring_cqe_get_data64(const struct io_uring_cqe *cqe)
{
	return fp_inl_io_uring_cqe_get_data64(cqe);
}

FP_EXPORT void io_uring_sqe_set_flags(struct io_uring_sqe *sqe, unsigned flags)
{
	fp_inl_io_uring_sqe_set_flags(sqe, flags);
}

FP_EXPORT void io_uring_prep_rw(int op, struct io_uring_sqe *sqe, int fd, const void *addr,
				unsigned len, __u64 offset)
{
	fp_inl_io_uring_prep_rw(op, sqe, fd, addr, len, offset);
}

FP_EXPORT void io_uring_prep_nop(struct io_uring_sqe *sqe)
{
	fp_inl_io_uring_prep_nop(sqe);
}

FP_EXPORT void io_uring_prep_read(struct io_uring_sqe *sqe, int fd, void *buf, unsigned nbytes,
				  __u64 offset)
{
	fp_inl_io_uring_prep_read(sqe, fd, buf, nbytes, offset);
}

FP_EXPORT void io_uring_prep_write(struct io_uring_sqe *sqe, int fd, const void *buf,
				   unsigned nbytes, __u64 offset)
{
	fp_inl_io_uring_prep_write(sqe, fd, buf, nbytes, offset);
}

FP_EXPORT void io_uring_prep_readv(struct io_uring_sqe *sqe, int fd, const struct iovec *iovecs,
				   unsigned nr_vecs, __u64 offset)
{
	fp_inl_io_uring_prep_readv(sqe, fd, iovecs, nr_vecs, offset);
}

FP_EXPORT void io_uring_prep_writev(struct io_uring_sqe *sqe, int fd, const struct iovec *iovecs,
				    unsigned nr_vecs, __u64 offset)
{
	fp_inl_io_uring_prep_writev(sqe, fd, iovecs, nr_vecs, offset);
}

FP_EXPORT void io_uring_prep_accept(struct io_uring_sqe *sqe, int fd, struct sockaddr *addr,
				    socklen_t *addrlen, int flags)
{
	fp_inl_io_uring_prep_accept(sqe, fd, addr, addrlen, flags);
}

FP_EXPORT void io_uring_prep_multishot_accept(struct io_uring_sqe *sqe, int fd,
					      struct sockaddr *addr, socklen_t *addrlen, int flags)
{
	fp_inl_io_uring_prep_multishot_accept(sqe, fd, addr, addrlen, flags);
}

FP_EXPORT void io_uring_prep_connect(struct io_uring_sqe *sqe, int fd,
				     const struct sockaddr *addr, socklen_t addrlen)
{
	fp_inl_io_uring_prep_connect(sqe, fd, addr, addrlen);
}

FP_EXPORT void io_uring_prep_recv(struct io_uring_sqe *sqe, int sockfd, void *buf, size_t len,
				  int flags)
{
	fp_inl_io_uring_prep_recv(sqe, sockfd, buf, len, flags);
}

FP_EXPORT void io_uring_prep_recv_multishot(struct io_uring_sqe *sqe, int sockfd, void *buf,
					    size_t len, int flags)
{
	fp_inl_io_uring_prep_recv_multishot(sqe, sockfd, buf, len, flags);
}

FP_EXPORT void io_uring_prep_send(struct io_uring_sqe *sqe, int sockfd, const void *buf,
				  size_t len, int flags)
{
	fp_inl_io_uring_prep_send(sqe, sockfd, buf, len, flags);
}

FP_EXPORT void io_uring_prep_close(struct io_uring_sqe *sqe, int fd)
{
	fp_inl_io_uring_prep_close(sqe, fd);
}

FP_EXPORT void io_uring_prep_shutdown(struct io_uring_sqe *sqe, int fd, int how)
{
	fp_inl_io_uring_prep_shutdown(sqe, fd, how);
}

FP_EXPORT void io_uring_prep_cancel64(struct io_uring_sqe *sqe, __u64 user_data, int flags)
{
	fp_inl_io_uring_prep_cancel64(sqe, user_data, flags);
}

FP_EXPORT void io_uring_prep_cancel(struct io_uring_sqe *sqe, void *user_data, int flags)
{
	fp_inl_io_uring_prep_cancel(sqe, user_data, flags);
}

FP_EXPORT void io_uring_prep_cancel_fd(struct io_uring_sqe *sqe, int fd, unsigned int flags)
{
	fp_inl_io_uring_prep_cancel_fd(sqe, fd, flags);
}

FP_EXPORT void io_uring_prep_timeout(struct io_uring_sqe *sqe, struct __kernel_timespec *ts,
				     unsigned count, unsigned flags)
{
	fp_inl_io_uring_prep_timeout(sqe, ts, count, flags);
}

FP_EXPORT void io_uring_prep_timeout_remove(struct io_uring_sqe *sqe, __u64 user_data,
					    unsigned flags)
{
	fp_inl_io_uring_prep_timeout_remove(sqe, user_data, flags);
}

FP_EXPORT void io_uring_prep_link_timeout(struct io_uring_sqe *sqe, struct __kernel_timespec *ts,
					  unsigned flags)
{
	fp_inl_io_uring_prep_link_timeout(sqe, ts, flags);
}

FP_EXPORT void io_uring_prep_poll_add(struct io_uring_sqe *sqe, int fd, unsigned poll_mask)
{
	fp_inl_io_uring_prep_poll_add(sqe, fd, poll_mask);
}

FP_EXPORT void io_uring_prep_poll_remove(struct io_uring_sqe *sqe, __u64 user_data)
{
	fp_inl_io_uring_prep_poll_remove(sqe, user_data);
}

FP_EXPORT unsigned io_uring_sq_ready(const struct io_uring *ring)
{
	return fp_inl_io_uring_sq_ready(ring);
}

FP_EXPORT unsigned io_uring_sq_space_left(const struct io_uring *ring)
{
	return fp_inl_io_uring_sq_space_left(ring);
}

FP_EXPORT unsigned io_uring_cq_ready(const struct io_uring *ring)
{
	return fp_inl_io_uring_cq_ready(ring);
}

FP_EXPORT int io_uring_peek_cqe(struct io_uring *ring, struct io_uring_cqe **cqe_ptr)
{
	return fp_inl_io_uring_peek_cqe(ring, cqe_ptr);
}

FP_EXPORT int io_uring_wait_cqe(struct io_uring *ring, struct io_uring_cqe **cqe_ptr)
{
	return fp_inl_io_uring_wait_cqe(ring, cqe_ptr);
}

FP_EXPORT int io_uring_wait_cqe_nr(struct io_uring *ring, struct io_uring_cqe **cqe_ptr,
				   unsigned wait_nr)
{
	return fp_inl_io_uring_wait_cqe_nr(ring, cqe_ptr, wait_nr);
}

FP_EXPORT int io_uring_opcode_supported(const struct io_uring_probe *p, int op)
{
	return fp_inl_io_uring_opcode_supported(p, op);
}

FP_EXPORT int io_uring_buf_ring_mask(__u32 ring_entries)
{
	return fp_inl_io_uring_buf_ring_mask(ring_entries);
}

FP_EXPORT void io_uring_buf_ring_init(struct io_uring_buf_ring *br)
{
	fp_inl_io_uring_buf_ring_init(br);
}

FP_EXPORT void io_uring_buf_ring_add(struct io_uring_buf_ring *br, void *addr, unsigned int len,
				     unsigned short bid, int mask, int buf_offset)
{
	fp_inl_io_uring_buf_ring_add(br, addr, len, bid, mask, buf_offset);
}

FP_EXPORT void io_uring_buf_ring_advance(struct io_uring_buf_ring *br, int count)
{
	fp_inl_io_uring_buf_ring_advance(br, count);
}

FP_EXPORT void io_uring_buf_ring_cq_advance(struct io_uring *ring, struct io_uring_buf_ring *br,
					    int count)
{
	fp_inl_io_uring_buf_ring_cq_advance(ring, br, count);
}

/* Step 4: fastpath's own helpers (not in liburing-ffi; Python falls back without them). */

/* One completion as Python reads it: 16 bytes, no pointer chasing. */
struct fastpath_cqe {
	__u64 user_data;
	__s32 res;
	__u32 flags;
};

FP_EXPORT int fastpath_shim_abi(void)
{
	return FASTPATH_SHIM_ABI;
}

FP_EXPORT const char *fastpath_liburing_version(void)
{
	return FP_LIBURING_VERSION;
}

/*
 * Copy up to `max` ready completions into `out` and retire them from the CQ ring with a
 * single head update. Returns how many were copied. Never enters the kernel.
 */
FP_EXPORT unsigned fastpath_uring_reap(struct io_uring *ring, struct fastpath_cqe *out,
				       unsigned max)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;

	io_uring_for_each_cqe(ring, head, cqe) {
		if (n == max)
			break;
		out[n].user_data = cqe->user_data;
		out[n].res = cqe->res;
		out[n].flags = cqe->flags;
		n++;
	}
	fp_inl_io_uring_cq_advance(ring, n);
	return n;
}

/*
 * Hand `count` buffers back to a provided-buffer ring in one tail update. Buffer `bid`
 * lives at base + bid * buf_size, the layout BufferRing allocates.
 */
FP_EXPORT void fastpath_buf_ring_recycle(struct io_uring_buf_ring *br, void *base,
					 unsigned buf_size, unsigned entries,
					 const __u16 *bids, unsigned count)
{
	int mask = fp_inl_io_uring_buf_ring_mask(entries);
	unsigned i;

	for (i = 0; i < count; i++)
		fp_inl_io_uring_buf_ring_add(br, (char *)base + (size_t)bids[i] * buf_size,
					     buf_size, bids[i], mask, (int)i);
	fp_inl_io_uring_buf_ring_advance(br, (int)count);
}

/*
 * Step 5: the echo core (echo_core.c, shared with fastpath-uring-echo) for the Python
 * server: fastpath_echo_new, _free, _close and _flush are exported as they are; these
 * three add what ctypes needs - a connection's slot is its fd, and the completions that
 * need Python's decision are copied out into an array it reads in one go.
 */
FP_EXPORT struct fastpath_echo_conn *fastpath_echo_open(struct fastpath_echo *e, int fd)
{
	return fd < 0 ? NULL : fastpath_echo_open_slot(e, (unsigned)fd, fd);
}

struct copy_out {
	struct fastpath_cqe *out;
	unsigned n, max;
};

static int copy_out(void *ctx, const struct io_uring_cqe *cqe)
{
	struct copy_out *co = ctx;

	co->out[co->n].user_data = cqe->user_data;
	co->out[co->n].res = cqe->res;
	co->out[co->n].flags = cqe->flags;
	return ++co->n < co->max;
}

/*
 * Do the bookkeeping of every ready completion (up to `max` of them for Python), copy out
 * the ones Python must decide on, then publish buffers. Returns how many were copied;
 * `max` means there may be more. Never enters the kernel unless the SQ is full.
 */
FP_EXPORT unsigned fastpath_echo_reap(struct fastpath_echo *e, struct fastpath_cqe *out,
				      unsigned max)
{
	struct copy_out co = { out, 0, max };

	if (max)
		fastpath_echo_run(e, copy_out, &co);
	fastpath_echo_flush(e);
	return co.n;
}

/*
 * The event loop's one call per batch: submit what is queued, wait for `wait_nr`
 * completions, then fastpath_echo_reap. Returns how many completions were copied out,
 * or -errno when entering the kernel failed (EINTR and the like count as none ready)
 * or the submission queue stayed full.
 */
FP_EXPORT int fastpath_echo_enter(struct fastpath_echo *e, struct fastpath_cqe *out,
				  unsigned max, unsigned wait_nr)
{
	int ret = fastpath_echo_submit_and_wait(e, wait_nr);

	if (ret < 0)
		return ret;
	ret = (int)fastpath_echo_reap(e, out, max);
	return e->st.error ? e->st.error : ret;
}

/*
 * Layout of every struct Python mirrors, as the compiler sees the system header.
 * Names are "<struct>.<field path>" for offsets and "<struct>" for sizes; Python walks
 * its ctypes mirrors the same way and refuses to run unless both sides agree.
 */
struct fastpath_layout_entry {
	const char *name;
	__u64 value;
};

/* Kernel 6.5 headers renamed the last u64 of both ring-offset structs from resv2 to
 * user_addr (IORING_SETUP_NO_MMAP came with it): same offset, the mirrors keep "resv2". */
#ifdef IORING_SETUP_NO_MMAP
#define SQ_RESV2 user_addr
#else
#define SQ_RESV2 resv2
#endif
/* liburing 2.4 (kernel 6.4) named io_uring_buf_reg's u16 after bgid `flags` (was `pad`). */
#if defined(IO_URING_VERSION_MAJOR) && (IO_URING_VERSION_MAJOR > 2 || IO_URING_VERSION_MINOR >= 4)
#define BUF_REG_PAD flags
#else
#define BUF_REG_PAD pad
#endif

#define SZ(type, name) { name, sizeof(type) }
#define OFF(type, member, name) { name, offsetof(type, member) }

static const struct fastpath_layout_entry layout_table[] = {
	SZ(struct io_uring_sq, "io_uring_sq"),
	OFF(struct io_uring_sq, khead, "io_uring_sq.khead"),
	OFF(struct io_uring_sq, ktail, "io_uring_sq.ktail"),
	OFF(struct io_uring_sq, kring_mask, "io_uring_sq.kring_mask"),
	OFF(struct io_uring_sq, kring_entries, "io_uring_sq.kring_entries"),
	OFF(struct io_uring_sq, kflags, "io_uring_sq.kflags"),
	OFF(struct io_uring_sq, kdropped, "io_uring_sq.kdropped"),
	OFF(struct io_uring_sq, array, "io_uring_sq.array"),
	OFF(struct io_uring_sq, sqes, "io_uring_sq.sqes"),
	OFF(struct io_uring_sq, sqe_head, "io_uring_sq.sqe_head"),
	OFF(struct io_uring_sq, sqe_tail, "io_uring_sq.sqe_tail"),
	OFF(struct io_uring_sq, ring_sz, "io_uring_sq.ring_sz"),
	OFF(struct io_uring_sq, ring_ptr, "io_uring_sq.ring_ptr"),
	OFF(struct io_uring_sq, ring_mask, "io_uring_sq.ring_mask"),
	OFF(struct io_uring_sq, ring_entries, "io_uring_sq.ring_entries"),
	OFF(struct io_uring_sq, pad, "io_uring_sq.pad"),

	SZ(struct io_uring_cq, "io_uring_cq"),
	OFF(struct io_uring_cq, khead, "io_uring_cq.khead"),
	OFF(struct io_uring_cq, ktail, "io_uring_cq.ktail"),
	OFF(struct io_uring_cq, kring_mask, "io_uring_cq.kring_mask"),
	OFF(struct io_uring_cq, kring_entries, "io_uring_cq.kring_entries"),
	OFF(struct io_uring_cq, kflags, "io_uring_cq.kflags"),
	OFF(struct io_uring_cq, koverflow, "io_uring_cq.koverflow"),
	OFF(struct io_uring_cq, cqes, "io_uring_cq.cqes"),
	OFF(struct io_uring_cq, ring_sz, "io_uring_cq.ring_sz"),
	OFF(struct io_uring_cq, ring_ptr, "io_uring_cq.ring_ptr"),
	OFF(struct io_uring_cq, ring_mask, "io_uring_cq.ring_mask"),
	OFF(struct io_uring_cq, ring_entries, "io_uring_cq.ring_entries"),
	OFF(struct io_uring_cq, pad, "io_uring_cq.pad"),

	SZ(struct io_uring, "io_uring"),
	OFF(struct io_uring, sq, "io_uring.sq"),
	OFF(struct io_uring, cq, "io_uring.cq"),
	OFF(struct io_uring, flags, "io_uring.flags"),
	OFF(struct io_uring, ring_fd, "io_uring.ring_fd"),
	OFF(struct io_uring, features, "io_uring.features"),
	OFF(struct io_uring, enter_ring_fd, "io_uring.enter_ring_fd"),
	OFF(struct io_uring, int_flags, "io_uring.int_flags"),
	OFF(struct io_uring, pad, "io_uring.pad"),
	OFF(struct io_uring, pad2, "io_uring.pad2"),

	SZ(struct io_uring_sqe, "io_uring_sqe"),
	OFF(struct io_uring_sqe, opcode, "io_uring_sqe.opcode"),
	OFF(struct io_uring_sqe, flags, "io_uring_sqe.flags"),
	OFF(struct io_uring_sqe, ioprio, "io_uring_sqe.ioprio"),
	OFF(struct io_uring_sqe, fd, "io_uring_sqe.fd"),
	OFF(struct io_uring_sqe, off, "io_uring_sqe.off"),
	OFF(struct io_uring_sqe, addr, "io_uring_sqe.addr"),
	OFF(struct io_uring_sqe, len, "io_uring_sqe.len"),
	OFF(struct io_uring_sqe, rw_flags, "io_uring_sqe.op_flags"),
	OFF(struct io_uring_sqe, user_data, "io_uring_sqe.user_data"),
	OFF(struct io_uring_sqe, buf_group, "io_uring_sqe.buf_group"),
	OFF(struct io_uring_sqe, personality, "io_uring_sqe.personality"),
	OFF(struct io_uring_sqe, file_index, "io_uring_sqe.file_index"),
	OFF(struct io_uring_sqe, addr3, "io_uring_sqe.addr3"),
	OFF(struct io_uring_sqe, __pad2, "io_uring_sqe.pad2"),

	SZ(struct io_uring_cqe, "io_uring_cqe"),
	OFF(struct io_uring_cqe, user_data, "io_uring_cqe.user_data"),
	OFF(struct io_uring_cqe, res, "io_uring_cqe.res"),
	OFF(struct io_uring_cqe, flags, "io_uring_cqe.flags"),

	SZ(struct io_sqring_offsets, "io_sqring_offsets"),
	OFF(struct io_sqring_offsets, head, "io_sqring_offsets.head"),
	OFF(struct io_sqring_offsets, tail, "io_sqring_offsets.tail"),
	OFF(struct io_sqring_offsets, ring_mask, "io_sqring_offsets.ring_mask"),
	OFF(struct io_sqring_offsets, ring_entries, "io_sqring_offsets.ring_entries"),
	OFF(struct io_sqring_offsets, flags, "io_sqring_offsets.flags"),
	OFF(struct io_sqring_offsets, dropped, "io_sqring_offsets.dropped"),
	OFF(struct io_sqring_offsets, array, "io_sqring_offsets.array"),
	OFF(struct io_sqring_offsets, resv1, "io_sqring_offsets.resv1"),
	OFF(struct io_sqring_offsets, SQ_RESV2, "io_sqring_offsets.resv2"),

	SZ(struct io_cqring_offsets, "io_cqring_offsets"),
	OFF(struct io_cqring_offsets, head, "io_cqring_offsets.head"),
	OFF(struct io_cqring_offsets, tail, "io_cqring_offsets.tail"),
	OFF(struct io_cqring_offsets, ring_mask, "io_cqring_offsets.ring_mask"),
	OFF(struct io_cqring_offsets, ring_entries, "io_cqring_offsets.ring_entries"),
	OFF(struct io_cqring_offsets, overflow, "io_cqring_offsets.overflow"),
	OFF(struct io_cqring_offsets, cqes, "io_cqring_offsets.cqes"),
	OFF(struct io_cqring_offsets, flags, "io_cqring_offsets.flags"),
	OFF(struct io_cqring_offsets, resv1, "io_cqring_offsets.resv1"),
	OFF(struct io_cqring_offsets, SQ_RESV2, "io_cqring_offsets.resv2"),

	SZ(struct io_uring_params, "io_uring_params"),
	OFF(struct io_uring_params, sq_entries, "io_uring_params.sq_entries"),
	OFF(struct io_uring_params, cq_entries, "io_uring_params.cq_entries"),
	OFF(struct io_uring_params, flags, "io_uring_params.flags"),
	OFF(struct io_uring_params, sq_thread_cpu, "io_uring_params.sq_thread_cpu"),
	OFF(struct io_uring_params, sq_thread_idle, "io_uring_params.sq_thread_idle"),
	OFF(struct io_uring_params, features, "io_uring_params.features"),
	OFF(struct io_uring_params, wq_fd, "io_uring_params.wq_fd"),
	OFF(struct io_uring_params, resv, "io_uring_params.resv"),
	OFF(struct io_uring_params, sq_off, "io_uring_params.sq_off"),
	OFF(struct io_uring_params, cq_off, "io_uring_params.cq_off"),

	SZ(struct io_uring_probe_op, "io_uring_probe_op"),
	OFF(struct io_uring_probe_op, op, "io_uring_probe_op.op"),
	OFF(struct io_uring_probe_op, resv, "io_uring_probe_op.resv"),
	OFF(struct io_uring_probe_op, flags, "io_uring_probe_op.flags"),
	OFF(struct io_uring_probe_op, resv2, "io_uring_probe_op.resv2"),

	SZ(struct io_uring_probe, "io_uring_probe"),
	OFF(struct io_uring_probe, last_op, "io_uring_probe.last_op"),
	OFF(struct io_uring_probe, ops_len, "io_uring_probe.ops_len"),
	OFF(struct io_uring_probe, resv, "io_uring_probe.resv"),
	OFF(struct io_uring_probe, resv2, "io_uring_probe.resv2"),

	SZ(struct io_uring_buf, "io_uring_buf"),
	OFF(struct io_uring_buf, addr, "io_uring_buf.addr"),
	OFF(struct io_uring_buf, len, "io_uring_buf.len"),
	OFF(struct io_uring_buf, bid, "io_uring_buf.bid"),
	OFF(struct io_uring_buf, resv, "io_uring_buf.resv"),

	SZ(struct io_uring_buf_reg, "io_uring_buf_reg"),
	OFF(struct io_uring_buf_reg, ring_addr, "io_uring_buf_reg.ring_addr"),
	OFF(struct io_uring_buf_reg, ring_entries, "io_uring_buf_reg.ring_entries"),
	OFF(struct io_uring_buf_reg, bgid, "io_uring_buf_reg.bgid"),
	OFF(struct io_uring_buf_reg, BUF_REG_PAD, "io_uring_buf_reg.pad"),
	OFF(struct io_uring_buf_reg, resv, "io_uring_buf_reg.resv"),

	SZ(struct __kernel_timespec, "kernel_timespec"),
	OFF(struct __kernel_timespec, tv_sec, "kernel_timespec.tv_sec"),
	OFF(struct __kernel_timespec, tv_nsec, "kernel_timespec.tv_nsec"),

	SZ(struct fastpath_cqe, "fastpath_cqe"),
	OFF(struct fastpath_cqe, user_data, "fastpath_cqe.user_data"),
	OFF(struct fastpath_cqe, res, "fastpath_cqe.res"),
	OFF(struct fastpath_cqe, flags, "fastpath_cqe.flags"),

	SZ(struct fastpath_echo_conn, "fastpath_echo_conn"),
	OFF(struct fastpath_echo_conn, fd, "fastpath_echo_conn.fd"),
	OFF(struct fastpath_echo_conn, gen, "fastpath_echo_conn.gen"),
	OFF(struct fastpath_echo_conn, q_head, "fastpath_echo_conn.q_head"),
	OFF(struct fastpath_echo_conn, q_tail, "fastpath_echo_conn.q_tail"),
	OFF(struct fastpath_echo_conn, q_bytes, "fastpath_echo_conn.q_bytes"),
	OFF(struct fastpath_echo_conn, sent_off, "fastpath_echo_conn.sent_off"),
	OFF(struct fastpath_echo_conn, live, "fastpath_echo_conn.live"),
	OFF(struct fastpath_echo_conn, closing, "fastpath_echo_conn.closing"),
	OFF(struct fastpath_echo_conn, recv_armed, "fastpath_echo_conn.recv_armed"),
	OFF(struct fastpath_echo_conn, send_inflight, "fastpath_echo_conn.send_inflight"),
	OFF(struct fastpath_echo_conn, paused, "fastpath_echo_conn.paused"),
	OFF(struct fastpath_echo_conn, eof, "fastpath_echo_conn.eof"),
	OFF(struct fastpath_echo_conn, starved, "fastpath_echo_conn.starved"),
	OFF(struct fastpath_echo_conn, pad, "fastpath_echo_conn.pad"),

	SZ(struct fastpath_echo_stats, "fastpath_echo_stats"),
	OFF(struct fastpath_echo_stats, enters, "fastpath_echo_stats.enters"),
	OFF(struct fastpath_echo_stats, cqes, "fastpath_echo_stats.cqes"),
	OFF(struct fastpath_echo_stats, messages, "fastpath_echo_stats.messages"),
	OFF(struct fastpath_echo_stats, bytes_in, "fastpath_echo_stats.bytes_in"),
	OFF(struct fastpath_echo_stats, sends, "fastpath_echo_stats.sends"),
	OFF(struct fastpath_echo_stats, bytes_out, "fastpath_echo_stats.bytes_out"),
	OFF(struct fastpath_echo_stats, short_sends, "fastpath_echo_stats.short_sends"),
	OFF(struct fastpath_echo_stats, bytes_queued, "fastpath_echo_stats.bytes_queued"),
	OFF(struct fastpath_echo_stats, open_conns, "fastpath_echo_stats.open_conns"),
	OFF(struct fastpath_echo_stats, free_buffers, "fastpath_echo_stats.free_buffers"),
	OFF(struct fastpath_echo_stats, published, "fastpath_echo_stats.published"),
	OFF(struct fastpath_echo_stats, window, "fastpath_echo_stats.window"),
	OFF(struct fastpath_echo_stats, error, "fastpath_echo_stats.error"),
	OFF(struct fastpath_echo_stats, pad, "fastpath_echo_stats.pad"),
};

FP_EXPORT const struct fastpath_layout_entry *fastpath_uring_layout(unsigned *count)
{
	*count = sizeof(layout_table) / sizeof(layout_table[0]);
	return layout_table;
}
