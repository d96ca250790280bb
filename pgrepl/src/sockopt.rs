//! `SO_RCVLOWAT`, which std, tokio and socket2 do not expose.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Sets the socket's receive low-water mark: readiness is signalled once `bytes` are queued
/// (or the receive window is nearly closed). Linux re-checks queued data when it is lowered.
pub(crate) fn set_rcvlowat(fd: BorrowedFd<'_>, bytes: i32) -> io::Result<()> {
    let v: libc::c_int = bytes;
    // SAFETY: `fd` is an open socket for the borrow's lifetime; the kernel reads exactly
    // `size_of::<c_int>()` bytes from `&v`, which lives across the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
