//! `pgrepl check --repo` and `pgrepl verify --repo`, on a local directory and on SeaweedFS.
//! verify reads stored backups where they are and names the file a flipped byte lands in.
//! check passes on a healthy
//! repository (a full and an incremental backup, WAL streamed beside them), reports an upload
//! without a commit record without failing, and fails (exit 2) naming what is broken: a
//! deleted WAL segment (by its file name and the backups it cuts short), a truncated pack
//! (by key, backup and sizes) and a missing manifest object.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgrepl_testbed::{temp_dir, Cluster, ClusterOptions, PgVersion, Role, SeaweedFs};
use pgrepo::store::{PutMode, Store};
use pgwal::{Lsn, TimelineId, WalSegSize};

mod common;
use common::{ok, pgrepl};

fn lsn(text: &str) -> Lsn {
    let (hi, lo) = text.split_once('/').unwrap();
    Lsn((u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap())
}

struct Bed {
    c: Cluster,
    s3: Option<SeaweedFs>,
    url: String,
    store: std::sync::Arc<dyn Store>,
    rt: tokio::runtime::Runtime,
}

impl Bed {
    fn cmd(&self) -> Command {
        let mut c = pgrepl();
        c.env_clear().env("PATH", "/usr/bin:/bin");
        if let Some(w) = &self.s3 {
            for (k, v) in w.env() {
                c.env(k, v);
            }
        }
        c
    }

    fn conninfo(&self) -> String {
        self.c.conninfo(
            Role::Postgres,
            "sslmode=disable application_name=pgrepl_check",
        )
    }

    /// `check --json`: the exit code and the report.
    fn check(&self) -> (Option<i32>, serde_json::Value) {
        let out: Output = self
            .cmd()
            .args(["check", "--repo", &self.url, "--json"])
            .output()
            .unwrap();
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), v)
    }

    fn problems(v: &serde_json::Value, kind: &str) -> Vec<serde_json::Value> {
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == kind)
            .cloned()
            .collect()
    }
}

fn build(on_s3: bool) -> (Bed, std::path::PathBuf) {
    let c = Cluster::start_with(
        PgVersion::V18,
        ClusterOptions {
            conf: vec!["wal_keep_size = '1GB'".into(), "summarize_wal = on".into()],
            ..Default::default()
        },
    );
    let work = temp_dir("check");
    let s3 = on_s3.then(|| SeaweedFs::start(&["pgrepl-check"]));
    let url = match on_s3 {
        true => "s3://pgrepl-check/db".to_owned(),
        false => work.join("repo").display().to_string(),
    };
    let env: Vec<(&str, String)> = s3.as_ref().map(|w| w.env()).unwrap_or_default();
    let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let loc = pgrepo::location::Location::parse(&url).unwrap();
    let store = pgrepo::location::open_store(&loc, &Default::default(), &lookup).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bed = Bed {
        c,
        s3,
        url,
        store,
        rt,
    };
    ok(bed
        .cmd()
        .args(["init", "--repo", &bed.url])
        .output()
        .unwrap());
    ok(bed
        .cmd()
        .args([
            "receivewal",
            "-d",
            &bed.conninfo(),
            "-S",
            "chk",
            "--create-slot",
        ])
        .output()
        .unwrap());
    (bed, work)
}

fn run(on_s3: bool) {
    let (bed, work) = build(on_s3);
    let c = &bed.c;
    let mut rx = bed
        .cmd()
        .args([
            "receivewal",
            "-d",
            &bed.conninfo(),
            "-S",
            "chk",
            "--repo",
            &bed.url,
        ])
        .args(["--status-interval", "1", "--partial-interval", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.pgbench_init(2);
    let backup = |what: &str| {
        let out = ok(bed
            .cmd()
            .args([
                "backup",
                "-d",
                &bed.conninfo(),
                "--repo",
                &bed.url,
                "-c",
                "fast",
                "--json",
            ])
            .output()
            .unwrap());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kind"], what, "{v}");
        v["id"].as_str().unwrap().to_owned()
    };
    let full = backup("full");
    // WAL of several segments between the two backups
    for _ in 0..3 {
        c.pgbench(&["-t", "100", "-c", "2", "-n"]);
        c.psql("SELECT pg_switch_wal()");
    }
    let inc = backup("incremental");
    let end = c.psql("SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(120);
    while c.psql(&format!(
        "SELECT restart_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = 'chk'"
    )) != "t"
    {
        assert!(
            Instant::now() < deadline,
            "the WAL never reached the repository"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &rx.id().to_string()])
        .status();
    rx.wait().unwrap();

    // healthy
    let (code, v) = bed.check();
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["healthy"], true, "{v}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["backups"], 2, "{v}");

    // verify --repo: both backups, their WAL decoded, read where they are
    let out = ok(bed
        .cmd()
        .args(["verify", "--repo", &bed.url, "--wal", "--json"])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let verified = v["backups"].as_array().unwrap();
    assert_eq!(verified.len(), 2, "{v}");
    for b in verified {
        assert!(b["files_checked"].as_u64().unwrap() > 900, "{b}");
        assert!(b["wal_records"].as_u64().unwrap() > 0, "{b}");
    }
    // a flipped byte inside the full backup's pack, in pgbench_accounts' data: named by path
    let rel = c.psql("SELECT pg_relation_filepath('pgbench_accounts')");
    let repo = bed
        .rt
        .block_on(pgrepo::Repo::open(bed.store.clone()))
        .unwrap();
    let record = bed.rt.block_on(repo.backup(&full)).unwrap();
    let index = bed
        .rt
        .block_on(pgrepo::reader::load_index(&repo, &record))
        .unwrap();
    let entry = index
        .iter()
        .find(|e| e.manifest_path() == rel)
        .expect("the table's file in the index");
    let pack_key = pgrepo::layout::pack_key(&full, entry.pack);
    let size = record
        .objects
        .iter()
        .find(|o| o.key == pack_key)
        .unwrap()
        .size;
    let original = bed.rt.block_on(bed.store.get(&pack_key, size)).unwrap();
    let mut flipped = original.to_vec();
    flipped[(entry.offset + u64::from(entry.chunks[0]) / 2) as usize] ^= 0x10;
    bed.rt
        .block_on(bed.store.put(&pack_key, flipped.into(), PutMode::Overwrite))
        .unwrap();
    let out = bed
        .cmd()
        .args(["verify", "--repo", &bed.url, &full, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = v["backups"][0]["findings"].as_array().unwrap().clone();
    assert!(
        findings.iter().any(|f| f["path"] == rel.as_str()),
        "{rel} not named: {v}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&rel));
    bed.rt
        .block_on(bed.store.put(&pack_key, original, PutMode::Overwrite))
        .unwrap();
    ok(bed
        .cmd()
        .args(["verify", "--repo", &bed.url, &full])
        .output()
        .unwrap());

    // an upload that never committed: reported, not a failure
    let orphan = "20200101T000000Z-F-0a0b0c";
    bed.rt
        .block_on(bed.store.put(
            &format!("backups/{orphan}/pack-00000"),
            vec![7u8; 1000].into(),
            PutMode::Overwrite,
        ))
        .unwrap();
    let (code, v) = bed.check();
    assert_eq!(code, Some(0), "{v}");
    let o = Bed::problems(&v, "uncommitted_upload");
    assert_eq!(o.len(), 1, "{v}");
    assert_eq!(o[0]["id"], orphan);
    assert_eq!(o[0]["bytes"], 1000);

    // a WAL segment deleted after the full backup's end, before the incremental's
    let info: serde_json::Value = serde_json::from_slice(
        &ok(bed
            .cmd()
            .args(["info", "--repo", &bed.url, "--json"])
            .output()
            .unwrap())
        .stdout,
    )
    .unwrap();
    let rec = |id: &str| {
        info["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .unwrap()
            .clone()
    };
    let seg = WalSegSize::DEFAULT;
    let full_end = lsn(rec(&full)["end_lsn"].as_str().unwrap()).segment(seg);
    let inc_end = lsn(rec(&inc)["end_lsn"].as_str().unwrap()).segment(seg);
    let gone = pgwal::SegmentNo(full_end.0 + 1);
    assert!(gone.0 < inc_end.0, "no segment between the backups");
    let gone_name = pgwal::segment_file_name(TimelineId(1), gone, seg);
    let key = pgrepo::layout::segment_key(TimelineId(1), gone, seg);
    bed.rt.block_on(bed.store.delete(&key)).unwrap();
    let (code, v) = bed.check();
    assert_eq!(code, Some(2), "{v}");
    let g = Bed::problems(&v, "wal_gap");
    assert_eq!(g.len(), 1, "{v}");
    assert_eq!(g[0]["first_missing"], gone_name.as_str(), "{v}");
    assert_eq!(g[0]["last_missing"], gone_name.as_str(), "{v}");
    let affects: Vec<&str> = g[0]["affects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(affects, vec![full.as_str()], "{v}");
    // the text form names it too, and exits 2
    let out = bed
        .cmd()
        .args(["check", "--repo", &bed.url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&gone_name));

    // a truncated pack of the incremental, and the full backup's manifest gone
    let pack = rec(&inc)["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"].as_str().unwrap().contains("/pack-"))
        .unwrap()
        .clone();
    let pack_key = pack["key"].as_str().unwrap().to_owned();
    let size = pack["size"].as_u64().unwrap();
    let data = bed.rt.block_on(bed.store.get(&pack_key, size)).unwrap();
    bed.rt
        .block_on(
            bed.store
                .put(&pack_key, data.slice(..data.len() - 10), PutMode::Overwrite),
        )
        .unwrap();
    let manifest = format!("backups/{full}/manifest");
    bed.rt.block_on(bed.store.delete(&manifest)).unwrap();
    let (code, v) = bed.check();
    assert_eq!(code, Some(2), "{v}");
    let w = Bed::problems(&v, "wrong_size");
    assert_eq!(w.len(), 1, "{v}");
    assert_eq!(w[0]["key"], pack_key.as_str());
    assert_eq!(w[0]["backup"], inc.as_str());
    assert_eq!(w[0]["expected"], size);
    assert_eq!(w[0]["found"], size - 10);
    let m = Bed::problems(&v, "missing_object");
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(m[0]["key"], manifest.as_str());
    assert_eq!(m[0]["backup"], full.as_str());
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn pg18_check_on_a_local_directory() {
    run(false);
}

#[test]
fn pg18_check_on_seaweedfs() {
    run(true);
}
