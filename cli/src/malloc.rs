//! One malloc arena for the whole process (glibc).
//!
//! glibc gives threads that allocate at the same moment arenas of their own, up to eight per
//! core, and memory freed in one arena is not reused by another. A restore reads 8 MiB pack
//! windows on the runtime's blocking threads and frees them on the restoring thread, and each
//! of those threads may hold an arena: peak RSS then grew with the size of the database
//! (54, 85 and 160–170 MiB for pgbench scale 20, 100 and 300), where one arena keeps it at the
//! working set (82–89 MiB at scale 300, `pgrepl-bench scaling`). Our threads allocate large
//! buffers rarely, so they do not contend for the one arena.

/// Sets it; call before any other thread is started.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn one_arena() {
    // SAFETY: mallopt only changes the allocator's parameters, and is called first in main,
    // before any other thread exists; its result (whether the setting took) needs no action.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Other allocators need nothing.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn one_arena() {}
