//! The repository's storage contract, checked against both backends: a local directory and a
//! real SeaweedFS. Uploads are invisible until finished, aborted uploads leave nothing,
//! create-only puts are exclusive, ranges are exact, and failures of the store are one clear
//! error within a bounded time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgrepl_testbed::{temp_dir, SeaweedFs, S3_ACCESS_KEY, S3_SECRET_KEY};
use pgrepo::store::{LocalStore, PutMode, S3Options, S3Store, Store, StoreError};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn s3_options(w: &SeaweedFs, bucket: &str, prefix: &str) -> S3Options {
    let env: Vec<(&str, String)> = w.env();
    let lookup = move |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let mut o = S3Options::from_env(bucket, prefix, &lookup);
    o.path_style = true;
    o.request_timeout = Duration::from_secs(20);
    o
}

/// Waits until the bucket answers a listing (the server creates it just after it starts).
async fn ready(store: &dyn Store) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.list("").await {
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "store never ready: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn contract(store: Arc<dyn Store>) {
    // put and get, create-only exclusive
    store
        .put("a/one", Bytes::from_static(b"first"), PutMode::Create)
        .await
        .unwrap();
    let e = store
        .put("a/one", Bytes::from_static(b"second"), PutMode::Create)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
    assert_eq!(&store.get("a/one", 100).await.unwrap()[..], b"first");
    store
        .put("a/one", Bytes::from_static(b"third"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(&store.get("a/one", 100).await.unwrap()[..], b"third");
    let e = store.get("a/one", 2).await.unwrap_err();
    assert!(matches!(e, StoreError::TooLarge { .. }), "{e}");
    let e = store.get("a/missing", 100).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    assert!(store.head("a/missing").await.unwrap().is_none());

    // a streamed upload larger than one part: invisible until finished, then exact
    let big = pattern(19 << 20, 7);
    let mut up = store.upload("b/big").await.unwrap();
    for piece in big.chunks(1 << 20) {
        up.write(Bytes::copy_from_slice(piece)).await.unwrap();
        assert!(
            store.head("b/big").await.unwrap().is_none(),
            "visible before finish"
        );
    }
    assert_eq!(up.finish().await.unwrap(), big.len() as u64);
    let meta = store.head("b/big").await.unwrap().unwrap();
    assert_eq!(meta.size, big.len() as u64);
    let r = store
        .get_range("b/big", 9_000_000..9_100_000)
        .await
        .unwrap();
    assert_eq!(&r[..], &big[9_000_000..9_100_000]);
    let r = store
        .get_range("b/big", (big.len() - 10) as u64..big.len() as u64)
        .await
        .unwrap();
    assert_eq!(&r[..], &big[big.len() - 10..]);

    // an aborted upload (past its first part) and a dropped one leave nothing
    let mut up = store.upload("b/aborted").await.unwrap();
    for piece in big.chunks(1 << 20) {
        up.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    up.abort().await;
    let mut up = store.upload("b/dropped").await.unwrap();
    up.write(Bytes::from_static(b"partial")).await.unwrap();
    drop(up);
    let keys: Vec<String> = store
        .list("b/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["b/big".to_owned()]);

    // listing is by prefix, sorted; delete is idempotent
    store
        .put("a/two", Bytes::from_static(b"2"), PutMode::Overwrite)
        .await
        .unwrap();
    let keys: Vec<String> = store
        .list("a/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["a/one".to_owned(), "a/two".to_owned()]);
    store.delete("a/two").await.unwrap();
    store.delete("a/two").await.unwrap();
    assert_eq!(store.list("a/").await.unwrap().len(), 1);

    // keys outside the alphabet are refused before any request
    let e = store
        .put("../escape", Bytes::new(), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidKey { .. }), "{e}");
}

#[test]
fn local_directory_keeps_the_contract() {
    let dir = temp_dir("store");
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.join("repo")).unwrap());
    rt().block_on(contract(store));
    // nothing temporary left, and modes are private
    let mut stack = vec![dir.join("repo")];
    while let Some(d) = stack.pop() {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o700, "{}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(!name.contains('~'), "temporary file left: {name}");
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let m = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(m, 0o600, "{name}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn seaweedfs_keeps_the_contract() {
    let w = SeaweedFs::start(&["pgrepl"]);
    let store: Arc<dyn Store> =
        Arc::new(S3Store::new(&s3_options(&w, "pgrepl", "team/db1")).unwrap());
    rt().block_on(async {
        ready(store.as_ref()).await;
        contract(store.clone()).await;
    });
    // the bucket holds exactly the finished objects, under the repository's prefix
    let other = S3Store::new(&s3_options(&w, "pgrepl", "")).unwrap();
    let keys: Vec<String> = rt()
        .block_on(other.list(""))
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["team/db1/a/one", "team/db1/b/big"]);
}

#[test]
fn store_failures_are_one_clear_error_in_bounded_time() {
    let w = SeaweedFs::start(&["pgrepl"]);
    let rt = rt();
    let good = S3Store::new(&s3_options(&w, "pgrepl", "")).unwrap();
    rt.block_on(ready(&good));

    // wrong secret
    let mut o = s3_options(&w, "pgrepl", "");
    o.secret_access_key = Some("not-the-secret".into());
    let t = Instant::now();
    let e = rt
        .block_on(S3Store::new(&o).unwrap().list(""))
        .unwrap_err()
        .to_string();
    eprintln!("wrong secret: {e}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(
        !e.contains('\n') && !e.contains("not-the-secret") && !e.contains(S3_SECRET_KEY),
        "{e}"
    );
    assert!(
        e.contains("SignatureDoesNotMatch") || e.contains("AccessDenied") || e.contains("403"),
        "{e}"
    );

    // a bucket that does not exist
    let o = s3_options(&w, "no-such-bucket", "");
    let e = rt
        .block_on(
            S3Store::new(&o)
                .unwrap()
                .put("x", Bytes::from_static(b"x"), PutMode::Create),
        )
        .unwrap_err()
        .to_string();
    eprintln!("missing bucket: {e}");
    assert!(
        e.contains("NoSuchBucket") || e.contains("does not exist"),
        "{e}"
    );

    // an endpoint that does not answer (a port nobody listens on)
    let mut o = s3_options(&w, "pgrepl", "");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    o.endpoint = Some(format!("http://127.0.0.1:{port}"));
    o.request_timeout = Duration::from_secs(10);
    let t = Instant::now();
    let e = rt
        .block_on(S3Store::new(&o).unwrap().list(""))
        .unwrap_err()
        .to_string();
    eprintln!("dead endpoint after {:?}: {e}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(!e.contains('\n'), "{e}");
    assert!(!e.contains(S3_ACCESS_KEY) || e.contains("Access"), "{e}");
}
