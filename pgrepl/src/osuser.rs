//! The operating system's account of the effective user, as libpq takes the default user name
//! from it (not from `$USER`, which a service manager or a container may not set).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::path::PathBuf;

/// The effective user's name and home directory from the password database.
pub(crate) fn effective_user() -> Option<(String, PathBuf)> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `passwd` is a plain C struct that getpwuid_r fills in; its string fields point
    // into `buf`, which outlives every use below; `result` is set to null or to `&pw`.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() || pw.pw_name.is_null() {
            return None;
        }
        let name = CStr::from_ptr(pw.pw_name).to_str().ok()?.to_owned();
        let home = if pw.pw_dir.is_null() {
            PathBuf::new()
        } else {
            PathBuf::from(CStr::from_ptr(pw.pw_dir).to_str().ok()?)
        };
        Some((name, home))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_effective_user_has_a_name() {
        let (name, _) = super::effective_user().expect("a password entry for this user");
        assert!(!name.is_empty());
    }
}
