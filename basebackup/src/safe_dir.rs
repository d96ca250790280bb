//! Writing beneath a directory without ever following a link below it.
//!
//! Archives name their entries by path, and whoever made the archive (a server at the other end
//! of the wire, or a file on disk) must not be able to make us write anywhere else. A
//! [`SafeDir`] holds an open directory and resolves a relative path one component at a time with
//! `openat(O_DIRECTORY | O_NOFOLLOW)`: a symbolic link anywhere below the root, whoever made it,
//! stops the walk with an error instead of being followed. Files are created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, so an existing name (a file, a link, a second entry of the
//! same name) is never opened for writing either. Only the root is opened as the caller named it:
//! links in a path the user chose are the user's choice.
//!
//! This module owns the file-system side of that rule; which entries an archive may hold at all
//! is [`crate::archive_rules`]'s job. Linux and other Unix systems (`openat` family).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

/// An open directory under which paths are resolved without following links.
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn refused(path: &Path, what: &str) -> io::Error {
    io::Error::other(format!(
        "\"{}\" is {what}; refusing to write through it",
        path.display()
    ))
}

/// The components of a relative path; anything that could leave the directory is refused.
fn components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "path \"{}\" is not a plain relative path (it has \"{}\")",
                    rel.display(),
                    c.as_os_str().to_string_lossy()
                ),
            )),
        })
        .collect()
}

impl SafeDir {
    /// Opens the directory at `path` (links in `path` itself are followed: it is the caller's).
    pub fn open(path: &Path) -> io::Result<SafeDir> {
        let fd = rustix::fs::openat(
            CWD,
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(SafeDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Creates `path` (and its parents) with `mode` if it does not exist, then opens it.
    pub fn create(path: &Path, mode: u32) -> io::Result<SafeDir> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)?;
        Self::open(path)
    }

    /// The path this directory was reached by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's descriptor.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The child directory `name` (one component), created with `mode` when missing and
    /// `create` is set; an error if it is a link or not a directory.
    fn child(&self, name: &OsStr, create: bool, mode: u32) -> io::Result<SafeDir> {
        let path = self.path.join(name);
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
        let mut made = false;
        loop {
            match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
                Ok(fd) => return Ok(SafeDir { fd, path }),
                Err(Errno::NOENT) if create && !made => {
                    match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode)) {
                        Ok(()) | Err(Errno::EXIST) => made = true,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                    return Err(
                        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                            Ok(st)
                                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                                    == rustix::fs::FileType::Symlink =>
                            {
                                refused(&path, "a symbolic link")
                            }
                            Ok(_) => refused(&path, "not a directory"),
                            Err(_) => e.into(),
                        },
                    )
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The directory at `rel` below this one, each missing component created with `mode` when
    /// `create` is set. No component may be a link, `..`, or absolute.
    pub fn dir(&self, rel: &Path, create: bool, mode: u32) -> io::Result<SafeDir> {
        let parts = components(rel)?;
        let Some((first, rest)) = parts.split_first() else {
            return Ok(SafeDir {
                fd: self.fd.try_clone()?,
                path: self.path.clone(),
            });
        };
        let mut cur = self.child(first, create, mode)?;
        for p in rest {
            cur = cur.child(p, create, mode)?;
        }
        Ok(cur)
    }

    /// Creates the file `name` (one component) in this directory with `mode`; it must not exist
    /// in any form. `direct` asks for `O_DIRECT` (Linux).
    pub fn create_file(&self, name: &OsStr, mode: u32, direct: bool) -> io::Result<File> {
        single(name)?;
        let mut flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        flags |= OFlags::CLOEXEC;
        #[cfg(target_os = "linux")]
        if direct {
            flags |= OFlags::DIRECT;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = direct;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(mode))?;
        Ok(File::from(fd))
    }

    /// Opens the existing regular file `name` (one component) for reading, never through a link.
    pub fn open_file(&self, name: &OsStr) -> io::Result<File> {
        single(name)?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }

    /// Creates the symbolic link `name` (one component) pointing at `target`. The target is not
    /// resolved here; nothing in this module ever follows it.
    pub fn symlink(&self, name: &OsStr, target: &Path) -> io::Result<()> {
        single(name)?;
        rustix::fs::symlinkat(target, &self.fd, name)?;
        Ok(())
    }

    /// Renames `from` in this directory to `to` in `to_dir` (both one component).
    pub fn rename(&self, from: &OsStr, to_dir: &SafeDir, to: &OsStr) -> io::Result<()> {
        single(from)?;
        single(to)?;
        rustix::fs::renameat(&self.fd, from, &to_dir.fd, to)?;
        Ok(())
    }

    /// Makes the directory's entries durable (fsync of the directory).
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd)?;
        Ok(())
    }
}

fn single(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("\"{}\" is not a file name", name.to_string_lossy()),
        ));
    }
    Ok(())
}

/// Splits an archive path (as [`crate::tar`] reports it, bytes that are not UTF-8 escaped by
/// [`crate::pathbytes`]) into its parent directory and its last component.
pub fn split_entry_path(path: &str) -> (PathBuf, std::ffi::OsString) {
    let p = crate::pathbytes::to_path(path);
    let name = p.file_name().map(OsStr::to_os_string).unwrap_or_default();
    let parent = p.parent().map(Path::to_path_buf).unwrap_or_default();
    (parent, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pgrepl-safedir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn links_below_the_root_are_never_followed() {
        let base = tmp("links");
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("evil")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), root.join("lnk")).unwrap();
        let d = SafeDir::open(&root).unwrap();

        let e = d.dir(Path::new("evil"), true, 0o700).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        let e = d.dir(Path::new("evil/sub"), true, 0o700).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        // a file through a link, or replacing one
        assert!(d.create_file(OsStr::new("lnk"), 0o600, false).is_err());
        assert!(d.dir(Path::new("../outside"), true, 0o700).is_err());
        assert!(d.dir(Path::new("/tmp"), true, 0o700).is_err());
        assert!(d.create_file(OsStr::new(".."), 0o600, false).is_err());
        assert!(d.create_file(OsStr::new("a/b"), 0o600, false).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

        // ordinary use: nested directories made 0700, files 0600, created once only
        let sub = d.dir(Path::new("a/b/c"), true, 0o700).unwrap();
        let mut f = sub.create_file(OsStr::new("x"), 0o600, false).unwrap();
        f.write_all(b"hello").unwrap();
        assert_eq!(std::fs::read(root.join("a/b/c/x")).unwrap(), b"hello");
        assert!(sub.create_file(OsStr::new("x"), 0o600, false).is_err());
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(root.join("a/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o700);
        let e = d.dir(Path::new("a/b/c/x"), true, 0o700).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
