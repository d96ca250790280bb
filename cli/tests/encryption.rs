//! An encrypted repository: nothing readable in the store, every object an age file that the
//! `age` tool decrypts by itself, and every kind of tampering — a flipped byte, a cut inside a
//! chunk or exactly at a chunk boundary, an extra chunk, two objects swapped, a wrong key — a
//! clear error naming the object, with wal-fetch exiting 126 so that recovery stops.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pgrepl_testbed::{temp_dir, Cluster, ClusterOptions, PgVersion, Role, SeaweedFs};

mod common;
use common::{ok, pgrepl, wait_for};

const MARKER: &str = "pgrepl-marker-7f3a9c1e-visible-only-in-plaintext";

fn conninfo(c: &Cluster) -> String {
    c.conninfo(
        Role::Postgres,
        "sslmode=disable application_name=pgrepl_enc",
    )
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A cluster with a table holding the marker and random (incompressible) rows, a repository
/// (a local directory, or `s3` for SeaweedFS) with a full backup taken with `-Z none` and the
/// WAL archived up to the end.
struct Setup {
    c: Cluster,
    work: PathBuf,
    url: String,
    key: Option<PathBuf>,
    s3: Option<SeaweedFs>,
    /// The table's first heap page as the server has it.
    page: Vec<u8>,
}

fn cmd(s: &Setup) -> Command {
    let mut c = pgrepl();
    if let Some(w) = &s.s3 {
        for (k, v) in w.env() {
            c.env(k, v);
        }
    }
    c
}

fn setup(encrypted: bool, on_s3: bool) -> Setup {
    let c = Cluster::start_with(
        PgVersion::V18,
        ClusterOptions {
            conf: vec!["wal_keep_size = '1GB'".into()],
            ..Default::default()
        },
    );
    let work = temp_dir("enc");
    let s3 = on_s3.then(|| SeaweedFs::start(&["pgrepl-enc"]));
    let url = match on_s3 {
        true => "s3://pgrepl-enc/db".to_owned(),
        false => work.join("repo").display().to_string(),
    };
    let mut s = Setup {
        c,
        work,
        url,
        key: None,
        s3,
        page: Vec::new(),
    };
    let mut init = cmd(&s);
    init.args(["init", "--repo", &s.url]);
    if encrypted {
        let key = s.work.join("key.txt");
        let out = ok(pgrepl().arg("keygen").arg("-o").arg(&key).output().unwrap());
        let recipient = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(recipient.starts_with("age1"), "{recipient}");
        init.args(["--encrypt-to", &recipient]);
        s.key = Some(key);
    }
    ok(init.output().unwrap());
    let c = &s.c;
    c.psql("CREATE TABLE secret (note text, junk bytea)");
    c.psql("ALTER TABLE secret ALTER COLUMN junk SET STORAGE EXTERNAL");
    c.psql(&format!(
        "INSERT INTO secret SELECT '{MARKER}', NULL FROM generate_series(1, 50)"
    ));
    ok(cmd(&s)
        .args([
            "receivewal",
            "-d",
            &conninfo(c),
            "-S",
            "enc",
            "--create-slot",
        ])
        .output()
        .unwrap());
    let rx = cmd(&s)
        .args([
            "receivewal",
            "-d",
            &conninfo(c),
            "-S",
            "enc",
            "--repo",
            &s.url,
        ])
        .args(["--status-interval", "1", "--partial-interval", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // random bytes, stored uncompressed: WAL segments that span many age chunks
    c.psql(
        "INSERT INTO secret SELECT 'junk', decode(string_agg(md5(random()::text || g), ''), 'hex') \
         FROM generate_series(1, 200000) g GROUP BY g % 40",
    );
    c.psql("CHECKPOINT");
    let mut backup = cmd(&s);
    backup.args([
        "backup",
        "-d",
        &conninfo(c),
        "--repo",
        &s.url,
        "-c",
        "fast",
        "-Z",
        "none",
    ]);
    ok(backup.output().unwrap());
    let end = c.psql("SELECT pg_switch_wal()");
    wait_for("the WAL in the repository", || {
        c.psql(&format!(
            "SELECT restart_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = 'enc'"
        )) == "t"
    });
    let mut rx = rx;
    let _ = Command::new("kill")
        .args(["-TERM", &rx.id().to_string()])
        .status();
    rx.wait().unwrap();
    let rel = c.psql("SELECT pg_relation_filepath('secret')");
    let heap = std::fs::read(c.data.join(rel)).unwrap();
    s.page = heap[..8192].to_vec();
    s
}

/// Every stored byte: the repository directory, or SeaweedFS's data directory.
fn stored_files(s: &Setup) -> Vec<PathBuf> {
    match &s.s3 {
        Some(w) => files_under(w.data_dir()),
        None => files_under(Path::new(&s.url)),
    }
}

#[test]
fn nothing_readable_in_an_encrypted_repository_and_age_decrypts_each_object() {
    // the control: unencrypted, the marker and the page are there to be found
    let plain = setup(false, false);
    let found = stored_files(&plain)
        .iter()
        .any(|f| contains(&std::fs::read(f).unwrap(), MARKER.as_bytes()));
    assert!(
        found,
        "the scan does not find the marker even without encryption"
    );

    for on_s3 in [false, true] {
        let s = setup(true, on_s3);
        for f in stored_files(&s) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !contains(&bytes, MARKER.as_bytes()),
                "the marker is readable in {}",
                f.display()
            );
            assert!(
                !contains(&bytes, &s.page),
                "a page of the table is readable in {}",
                f.display()
            );
        }
        if on_s3 {
            continue;
        }
        // age alone decrypts a pack (stored with -Z none: the files' bytes, the page among
        // them) and a WAL segment (zstd: the server's own segment)
        let repo = PathBuf::from(&s.url);
        let key = s.key.as_ref().unwrap();
        let age = |obj: &Path| -> Vec<u8> {
            let out = Command::new("/usr/bin/age")
                .arg("-d")
                .arg("-i")
                .arg(key)
                .arg(obj)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "age -d {}: {}",
                obj.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let pack = files_under(&repo.join("backups"))
            .into_iter()
            .find(|p| p.file_name().unwrap().to_string_lossy() == "pack-00000")
            .unwrap();
        assert!(
            contains(&age(&pack), &s.page),
            "the decrypted pack lacks the table's page"
        );
        let seg = files_under(&repo.join("wal"))
            .into_iter()
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.ends_with(".zst") && !n.contains("partial")
            })
            .unwrap();
        let name = seg
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".zst")
            .to_owned();
        let z = s.work.join("seg.zst");
        std::fs::write(&z, age(&seg)).unwrap();
        let out = Command::new("zstd")
            .args(["-d", "-q", "-c"])
            .arg(&z)
            .output()
            .unwrap();
        assert!(out.status.success());
        let server = std::fs::read(s.c.data.join("pg_wal").join(&name)).unwrap();
        assert!(
            out.stdout == server,
            "age -d | zstd -d of {name} is not the server's segment"
        );
    }
}

/// wal-fetch of `name` with `key`: its exit code and stderr.
fn fetch(s: &Setup, name: &str, key: &Path) -> (Option<i32>, String) {
    let dest = s.work.join("fetched");
    let out: Output = cmd(s)
        .args(["wal-fetch", "--repo", &s.url, "-i"])
        .arg(key)
        .arg(name)
        .arg(&dest)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where the age payload's chunks begin in a stored object: after the `--- MAC` line and the
/// 16-byte nonce.
fn payload_start(bytes: &[u8]) -> usize {
    let at = bytes.windows(4).position(|w| w == b"\n---").unwrap();
    let nl = at + 1 + bytes[at + 1..].iter().position(|&b| b == b'\n').unwrap();
    nl + 1 + 16
}

#[test]
fn tampering_is_caught_and_recovery_stops() {
    let s = setup(true, false);
    let key = s.key.clone().unwrap();
    let repo = PathBuf::from(&s.url);
    let mut segs: Vec<PathBuf> = files_under(&repo.join("wal"))
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".zst") && !n.contains("partial")
        })
        .collect();
    segs.sort();
    // a segment of several chunks (the random rows)
    let seg = segs
        .iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 3 * 65552)
        .expect("a segment spanning several chunks")
        .clone();
    let name = seg
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".zst")
        .to_owned();
    let original = std::fs::read(&seg).unwrap();
    let start = payload_start(&original);
    assert_eq!(fetch(&s, &name, &key).0, Some(0), "untouched, it is served");

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut flipped = original.clone();
    flipped[start + 65552 + 100] ^= 1;
    cases.push(("a flipped byte in a chunk", flipped));
    cases.push((
        "cut inside a chunk",
        original[..start + 65552 + 1000].to_vec(),
    ));
    cases.push((
        "cut at a chunk boundary",
        original[..start + 2 * 65552].to_vec(),
    ));
    let mut longer = original.clone();
    longer.extend_from_slice(&original[start..start + 65552]);
    cases.push(("a chunk appended", longer));
    for (what, bytes) in cases {
        std::fs::write(&seg, &bytes).unwrap();
        let (code, err) = fetch(&s, &name, &key);
        assert_eq!(code, Some(126), "{what}: {err}");
        assert!(
            err.contains(&name),
            "{what}: the object is not named: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
    }
    std::fs::write(&seg, &original).unwrap();

    // two segments swapped: each names the object it was written as
    let other = segs.iter().find(|p| **p != seg).unwrap().clone();
    let other_bytes = std::fs::read(&other).unwrap();
    std::fs::write(&seg, &other_bytes).unwrap();
    let (code, err) = fetch(&s, &name, &key);
    assert_eq!(code, Some(126), "swapped: {err}");
    assert!(err.contains("moved or swapped"), "{err}");
    std::fs::write(&seg, &original).unwrap();

    // a wrong identity
    let wrong = s.work.join("wrong.txt");
    ok(pgrepl()
        .arg("keygen")
        .arg("-o")
        .arg(&wrong)
        .output()
        .unwrap());
    let (code, err) = fetch(&s, &name, &wrong);
    assert_eq!(code, Some(126), "wrong key: {err}");
    assert!(err.contains("no identity matches"), "{err}");
    // an identity file others can read is refused
    let loose = s.work.join("loose.txt");
    std::fs::copy(&key, &loose).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = fetch(&s, &name, &loose);
    assert_eq!(code, Some(126), "{err}");
    assert!(err.contains("must be 0600"), "{err}");

    // a flipped byte in a pack: restore names the object, fails, leaves nothing
    let pack = files_under(&repo.join("backups"))
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy() == "pack-00000")
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = payload_start(&bytes) + 10;
    bytes[at] ^= 0x80;
    std::fs::write(&pack, &bytes).unwrap();
    let target = s.work.join("restored");
    let out = cmd(&s)
        .args(["restore", "--repo", &s.url, "-i"])
        .arg(&key)
        .arg("-D")
        .arg(&target)
        .args(["--target", "immediate"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restored from a damaged pack");
    assert!(err.contains("pack-00000"), "{err}");
    assert!(!target.exists(), "a data directory was left");
}

#[test]
fn writers_need_recipients_only_and_refuse_to_write_plaintext() {
    let s = setup(true, false);
    // the backup above, and the WAL, were written without the identity; info cannot read
    // without it and says so
    let out = cmd(&s).args(["info", "--repo", &s.url]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs the identity"), "{err}");
    // an automatic backup without the identity is full, and says why
    let out = ok(cmd(&s)
        .args([
            "backup",
            "-d",
            &conninfo(&s.c),
            "--repo",
            &s.url,
            "-c",
            "fast",
            "--json",
        ])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["full_reason_code"], "no_identity", "{v}");
    // a repository that says it is encrypted but names no recipient: nothing is written
    let repo = PathBuf::from(&s.url);
    let fmt = repo.join("pgrepl-repository.json");
    let mut f: serde_json::Value = serde_json::from_slice(&std::fs::read(&fmt).unwrap()).unwrap();
    f["encryption"]["recipients"] = serde_json::json!([]);
    std::fs::write(&fmt, serde_json::to_vec(&f).unwrap()).unwrap();
    let before = files_under(&repo).len();
    let out = cmd(&s)
        .args([
            "backup",
            "-d",
            &conninfo(&s.c),
            "--repo",
            &s.url,
            "-c",
            "fast",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "wrote to a repository without recipients"
    );
    assert!(
        err.contains("no usable recipient") && err.contains(&s.url),
        "{err}"
    );
    assert_eq!(files_under(&repo).len(), before, "something was written");
}
