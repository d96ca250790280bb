//! Reflink cloning (FICLONE) and syncfs, the system calls std does not offer.
//!
//! Linux only: both are Linux system calls (the crates as a whole are built and tested on Linux
//! only; `safe_dir` relies on `openat2`-style `O_NOFOLLOW` walks and `sockopt` on Linux TCP
//! options too).
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

/// `FICLONE` from `linux/fs.h`: `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Makes `dst` share `src`'s blocks (the whole file). Fails with the file system's error (for
/// example "Operation not supported") where reflinks are not available.
pub fn clone(src: &File, dst: &File) -> std::io::Result<()> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed Files); FICLONE
    // takes the source descriptor as its integer argument and touches no memory of ours.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `syncfs(2)`: writes out everything cached for the file system holding `f`.
pub fn syncfs(f: &File) -> std::io::Result<()> {
    // SAFETY: the descriptor is open for the duration of the call (a borrowed File); syncfs
    // takes nothing else.
    let r = unsafe { libc::syncfs(f.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
