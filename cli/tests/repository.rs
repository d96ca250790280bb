//! The repository loop end to end, on a local directory and on SeaweedFS alike: `init`,
//! `receivewal --repo` running, a full backup, load, two `backup --type auto` (incremental, and
//! saying so), rows committed with their times recorded; then `restore --repo` — run in a
//! fresh directory with nothing but the repository URL and credentials — to random times, an
//! LSN, an xid, a restore point and the end. Each restored server starts, promotes and holds
//! exactly the rows committed up to its target. PostgreSQL 15 has no WAL summaries: there the
//! automatic backups are full, and say why.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use pgrepl_testbed::{hand_over, temp_dir, Cluster, PgVersion, Role, SeaweedFs};

mod common;
use common::{json, ok, pgrepl, wait_for};

/// Where the repository lives.
enum Where {
    Dir(PathBuf),
    S3(SeaweedFs),
}

struct Repo {
    at: Where,
    url: String,
    /// The identity of an encrypted repository.
    identity: Option<PathBuf>,
}

impl Repo {
    fn local(work: &Path) -> Repo {
        let dir = work.join("repo");
        Repo {
            url: dir.display().to_string(),
            at: Where::Dir(dir),
            identity: None,
        }
    }

    fn s3(prefix: &str) -> Repo {
        Repo {
            at: Where::S3(SeaweedFs::start(&["pgrepl-backups"])),
            url: format!("s3://pgrepl-backups/{prefix}"),
            identity: None,
        }
    }

    /// An encrypted repository on SeaweedFS, its key made with `pgrepl keygen`.
    fn s3_encrypted(prefix: &str, work: &Path) -> Repo {
        let mut r = Repo::s3(prefix);
        let key = work.join("repo-key.txt");
        ok(pgrepl().arg("keygen").arg("-o").arg(&key).output().unwrap());
        r.identity = Some(key);
        r
    }

    /// `--repo URL`, and `-i KEY` for an encrypted repository.
    fn args(&self) -> Vec<String> {
        let mut v = vec!["--repo".to_owned(), self.url.clone()];
        if let Some(k) = &self.identity {
            v.extend(["-i".to_owned(), k.display().to_string()]);
        }
        v
    }

    /// `pgrepl` with nothing in its environment but the store's credentials.
    fn cmd(&self) -> Command {
        let mut c = pgrepl();
        c.env_clear().env("PATH", "/usr/bin:/bin");
        if let Where::S3(w) = &self.at {
            for (k, v) in w.env() {
                c.env(k, v);
            }
        }
        c
    }
}

fn conninfo(c: &Cluster) -> String {
    c.conninfo(
        Role::Postgres,
        "sslmode=disable application_name=pgrepl_repo",
    )
}

fn terminate(mut child: Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "receivewal exited with {st}");
}

fn tick(c: &Cluster, k: u32) {
    c.psql(&format!(
        "INSERT INTO ticks VALUES ({k}, clock_timestamp(), pg_current_xact_id())"
    ));
    std::thread::sleep(Duration::from_millis(120));
}

struct Fixture {
    work: PathBuf,
    repo: Repo,
    backups: Vec<serde_json::Value>,
    rows: Vec<(u32, String)>,
    lsn_after_47: String,
    xid_of_50: String,
}

/// Rows committed, one about every 150 ms; the backups are taken before rows 11 (the full
/// one), 26 and 41.
const ROWS: u32 = 60;

fn backup(c: &Cluster, repo: &Repo) -> serde_json::Value {
    let out = ok(repo
        .cmd()
        .args([
            "backup",
            "-d",
            &conninfo(c),
            "--repo",
            &repo.url,
            "-c",
            "fast",
            "--json",
        ])
        .output()
        .unwrap());
    json(&out)
}

fn fixture(c: &Cluster, repo: Repo, work: PathBuf) -> Fixture {
    ok(repo
        .cmd()
        .args(["init", "--repo", &repo.url])
        .output()
        .unwrap());
    c.psql("CREATE TABLE ticks (k int PRIMARY KEY, at timestamptz, x xid8)");
    ok(repo
        .cmd()
        .args([
            "receivewal",
            "-d",
            &conninfo(c),
            "-S",
            "repo",
            "--create-slot",
        ])
        .output()
        .unwrap());
    let rx = repo
        .cmd()
        .args([
            "receivewal",
            "-d",
            &conninfo(c),
            "-S",
            "repo",
            "--repo",
            &repo.url,
        ])
        .args(["--status-interval", "1", "--partial-interval", "1"])
        .spawn()
        .unwrap();
    let mut backups = Vec::new();
    let mut lsn_after_47 = String::new();
    for k in 1..=ROWS {
        if [11, 26, 41].contains(&k) {
            backups.push(backup(c, &repo));
        }
        tick(c, k);
        if k == 47 {
            lsn_after_47 = c.psql("SELECT pg_current_wal_lsn()");
        }
        if k == 53 {
            c.psql("SELECT pg_create_restore_point('rp53')");
        }
    }
    let xid_of_50 = c.psql("SELECT x FROM ticks WHERE k = 50");
    // everything is in the repository: a commit after the last row, then the slot's position
    c.psql("CREATE TABLE after_all (x int)");
    let end = c.psql("SELECT pg_current_wal_insert_lsn()");
    wait_for("the repository to catch up", || {
        c.psql(&format!(
            "SELECT restart_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = 'repo'"
        )) == "t"
    });
    terminate(rx);
    let rows = c
        .psql("SELECT k || '|' || to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM ticks ORDER BY k")
        .lines()
        .map(|l| {
            let (k, t) = l.split_once('|').unwrap();
            (k.parse().unwrap(), format!("{t}+00"))
        })
        .collect();
    // recovery's restore_command runs as the server's user: it reads the repository (a
    // directory) and the identity
    if let Where::Dir(d) = &repo.at {
        hand_over(d);
    }
    if let Some(k) = &repo.identity {
        hand_over(k);
    }
    Fixture {
        work,
        repo,
        backups,
        rows,
        lsn_after_47,
        xid_of_50,
    }
}

/// Restores into a fresh directory (the command run from an empty one, with only the
/// repository's URL and credentials), starts a server, waits for it to promote, and returns
/// (count, max k) and what restore said.
fn recovered_rows(
    v: PgVersion,
    f: &Fixture,
    name: &str,
    target: &[&str],
) -> ((u32, u32), serde_json::Value) {
    let fresh = temp_dir("fresh");
    let pgdata = fresh.join(name);
    let out = ok(f
        .repo
        .cmd()
        .current_dir(&fresh)
        .arg("restore")
        .args(f.repo.args())
        .arg("-D")
        .arg(&pgdata)
        .args(["--no-sync", "--json", "-v"])
        .args(target)
        .output()
        .unwrap());
    let mut said = json(&out);
    said["stderr"] = String::from_utf8_lossy(&out.stderr).into_owned().into();
    let auto = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains(" wal-fetch --repo "), "{auto}");
    for secret in [
        "AWS_SECRET_ACCESS_KEY",
        pgrepl_testbed::S3_SECRET_KEY,
        "AGE-SECRET-KEY",
    ] {
        assert!(
            !auto.contains(secret),
            "a secret in postgresql.auto.conf: {auto}"
        );
    }
    // the files beside the data directory that restore_command reads, for the server's user
    for suffix in ["pgrepl-env", "pgrepl-prefetch"] {
        let p = fresh.join(format!("{name}.{suffix}"));
        if suffix == "pgrepl-prefetch" {
            std::fs::create_dir_all(&p).unwrap();
        }
        if p.exists() {
            hand_over(&p);
        }
    }
    if matches!(f.repo.at, Where::S3(_)) {
        use std::os::unix::fs::PermissionsExt;
        let env = fresh.join(format!("{name}.pgrepl-env"));
        let mode = std::fs::metadata(&env).unwrap().permissions().mode() & 0o077;
        assert_eq!(mode, 0, "the credentials file is readable by others");
    }
    let r = Cluster::start_on(v, &pgdata);
    wait_for("recovery to end", || {
        r.psql("SELECT pg_is_in_recovery()") == "f"
    });
    let got = r.psql("SELECT count(*) || ' ' || coalesce(max(k), 0) FROM ticks");
    let (n, m) = got.split_once(' ').unwrap();
    let res = (n.parse().unwrap(), m.parse().unwrap());
    drop(r);
    let _ = std::fs::remove_dir_all(&fresh);
    (res, said)
}

fn pick(lo: u32, hi: u32, salt: u32) -> u32 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(salt.wrapping_mul(40_503));
    lo + n % (hi - lo + 1)
}

fn time_after(f: &Fixture, k: u32) -> String {
    let t = &f.rows[(k - 1) as usize].1;
    let us = basebackup::restore::parse_timestamp(t).unwrap() + 60_000;
    basebackup::restore::format_timestamp(us)
}

fn chain_of(said: &serde_json::Value) -> usize {
    said["chain"].as_array().map_or(0, Vec::len)
}

fn repository_loop(v: PgVersion, repo: impl FnOnce(&Path) -> Repo) {
    let c = Cluster::start(v);
    let work = temp_dir("repo");
    let repo = repo(&work);
    repository_loop_on(v, c, work, repo)
}

fn repository_loop_on(v: PgVersion, c: Cluster, work: PathBuf, repo: Repo) {
    let f = fixture(&c, repo, work);
    assert_eq!(f.rows.len(), ROWS as usize);
    let incremental = v != PgVersion::V15;

    // the first backup is full because there was none; the automatic ones after it are
    // incremental on the newest (or full, saying why, where the server has no summaries)
    assert_eq!(f.backups[0]["kind"], "full", "{}", f.backups[0]);
    assert_eq!(f.backups[0]["full_reason_code"], "no_previous_backup");
    for i in 1..3 {
        let b = &f.backups[i];
        if incremental {
            assert_eq!(b["kind"], "incremental", "{b}");
            assert_eq!(b["parent"], f.backups[i - 1]["id"], "{b}");
            assert!(b["full_reason_code"].is_null(), "{b}");
        } else {
            assert_eq!(b["kind"], "full", "{b}");
            assert_eq!(b["full_reason_code"], "server_too_old", "{b}");
        }
    }

    // info: three backups, one chain of three (or three of one), no gap, a window up to the end
    let out = ok(f
        .repo
        .cmd()
        .args(["info", "--json"])
        .args(f.repo.args())
        .output()
        .unwrap());
    let info = json(&out);
    assert_eq!(info["backups"].as_array().unwrap().len(), 3, "{info}");
    let chains = info["chains"].as_array().unwrap();
    if incremental {
        assert_eq!(chains.len(), 1, "{info}");
        assert_eq!(chains[0].as_array().unwrap().len(), 3, "{info}");
    } else {
        assert_eq!(chains.len(), 3, "{info}");
    }
    assert_eq!(info["gaps"].as_array().unwrap().len(), 0, "{info}");
    assert!(info["window"]["latest_commit_time"].is_string(), "{info}");

    // random times after each backup (more than a second after it: a checkpoint's time has
    // whole seconds, so a target in the second of a backup's start cannot be told from before
    // it): the newest chain that reaches the time is chosen
    for (i, (lo, hi, chain)) in [(18, 24, 1), (33, 39, 2), (48, 59, 3)]
        .into_iter()
        .enumerate()
    {
        let k = pick(lo, hi, i as u32);
        let t = time_after(&f, k);
        let (got, said) = recovered_rows(v, &f, &format!("t{i}"), &["--target-time", &t]);
        assert_eq!(got, (k, k), "target time {t} (after row {k}): {said}");
        assert_eq!(
            chain_of(&said),
            if incremental { chain } else { 1 },
            "target time {t}: {said}"
        );
    }
    let (got, said) = recovered_rows(v, &f, "lsn", &["--target-lsn", &f.lsn_after_47]);
    assert_eq!(got, (47, 47), "target LSN {}: {said}", f.lsn_after_47);
    let (got, _) = recovered_rows(v, &f, "xid", &["--target-xid", &f.xid_of_50]);
    assert_eq!(got, (50, 50));
    let (got, _) = recovered_rows(v, &f, "name", &["--target-name", "rp53"]);
    assert_eq!(got, (53, 53));
    let (got, _) = recovered_rows(v, &f, "end", &[]);
    assert_eq!(got, (ROWS, ROWS));

    // a time before the first backup: nothing to restore from, nothing written
    let fresh = temp_dir("fresh");
    let out = f
        .repo
        .cmd()
        .arg("restore")
        .args(f.repo.args())
        .arg("-D")
        .arg(fresh.join("early"))
        .args(["--target-time", &time_after(&f, 3)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("before") || err.contains("no backup"), "{err}");
    assert!(!fresh.join("early").exists());
    drop(c);
    let _ = std::fs::remove_dir_all(&f.work);
    let _ = std::fs::remove_dir_all(&fresh);
}

#[test]
fn pg18_repository_in_a_directory() {
    repository_loop(PgVersion::V18, Repo::local);
}

#[test]
fn pg18_repository_on_seaweedfs() {
    repository_loop(PgVersion::V18, |_| Repo::s3("team/db18"));
}

#[test]
fn pg17_repository_in_a_directory() {
    repository_loop(PgVersion::V17, Repo::local);
}

#[test]
fn pg17_repository_on_seaweedfs() {
    repository_loop(PgVersion::V17, |_| Repo::s3("db17"));
}

#[test]
fn pg18_encrypted_repository_on_seaweedfs() {
    repository_loop(PgVersion::V18, |w| Repo::s3_encrypted("enc18", w));
}

#[test]
fn pg17_encrypted_repository_on_seaweedfs() {
    repository_loop(PgVersion::V17, |w| Repo::s3_encrypted("enc17", w));
}

#[test]
fn pg15_repository_full_backups_and_wal() {
    repository_loop(PgVersion::V15, |_| Repo::s3("db15"));
}

/// `wal-fetch --repo --prefetch-dir`: after a segment is served, the ones after it are fetched
/// into the cache by a background process (recovery does not wait for them), and a cached
/// segment is served without the repository being opened at all — here with a repository URL
/// that does not exist — byte-equal to the server's own file.
#[test]
fn wal_fetch_prefetches_in_the_background_and_serves_from_the_cache() {
    let bed = common::RepoBed::new("prefetch", false);
    let rx = bed.spawn_receiver();
    let mut names = Vec::new();
    for i in 0..6 {
        bed.c.psql(&format!(
            "CREATE TABLE p{i} AS SELECT generate_series(1, 1000) AS g"
        ));
        names.push(bed.c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())"));
        bed.c.psql("SELECT pg_switch_wal()");
    }
    bed.stop_receiver(rx);
    let work = temp_dir("prefetch");
    let cache = work.join("cache");
    let fetch = |repo: &str, name: &str, dest: &Path| {
        bed.cmd()
            .args(["wal-fetch", "--repo", repo, "--json", "--prefetch", "4"])
            .arg("--prefetch-dir")
            .arg(&cache)
            .arg(name)
            .arg(dest)
            .output()
            .unwrap()
    };
    let out = ok(fetch(&bed.r.url, &names[0], &work.join("first")));
    assert!(
        json(&out)["from"].as_str().unwrap().starts_with("wal/"),
        "{}",
        json(&out)
    );
    wait_for("the segments after it in the cache", || {
        names[1..5].iter().all(|n| cache.join(n).exists())
    });
    // a segment fetched ahead after recovery fetched it itself is never asked for again: the
    // next request removes it (and leaves another timeline's segments alone)
    std::fs::write(cache.join(&names[0]), vec![0u8; 16 << 20]).unwrap();
    let other = format!("00000002{}", &names[0][8..]);
    std::fs::write(cache.join(&other), vec![0u8; 16 << 20]).unwrap();
    let bogus = work.join("no-such-repository").display().to_string();
    for (i, name) in names.iter().enumerate().skip(1).take(2) {
        let dest = work.join(format!("seg{i}"));
        let out = ok(fetch(&bogus, name, &dest));
        let v = json(&out);
        assert_eq!(v["status"], "restored", "{v}");
        assert!(
            v["from"]
                .as_str()
                .unwrap()
                .starts_with(cache.to_str().unwrap()),
            "{v}"
        );
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            std::fs::read(bed.c.data.join("pg_wal").join(name)).unwrap(),
            "{name}"
        );
        assert!(
            !cache.join(name).exists(),
            "served segments leave the cache"
        );
    }
    assert!(
        !cache.join(&names[0]).exists(),
        "a stale segment stays cached"
    );
    assert!(
        cache.join(&other).exists(),
        "another timeline's segment was removed"
    );
    // the background refill follows recovery: as segments leave the cache, the next come in
    wait_for(
        "the refill to fetch the segment after those it first fetched",
        || cache.join(&names[5]).exists(),
    );
    let out = ok(fetch(&bogus, &names[5], &work.join("seg5")));
    assert_eq!(json(&out)["status"], "restored");
    assert_eq!(
        std::fs::read(work.join("seg5")).unwrap(),
        std::fs::read(bed.c.data.join("pg_wal").join(&names[5])).unwrap(),
    );
    // not cached and the repository missing: an error (126), not "missing"
    let after = pgrepl_testbed_next(&names[5]);
    let out = fetch(&bogus, &after, &work.join("seg6"));
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    let _ = std::fs::remove_dir_all(&work);
}

/// The name of the segment after `name` (same timeline).
fn pgrepl_testbed_next(name: &str) -> String {
    let n = u64::from_str_radix(&name[8..16], 16).unwrap() * 256
        + u64::from_str_radix(&name[16..24], 16).unwrap()
        + 1;
    format!("{}{:08X}{:08X}", &name[..8], n / 256, n % 256)
}
