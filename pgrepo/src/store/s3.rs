//! S3-compatible object storage through `object_store` (rustls with the ring provider; no
//! OpenSSL, no second TLS stack). Objects live under `PREFIX/` in the bucket.
//!
//! Uploads stay in memory until they reach one part (8 MiB by default): a smaller object is one
//! PUT; a larger one becomes a multipart upload with at most `max_parts_in_flight` parts being
//! sent, so memory is bounded by about `part_size × (max_parts_in_flight + 1)` per upload. A
//! multipart upload that fails or is dropped is aborted, so no parts are left in the bucket.
//!
//! Settings come from [`S3Options`], which [`S3Options::from_env`] fills from the standard AWS
//! variables. The secret key lives in memory only; [`std::fmt::Debug`] and every message leave it
//! out.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode as OsPutMode, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};

use super::{check_key, check_prefix, BoxFut, ObjectMeta, PutMode, Store, StoreError, Upload};

/// How to reach an S3-compatible store.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct S3Options {
    /// The bucket.
    pub bucket: String,
    /// The key prefix inside it (no leading or trailing `/`; empty for the bucket's root).
    pub prefix: String,
    /// The endpoint URL (`https://…`, or `http://…` for a local test server); `None`: AWS.
    pub endpoint: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-hosted.
    pub path_style: bool,
    /// The access key.
    pub access_key_id: Option<String>,
    /// The secret key (never printed).
    pub secret_access_key: Option<String>,
    /// A session token (never printed).
    pub session_token: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// Bytes per part of a multipart upload (at least 5 MiB).
    pub part_size: usize,
    /// Parts of one upload in flight at most.
    pub max_parts_in_flight: usize,
    /// Give up on a request after this long, retries included.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "…"),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

impl S3Options {
    /// Options for `bucket` and `prefix`, the rest from the standard AWS variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`), read through `env`.
    pub fn from_env(bucket: &str, prefix: &str, env: &dyn Fn(&str) -> Option<String>) -> S3Options {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        S3Options {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint: get("AWS_ENDPOINT_URL_S3").or_else(|| get("AWS_ENDPOINT_URL")),
            region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
            path_style: false,
            access_key_id: get("AWS_ACCESS_KEY_ID"),
            secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
            session_token: get("AWS_SESSION_TOKEN"),
            ca_file: None,
            part_size: 8 << 20,
            max_parts_in_flight: 2,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// A store in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    inner: Arc<AmazonS3>,
    prefix: String,
    name: String,
    part_size: usize,
    max_parts_in_flight: usize,
}

fn one_line(e: &object_store::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    summarize(&s.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let a = s.find(open)? + open.len();
    let b = s[a..].find(close)? + a;
    Some(&s[a..b])
}

/// The part of object_store's message a person needs: S3's error code and message, or why the
/// connection failed, and how often it was tried.
fn summarize(full: &str) -> String {
    let retries = between(full, "after ", " retries")
        .and_then(|n| n.parse::<u32>().ok())
        .map(|n| format!(" (after {n} retries)"))
        .unwrap_or_default();
    if let Some(code) = between(full, "<Code>", "</Code>") {
        let msg = between(full, "<Message>", "</Message>").unwrap_or("");
        return format!("{code}: {msg}{retries}")
            .trim_end_matches(": ")
            .to_owned();
    }
    if let Some(i) = full.find("tcp connect error: ") {
        let why = &full[i + "tcp connect error: ".len()..];
        return format!("cannot connect: {why}{retries}");
    }
    if full.contains("operation timed out") || full.contains("timed out") {
        return format!("no answer in time{retries}");
    }
    full.to_owned()
}

impl S3Store {
    /// Connects lazily: nothing is sent until the first request.
    pub fn new(o: &S3Options) -> Result<Self, StoreError> {
        if o.bucket.len() < 3 {
            return Err(StoreError::Config(format!(
                "invalid bucket name \"{}\": S3 bucket names have 3 to 63 characters",
                o.bucket
            )));
        }
        if !o.prefix.is_empty() {
            check_key(&o.prefix)
                .map_err(|e| StoreError::Config(format!("repository prefix: {e}")))?;
        }
        // reqwest is built without a TLS provider of its own: ours is ring, as for PostgreSQL
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(o.request_timeout);
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&o.bucket)
            .with_region(o.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_virtual_hosted_style_request(!o.path_style)
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: o.request_timeout,
                backoff: Default::default(),
            });
        if let Some(e) = &o.endpoint {
            if e.starts_with("http://") {
                client = client.with_allow_http(true);
            }
            b = b.with_endpoint(e);
        }
        if let Some(ca) = &o.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                StoreError::Config(format!("could not read CA file \"{}\": {e}", ca.display()))
            })?;
            for c in object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
                StoreError::Config(format!("CA file \"{}\": {}", ca.display(), one_line(&e)))
            })? {
                client = client.with_root_certificate(c);
            }
        }
        match (&o.access_key_id, &o.secret_access_key) {
            (Some(k), Some(s)) => b = b.with_access_key_id(k).with_secret_access_key(s),
            (None, None) => {
                return Err(StoreError::Config(
                    "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                ))
            }
            _ => return Err(StoreError::Config(
                "incomplete S3 credentials: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    .into(),
            )),
        }
        if let Some(t) = &o.session_token {
            b = b.with_token(t);
        }
        let inner = b
            .with_client_options(client)
            .build()
            .map_err(|e| StoreError::Config(format!("S3 settings: {}", one_line(&e))))?;
        let name = match &o.endpoint {
            Some(e) => format!("s3://{}/{} at {e}", o.bucket, o.prefix),
            None => format!("s3://{}/{}", o.bucket, o.prefix),
        };
        Ok(S3Store {
            inner: Arc::new(inner),
            prefix: o.prefix.clone(),
            name,
            part_size: o.part_size.max(5 << 20),
            max_parts_in_flight: o.max_parts_in_flight.max(1),
        })
    }

    fn path(&self, key: &str) -> Result<ObjPath, StoreError> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        })
    }

    fn key_of(&self, p: &ObjPath) -> Option<String> {
        let s = p.as_ref();
        let k = if self.prefix.is_empty() {
            s
        } else {
            s.strip_prefix(&self.prefix)?.strip_prefix('/')?
        };
        check_key(k).ok().map(|()| k.to_owned())
    }

    fn err(&self, op: &'static str, key: &str, e: object_store::Error) -> StoreError {
        let detail = one_line(&e);
        if detail.starts_with("NoSuchBucket") {
            return StoreError::Remote {
                store: self.name.clone(),
                op,
                key: key.to_owned(),
                detail,
            };
        }
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                store: self.name.clone(),
                key: key.to_owned(),
            },
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => StoreError::AlreadyExists {
                store: self.name.clone(),
                key: key.to_owned(),
            },
            _ => StoreError::Remote {
                store: self.name.clone(),
                op,
                key: key.to_owned(),
                detail,
            },
        }
    }
}

/// An upload: one PUT when small, a bounded multipart upload otherwise.
#[derive(Debug)]
struct S3Upload {
    store: S3Store,
    key: String,
    path: ObjPath,
    buf: Vec<u8>,
    multipart: Option<WriteMultipart>,
    written: u64,
}

impl Upload for S3Upload {
    fn write(&mut self, data: Bytes) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.written += data.len() as u64;
            if self.multipart.is_none() {
                if self.buf.len() + data.len() < self.store.part_size {
                    self.buf.extend_from_slice(&data);
                    return Ok(());
                }
                let up = self
                    .store
                    .inner
                    .put_multipart(&self.path)
                    .await
                    .map_err(|e| self.store.err("start uploading", &self.key, e))?;
                let mut w = WriteMultipart::new_with_chunk_size(up, self.store.part_size);
                w.write(&std::mem::take(&mut self.buf));
                self.multipart = Some(w);
            }
            if let Some(w) = &mut self.multipart {
                if let Err(e) = w.wait_for_capacity(self.store.max_parts_in_flight).await {
                    return Err(self.store.err("upload a part of", &self.key, e));
                }
                w.put(data);
            }
            Ok(())
        })
    }

    fn finish(mut self: Box<Self>) -> BoxFut<'static, Result<u64, StoreError>> {
        Box::pin(async move {
            let size = self.written;
            match self.multipart.take() {
                Some(w) => match w.finish().await {
                    Ok(_) => Ok(size),
                    Err(e) => Err(self.store.err("complete the upload of", &self.key, e)),
                },
                None => {
                    let payload = PutPayload::from(std::mem::take(&mut self.buf));
                    self.store
                        .inner
                        .put(&self.path, payload)
                        .await
                        .map(|_| size)
                        .map_err(|e| self.store.err("upload", &self.key, e))
                }
            }
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFut<'static, ()> {
        Box::pin(async move {
            if let Some(w) = self.multipart.take() {
                let _ = w.abort().await;
            }
        })
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // dropped unfinished (a cancelled backup): abort its parts in the background
        if let Some(w) = self.multipart.take() {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    let _ = w.abort().await;
                });
            }
        }
    }
}

impl Store for S3Store {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn put(&self, key: &str, data: Bytes, mode: PutMode) -> BoxFut<'_, Result<(), StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path(&key)?;
            let opts = PutOptions {
                mode: match mode {
                    PutMode::Overwrite => OsPutMode::Overwrite,
                    PutMode::Create => OsPutMode::Create,
                },
                ..Default::default()
            };
            self.inner
                .put_opts(&path, PutPayload::from(data), opts)
                .await
                .map(|_| ())
                .map_err(|e| self.err("upload", &key, e))
        })
    }

    fn upload(&self, key: &str) -> BoxFut<'_, Result<Box<dyn Upload>, StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path(&key)?;
            Ok(Box::new(S3Upload {
                store: self.clone(),
                key,
                path,
                buf: Vec::new(),
                multipart: None,
                written: 0,
            }) as Box<dyn Upload>)
        })
    }

    fn get(&self, key: &str, max: u64) -> BoxFut<'_, Result<Bytes, StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path(&key)?;
            let r = self
                .inner
                .get(&path)
                .await
                .map_err(|e| self.err("download", &key, e))?;
            let size = r.meta.size;
            if size > max {
                return Err(StoreError::TooLarge {
                    store: self.name.clone(),
                    key,
                    size,
                    max,
                });
            }
            let mut out = Vec::with_capacity(size as usize);
            let mut s = r.into_stream();
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(|e| self.err("download", &key, e))?;
                if (out.len() + chunk.len()) as u64 > max {
                    return Err(StoreError::TooLarge {
                        store: self.name.clone(),
                        key,
                        size: (out.len() + chunk.len()) as u64,
                        max,
                    });
                }
                out.extend_from_slice(&chunk);
            }
            Ok(Bytes::from(out))
        })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> BoxFut<'_, Result<Bytes, StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path(&key)?;
            if range.start >= range.end {
                return Ok(Bytes::new());
            }
            let want = range.end - range.start;
            let b = self
                .inner
                .get_range(&path, range)
                .await
                .map_err(|e| self.err("read a range of", &key, e))?;
            if b.len() as u64 != want {
                return Err(StoreError::Remote {
                    store: self.name.clone(),
                    op: "read a range of",
                    key,
                    detail: format!("{} bytes returned, {want} asked for", b.len()),
                });
            }
            Ok(b)
        })
    }

    fn head(&self, key: &str) -> BoxFut<'_, Result<Option<ObjectMeta>, StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path(&key)?;
            match self.inner.head(&path).await {
                Ok(m) => Ok(Some(ObjectMeta {
                    key,
                    size: m.size,
                    modified: m.last_modified.timestamp(),
                })),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err("look up", &key, e)),
            }
        })
    }

    fn list(&self, prefix: &str) -> BoxFut<'_, Result<Vec<ObjectMeta>, StoreError>> {
        let prefix = prefix.to_owned();
        Box::pin(async move {
            check_prefix(&prefix)?;
            let full = match (self.prefix.is_empty(), prefix.is_empty()) {
                (true, true) => None,
                (true, false) => Some(ObjPath::from(prefix.trim_end_matches('/'))),
                (false, true) => Some(ObjPath::from(self.prefix.as_str())),
                (false, false) => Some(ObjPath::from(format!(
                    "{}/{}",
                    self.prefix,
                    prefix.trim_end_matches('/')
                ))),
            };
            let mut s = self.inner.list(full.as_ref());
            let mut out = Vec::new();
            while let Some(m) = s.next().await {
                let m = m.map_err(|e| self.err("list", &prefix, e))?;
                if let Some(key) = self.key_of(&m.location) {
                    out.push(ObjectMeta {
                        key,
                        size: m.size,
                        modified: m.last_modified.timestamp(),
                    });
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    fn delete(&self, key: &str) -> BoxFut<'_, Result<(), StoreError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path(&key)?;
            match self.inner.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.err("delete", &key, e)),
            }
        })
    }
}
