//! `pgrepl check --repo` and `pgrepl verify --repo`, on a local directory and on SeaweedFS.
//! verify reads stored backups where they are and names the file a flipped byte lands in.
//! check passes on a healthy
//! repository (a full and an incremental backup, WAL streamed beside them), reports an upload
//! without a commit record without failing, and fails (exit 2) naming what is broken: a
//! deleted WAL segment (by its file name and the backups it cuts short), a truncated pack
//! (by key, backup and sizes) and a missing manifest object.

use std::process::Output;

use pgrepo::store::PutMode;
use pgwal::{TimelineId, WalSegSize};

mod common;
use common::{json, ok, parse_lsn, RepoBed};

/// `check --json`: the exit code and the report.
fn check(bed: &RepoBed) -> (Option<i32>, serde_json::Value) {
    let out: Output = bed
        .cmd()
        .args(["check", "--repo", &bed.r.url, "--json"])
        .output()
        .unwrap();
    (out.status.code(), json(&out))
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

fn run(on_s3: bool) {
    let bed = RepoBed::new("check", on_s3);
    let c = &bed.c;
    let rx = bed.spawn_receiver();
    c.pgbench_init(2);
    let backup = |what: &str| {
        let v = bed.backup(&[]);
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
    bed.stop_receiver(rx);

    // healthy
    let (code, v) = check(&bed);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["healthy"], true, "{v}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["backups"], 2, "{v}");

    // verify --repo: both backups, their WAL decoded, read where they are
    let out = ok(bed
        .cmd()
        .args(["verify", "--repo", &bed.r.url, "--wal", "--json"])
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
        .r
        .rt
        .block_on(pgrepo::Repo::open(bed.r.store.clone()))
        .unwrap();
    let record = bed.r.rt.block_on(repo.backup(&full)).unwrap();
    let index = bed
        .r
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
    let original = bed.r.rt.block_on(bed.r.store.get(&pack_key, size)).unwrap();
    let mut flipped = original.to_vec();
    flipped[(entry.offset + u64::from(entry.chunks[0]) / 2) as usize] ^= 0x10;
    bed.r
        .rt
        .block_on(
            bed.r
                .store
                .put(&pack_key, flipped.into(), PutMode::Overwrite),
        )
        .unwrap();
    let out = bed
        .cmd()
        .args(["verify", "--repo", &bed.r.url, &full, "--json"])
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
    bed.r
        .rt
        .block_on(bed.r.store.put(&pack_key, original, PutMode::Overwrite))
        .unwrap();
    ok(bed
        .cmd()
        .args(["verify", "--repo", &bed.r.url, &full])
        .output()
        .unwrap());

    // an upload that never committed: reported, not a failure
    let orphan = "20200101T000000Z-F-0a0b0c";
    bed.r
        .rt
        .block_on(bed.r.store.put(
            &format!("backups/{orphan}/pack-00000"),
            vec![7u8; 1000].into(),
            PutMode::Overwrite,
        ))
        .unwrap();
    let (code, v) = check(&bed);
    assert_eq!(code, Some(0), "{v}");
    let o = problems(&v, "uncommitted_upload");
    assert_eq!(o.len(), 1, "{v}");
    assert_eq!(o[0]["id"], orphan);
    assert_eq!(o[0]["bytes"], 1000);

    // a WAL segment deleted after the full backup's end, before the incremental's
    let info: serde_json::Value = serde_json::from_slice(
        &ok(bed
            .cmd()
            .args(["info", "--repo", &bed.r.url, "--json"])
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
    let full_end = parse_lsn(rec(&full)["end_lsn"].as_str().unwrap()).segment(seg);
    let inc_end = parse_lsn(rec(&inc)["end_lsn"].as_str().unwrap()).segment(seg);
    let gone = pgwal::SegmentNo(full_end.0 + 1);
    assert!(gone.0 < inc_end.0, "no segment between the backups");
    let gone_name = pgwal::segment_file_name(TimelineId(1), gone, seg);
    let key = pgrepo::layout::segment_key(TimelineId(1), gone, seg);
    bed.r.rt.block_on(bed.r.store.delete(&key)).unwrap();
    let (code, v) = check(&bed);
    assert_eq!(code, Some(2), "{v}");
    let g = problems(&v, "wal_gap");
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
        .args(["check", "--repo", &bed.r.url])
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
    let data = bed.r.rt.block_on(bed.r.store.get(&pack_key, size)).unwrap();
    bed.r
        .rt
        .block_on(
            bed.r
                .store
                .put(&pack_key, data.slice(..data.len() - 10), PutMode::Overwrite),
        )
        .unwrap();
    let manifest = format!("backups/{full}/manifest");
    bed.r.rt.block_on(bed.r.store.delete(&manifest)).unwrap();
    let (code, v) = check(&bed);
    assert_eq!(code, Some(2), "{v}");
    let w = problems(&v, "wrong_size");
    assert_eq!(w.len(), 1, "{v}");
    assert_eq!(w[0]["key"], pack_key.as_str());
    assert_eq!(w[0]["backup"], inc.as_str());
    assert_eq!(w[0]["expected"], size);
    assert_eq!(w[0]["found"], size - 10);
    let m = problems(&v, "missing_object");
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(m[0]["key"], manifest.as_str());
    assert_eq!(m[0]["backup"], full.as_str());
    let _ = std::fs::remove_dir_all(&bed.work);
}

#[test]
fn pg18_check_on_a_local_directory() {
    run(false);
}

#[test]
fn pg18_check_on_seaweedfs() {
    run(true);
}
