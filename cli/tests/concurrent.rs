//! Writers at once on one repository (SeaweedFS), coordinated through the store alone: `expire`
//! beside an incremental backup that is streaming on the chain the rules would remove, two
//! backups at once, a backup SIGKILLed while it holds its lease, a backup beside an expiry mark
//! a dead `expire` left, and a lease a dead
//! backup left past its expiry. Each leaves a repository `check` finds healthy.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgrepl_testbed::{Cluster, ClusterOptions, PgVersion, Role, SeaweedFs};
use pgrepo::store::PutMode;

mod common;
use common::{json, ok, RepoAccess};

struct Bed {
    c: Cluster,
    _w: SeaweedFs,
    r: RepoAccess,
}

impl Bed {
    fn new(prefix: &str) -> Bed {
        let c = Cluster::start_with(
            PgVersion::V18,
            ClusterOptions {
                conf: vec!["summarize_wal = on".into()],
                ..Default::default()
            },
        );
        let w = SeaweedFs::start(&["pgrepl-conc"]);
        let url = format!("s3://pgrepl-conc/{prefix}");
        let b = Bed {
            c,
            r: RepoAccess::new(&url, w.env()),
            _w: w,
        };
        ok(b.cmd().args(["init", "--repo", &b.r.url]).output().unwrap());
        b
    }

    fn cmd(&self) -> Command {
        self.r.cmd()
    }

    fn backup_cmd(&self, extra: &[&str]) -> Command {
        let mut c = self.cmd();
        c.args([
            "backup",
            "-d",
            &self.c.conninfo(Role::Postgres, "sslmode=disable"),
            "--repo",
            &self.r.url,
            "-c",
            "fast",
            "--json",
        ])
        .args(extra);
        c
    }

    fn backup(&self, extra: &[&str]) -> serde_json::Value {
        json(&ok(self.backup_cmd(extra).output().unwrap()))
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        self.r.keys(prefix)
    }

    fn healthy(&self) {
        let (code, err) = self.r.check();
        assert_eq!(code, Some(0), "{err}");
        ok(self
            .cmd()
            .args(["verify", "--repo", &self.r.url])
            .output()
            .unwrap());
    }

    fn expire(&self, args: &[&str]) -> serde_json::Value {
        json(&ok(self
            .cmd()
            .args(["expire", "--repo", &self.r.url, "--json"])
            .args(args)
            .output()
            .unwrap()))
    }
}

fn fate(plan: &serde_json::Value, id: &serde_json::Value) -> (String, Vec<String>) {
    let b = plan["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == *id)
        .unwrap_or_else(|| panic!("{id} not in {plan}"));
    (
        b["action"].as_str().unwrap().to_owned(),
        b["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect(),
    )
}

/// `expire --retain-full 1` while an incremental streams on the chain of an older full: the
/// lease keeps that chain; the incremental commits with its parent in place; the next expire,
/// with no backup running, removes the whole old chain.
#[test]
fn pg18_expire_beside_a_running_backup() {
    let b = Bed::new("expire-race");
    let c = &b.c;
    c.pgbench_init(3);
    let f1 = b.backup(&["--type", "full"]);
    c.pgbench(&["-t", "200", "-c", "2", "-n"]);
    let i1 = b.backup(&[]);
    assert_eq!(i1["kind"], "incremental", "{i1}");
    // every page of the big table changes: the next incremental is large, and throttled
    c.psql("UPDATE pgbench_accounts SET abalance = abalance + 1");
    c.psql("CHECKPOINT");
    let running = b.backup_cmd(&["--max-rate", "4M"]).spawn_output();
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.keys("leases/").is_empty() {
        assert!(Instant::now() < deadline, "no lease appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let f2 = b.backup(&["--type", "full"]);
    let plan = b.expire(&["--retain-full", "1"]);
    assert_eq!(fate(&plan, &f2["id"]).0, "keep", "{plan}");
    assert_eq!(
        fate(&plan, &i1["id"]),
        ("keep".to_owned(), vec!["in_use".to_owned()]),
        "{plan}"
    );
    assert_eq!(fate(&plan, &f1["id"]).0, "keep", "{plan}");
    let out = running.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inc = json(&out);
    assert_eq!(inc["parent"], i1["id"], "{inc}");
    assert!(
        b.keys("leases/").is_empty(),
        "the lease outlived its backup"
    );
    b.healthy();
    // nothing runs now: the old chain goes whole, incremental included
    let plan = b.expire(&["--retain-full", "1"]);
    for id in [&f1["id"], &i1["id"], &inc["id"]] {
        assert_eq!(fate(&plan, id).0, "expire", "{plan}");
    }
    assert!(b.keys("expiring/").is_empty(), "marks left behind");
    b.healthy();

    // a backup killed while it holds its lease: nothing committed, its lease still live, so
    // expire keeps the chain it claimed; the repository stays consistent
    c.psql("UPDATE pgbench_accounts SET abalance = abalance + 1");
    let mut killed = b.backup_cmd(&["--max-rate", "4M"]).spawn_output();
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.keys("leases/").is_empty() {
        assert!(Instant::now() < deadline, "no lease appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    killed.kill().unwrap(); // SIGKILL
    killed.wait().unwrap();
    assert_eq!(b.keys("leases/").len(), 1, "the dead backup's lease");
    let f3 = b.backup(&["--type", "full"]);
    let plan = b.expire(&["--retain-full", "1"]);
    assert_eq!(fate(&plan, &f3["id"]).0, "keep", "{plan}");
    assert_eq!(
        fate(&plan, &f2["id"]),
        ("keep".to_owned(), vec!["in_use".to_owned()]),
        "the chain the dead backup claimed: {plan}"
    );
    b.healthy();
}

/// Two automatic backups at once, then a backup beside the mark a dead `expire` left on the
/// newest backup (it takes a full, and says why), and a lease a dead backup left, past its
/// expiry (expire ignores it and removes it).
#[test]
fn pg18_two_backups_at_once_and_what_dead_writers_leave() {
    let b = Bed::new("two");
    let c = &b.c;
    c.pgbench_init(2);
    b.backup(&["--type", "full"]);
    c.pgbench(&["-t", "200", "-c", "2", "-n"]);
    let one = b.backup_cmd(&[]).spawn_output();
    let two = b.backup_cmd(&[]).spawn_output();
    let (one, two) = (
        json(&ok(one.wait_with_output().unwrap())),
        json(&ok(two.wait_with_output().unwrap())),
    );
    assert_ne!(one["id"], two["id"]);
    b.healthy();

    // a dead expire's mark on the newest backup
    let repo =
        b.r.rt
            .block_on(pgrepo::Repo::open(b.r.store.clone()))
            .unwrap();
    let all = b.r.rt.block_on(repo.backups()).unwrap();
    let newest = all.last().unwrap().id.clone();
    b.r.rt
        .block_on(pgrepo::lease::mark_expiring(&repo, &[newest.as_str()]))
        .unwrap();
    let next = b.backup(&[]);
    assert_eq!(next["kind"], "full", "{next}");
    assert_eq!(next["full_reason_code"], "parent_expiring", "{next}");

    // a dead backup's lease, past its expiry, on the oldest chain: expire is not held by it
    let oldest = all.first().unwrap().id.clone();
    let stale = pgrepo::lease::LeaseRecord {
        backups: vec![oldest.clone()],
        expires: 1,
        holder: "a backup that died".into(),
    };
    b.r.rt
        .block_on(repo.put_record("leases/dead.json", &stale, PutMode::Create))
        .unwrap();
    let plan = b.expire(&["--retain-full", "1"]);
    assert_eq!(
        fate(&plan, &serde_json::Value::from(oldest.as_str())).0,
        "expire",
        "{plan}"
    );
    assert!(b.keys("leases/").is_empty(), "the void lease stayed");
    b.healthy();
}

trait SpawnOutput {
    fn spawn_output(&mut self) -> std::process::Child;
}

impl SpawnOutput for Command {
    fn spawn_output(&mut self) -> std::process::Child {
        self.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}
