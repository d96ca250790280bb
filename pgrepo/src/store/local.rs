//! A repository in a local directory (or a mounted file system): objects are files under the
//! root, written as a temporary file, fsynced, then renamed (or linked, for create-only puts) into
//! place and the directory fsynced. Directories are 0700, files 0600. Temporary names contain a
//! `~`, which no key can, so listings never see them.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{check_key, check_prefix, BoxFut, ObjectMeta, PutMode, Store, StoreError, Upload};

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A store in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: Arc<PathBuf>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Config(format!("local store task failed: {e}"))))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

fn make_dirs(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create directory", dir))
}

impl LocalStore {
    /// A store rooted at `root` (created, 0700, when absent).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        make_dirs(&root)?;
        Ok(LocalStore {
            root: Arc::new(root),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn temp_for(path: &Path) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!("~{}-{n}-{nanos}.tmp", std::process::id()));
        path.with_file_name(name)
    }

    /// Moves a complete temporary file into place.
    fn commit(
        tmp: &Path,
        path: &Path,
        mode: PutMode,
        store: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        match mode {
            PutMode::Overwrite => fs::rename(tmp, path).map_err(io("rename into place", path))?,
            PutMode::Create => {
                let r = fs::hard_link(tmp, path);
                let _ = fs::remove_file(tmp);
                match r {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Err(StoreError::AlreadyExists {
                            store: store.to_owned(),
                            key: key.to_owned(),
                        })
                    }
                    Err(e) => return Err(io("link into place", path)(e)),
                }
            }
        }
        sync_dir(dir)
    }
}

/// An upload into a temporary file beside its key.
#[derive(Debug)]
struct LocalUpload {
    file: Option<File>,
    tmp: PathBuf,
    path: PathBuf,
    written: u64,
}

impl Upload for LocalUpload {
    fn write(&mut self, data: Bytes) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let Some(mut f) = self.file.take() else {
                return Err(StoreError::Config("upload already ended".into()));
            };
            let tmp = self.tmp.clone();
            let len = data.len() as u64;
            let f = blocking(move || {
                f.write_all(&data).map_err(io("write", &tmp))?;
                Ok(f)
            })
            .await?;
            self.file = Some(f);
            self.written += len;
            Ok(())
        })
    }

    fn finish(mut self: Box<Self>) -> BoxFut<'static, Result<u64, StoreError>> {
        Box::pin(async move {
            let f = self.file.take();
            let (tmp, path, size) = (self.tmp.clone(), self.path.clone(), self.written);
            let r = blocking(move || {
                let f = f.ok_or_else(|| StoreError::Config("upload already ended".into()))?;
                f.sync_all().map_err(io("fsync", &tmp))?;
                drop(f);
                LocalStore::commit(&tmp, &path, PutMode::Overwrite, "", "")
            })
            .await;
            if r.is_err() {
                let _ = fs::remove_file(&self.tmp);
            }
            r.map(|()| size)
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFut<'static, ()> {
        Box::pin(async move {
            self.file.take();
            let _ = fs::remove_file(&self.tmp);
        })
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        // dropped before finish: nothing may be left
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectMeta>) -> Result<(), StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("list directory", dir)(e)),
    };
    for e in entries {
        let e = e.map_err(io("list directory", dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.contains('~') {
            continue;
        }
        let p = e.path();
        let ft = e.file_type().map_err(io("stat", &p))?;
        if ft.is_dir() {
            walk(root, &p, out)?;
        } else if ft.is_file() {
            let m = e.metadata().map_err(io("stat", &p))?;
            let Ok(rel) = p.strip_prefix(root) else {
                continue;
            };
            let Some(key) = rel.to_str() else { continue };
            if check_key(key).is_err() {
                continue;
            }
            use std::os::unix::fs::MetadataExt;
            out.push(ObjectMeta {
                key: key.to_owned(),
                size: m.len(),
                modified: m.mtime(),
            });
        }
    }
    Ok(())
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("repository directory \"{}\"", self.root.display())
    }

    fn put(&self, key: &str, data: Bytes, mode: PutMode) -> BoxFut<'_, Result<(), StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path_of(&key)?;
            let store = self.describe();
            blocking(move || {
                make_dirs(path.parent().unwrap_or(Path::new("/")))?;
                let tmp = LocalStore::temp_for(&path);
                let r = (|| {
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)
                        .map_err(io("create", &tmp))?;
                    f.write_all(&data).map_err(io("write", &tmp))?;
                    f.sync_all().map_err(io("fsync", &tmp))?;
                    Ok(())
                })();
                if let Err(e) = r {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
                LocalStore::commit(&tmp, &path, mode, &store, &key).inspect_err(|_| {
                    let _ = fs::remove_file(&tmp);
                })
            })
            .await
        })
    }

    fn upload(&self, key: &str) -> BoxFut<'_, Result<Box<dyn Upload>, StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path_of(&key)?;
            blocking(move || {
                make_dirs(path.parent().unwrap_or(Path::new("/")))?;
                let tmp = LocalStore::temp_for(&path);
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io("create", &tmp))?;
                Ok(Box::new(LocalUpload {
                    file: Some(file),
                    tmp,
                    path,
                    written: 0,
                }) as Box<dyn Upload>)
            })
            .await
        })
    }

    fn get(&self, key: &str, max: u64) -> BoxFut<'_, Result<Bytes, StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path_of(&key)?;
            let store = self.describe();
            blocking(move || {
                let mut f = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StoreError::NotFound { store, key })
                    }
                    Err(e) => return Err(io("open", &path)(e)),
                };
                let size = f.metadata().map_err(io("stat", &path))?.len();
                if size > max {
                    return Err(StoreError::TooLarge {
                        store,
                        key,
                        size,
                        max,
                    });
                }
                let mut buf = Vec::with_capacity(size as usize);
                Read::by_ref(&mut f)
                    .take(max + 1)
                    .read_to_end(&mut buf)
                    .map_err(io("read", &path))?;
                Ok(Bytes::from(buf))
            })
            .await
        })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> BoxFut<'_, Result<Bytes, StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path_of(&key)?;
            let store = self.describe();
            blocking(move || {
                let f = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StoreError::NotFound { store, key })
                    }
                    Err(e) => return Err(io("open", &path)(e)),
                };
                let len = range.end.saturating_sub(range.start);
                let len = usize::try_from(len)
                    .map_err(|_| StoreError::Config(format!("range {range:?} too large")))?;
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, range.start)
                    .map_err(io("read a range of", &path))?;
                Ok(Bytes::from(buf))
            })
            .await
        })
    }

    fn head(&self, key: &str) -> BoxFut<'_, Result<Option<ObjectMeta>, StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path_of(&key)?;
            blocking(move || match fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    use std::os::unix::fs::MetadataExt;
                    Ok(Some(ObjectMeta {
                        key,
                        size: m.len(),
                        modified: m.mtime(),
                    }))
                }
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io("stat", &path)(e)),
            })
            .await
        })
    }

    fn list(&self, prefix: &str) -> BoxFut<'_, Result<Vec<ObjectMeta>, StoreError>> {
        let prefix = prefix.to_owned();
        Box::pin(async move {
            check_prefix(&prefix)?;
            let root = self.root.clone();
            blocking(move || {
                let mut out = Vec::new();
                walk(&root, &root.join(&prefix), &mut out)?;
                out.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(out)
            })
            .await
        })
    }

    fn delete(&self, key: &str) -> BoxFut<'_, Result<(), StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path_of(&key)?;
            blocking(move || match fs::remove_file(&path) {
                Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("/"))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io("remove", &path)(e)),
            })
            .await
        })
    }
}
