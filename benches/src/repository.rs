//! The repository: `pgrepl backup --repo` into SeaweedFS against the same backup into a
//! repository in a local directory, and against `pg_basebackup -Ft -X none -D - | zstd |`
//! an upload of one object (curl with SigV4); then `pgrepl restore --repo` from SeaweedFS
//! against the same restore from the local directory. Alternating, R rounds; wall, the client's
//! CPU (children included) and peak RSS, as medians and ratios.

use std::path::Path;
use std::process::Command;

use pgrepl_testbed::{tool, Role, SeaweedFs};

use crate::measure::{median, run, Sample};

const BUCKET: &str = "pgrepl-bench";

fn with_env(cmd: &mut Command, w: &SeaweedFs) {
    for (k, v) in w.env() {
        cmd.env(k, v);
    }
}

fn summary(name: &str, v: &[Sample]) -> (f64, f64, i64, serde_json::Value) {
    let wall = median(v.iter().map(|s| s.wall).collect());
    let cpu = median(v.iter().map(|s| s.cpu).collect());
    let rss = v.iter().map(|s| s.max_rss_kb).max().unwrap_or(0) / 1024;
    (
        wall,
        cpu,
        rss,
        serde_json::json!({"what": name, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss}),
    )
}

fn init(bin: &Path, w: &SeaweedFs, url: &str, recipient: Option<&str>) {
    let mut c = Command::new(bin);
    c.args(["init", "--repo", url]);
    if let Some(r) = recipient {
        c.args(["--encrypt-to", r]);
    }
    with_env(&mut c, w);
    run(&mut c);
}

pub fn bench(scale: u32, rounds: usize) -> serde_json::Value {
    let c = crate::measure::pgbench_cluster(scale, "repository");
    let conninfo = c.conninfo(Role::Postgres, "sslmode=disable");
    let bin = crate::measure::ours_bin();
    let w = SeaweedFs::start(&[BUCKET]);
    let root = pgrepl_testbed::temp_dir("repobench");
    let db_mb: f64 = c
        .psql("SELECT pg_database_size('postgres')")
        .parse::<f64>()
        .unwrap_or(0.0)
        / 1e6;
    let key = root.join("key.txt");
    let out = Command::new(&bin)
        .arg("keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("pgrepl keygen");
    let recipient = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (mut s3, mut dir, mut pipe, mut enc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut r_s3, mut r_dir) = (Vec::new(), Vec::new());
    // round 0 warms both sides up and is not counted
    for round in 0..=rounds {
        let s3_url = format!("s3://{BUCKET}/r{round}");
        let dir_repo = root.join(format!("repo{round}"));
        let dir_url = dir_repo.display().to_string();
        let enc_url = format!("s3://{BUCKET}/e{round}");
        init(&bin, &w, &s3_url, None);
        init(&bin, &w, &dir_url, None);
        init(&bin, &w, &enc_url, Some(&recipient));
        let backup = |url: &str| {
            let mut cmd = Command::new(&bin);
            cmd.args([
                "backup", "-d", &conninfo, "--repo", url, "-c", "fast", "--type", "full",
            ]);
            with_env(&mut cmd, &w);
            let _ = Command::new("sync").status();
            run(&mut cmd)
        };
        let upload = || {
            let env = w.env();
            let get = |k: &str| {
                env.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let _ = Command::new("sync").status();
            run(Command::new("sh").arg("-c").arg(format!(
                "{} -d '{conninfo}' -c fast -Ft -X none -D - | zstd -q -3 | curl -sS --fail --aws-sigv4 aws:amz:us-east-1:s3 --user '{}:{}' -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T - '{}/{BUCKET}/pipe{round}/base.tar.zst'",
                tool("pg_basebackup").display(),
                get("AWS_ACCESS_KEY_ID"),
                get("AWS_SECRET_ACCESS_KEY"),
                get("AWS_ENDPOINT_URL"),
            )))
        };
        let order: [u8; 4] = match round % 4 {
            0 => [0, 1, 2, 3],
            1 => [1, 2, 3, 0],
            2 => [2, 3, 0, 1],
            _ => [3, 0, 1, 2],
        };
        for side in order {
            let sample = match side {
                0 => backup(&s3_url),
                1 => backup(&dir_url),
                2 => upload(),
                _ => backup(&enc_url),
            };
            if round > 0 {
                [&mut s3, &mut dir, &mut pipe, &mut enc][side as usize].push(sample);
            }
        }
        // restore the backup just taken, from each repository, to its consistent point
        for side in [round % 2, 1 - round % 2] {
            let url = if side == 0 { &s3_url } else { &dir_url };
            let target = root.join(format!("restored{round}-{side}"));
            let mut cmd = Command::new(&bin);
            cmd.args(["restore", "--repo", url, "-D"])
                .arg(&target)
                .args(["--target", "immediate", "-N"]);
            with_env(&mut cmd, &w);
            let _ = Command::new("sync").status();
            let sample = run(&mut cmd);
            if round > 0 {
                if side == 0 {
                    r_s3.push(sample);
                } else {
                    r_dir.push(sample);
                }
            }
            let _ = std::fs::remove_dir_all(&target);
            let _ = std::fs::remove_file(root.join(format!("restored{round}-{side}.pgrepl-env")));
        }
        let _ = std::fs::remove_dir_all(&dir_repo);
    }
    let (sw, sc, srss, sj) = summary("backup --repo s3", &s3);
    let (dw, dc, drss, dj) = summary("backup --repo dir", &dir);
    let (pw, pc, prss, pj) = summary("pg_basebackup | zstd | curl", &pipe);
    let (ew, ec, erss, ej) = summary("backup --repo s3, encrypted", &enc);
    let (rsw, rsc, rsrss, rsj) = summary("restore --repo s3", &r_s3);
    let (rdw, rdc, rdrss, rdj) = summary("restore --repo dir", &r_dir);
    println!(
        "repository backup  s3 {sw:.2}s cpu {sc:.2}s rss {srss} MiB | dir {dw:.2}s cpu {dc:.2}s rss {drss} MiB | pg_basebackup|zstd|curl {pw:.2}s cpu {pc:.2}s rss {prss} MiB  ratio s3/dir wall {:.2}x  s3/pipe wall {:.2}x cpu {:.2}x",
        sw / dw,
        sw / pw,
        sc / pc
    );
    println!(
        "repository encrypted s3 {ew:.2}s cpu {ec:.2}s rss {erss} MiB  ratio encrypted/plain wall {:.2}x cpu {:.2}x",
        ew / sw,
        ec / sc
    );
    println!(
        "repository restore s3 {rsw:.2}s cpu {rsc:.2}s rss {rsrss} MiB | dir {rdw:.2}s cpu {rdc:.2}s rss {rdrss} MiB  ratio s3/dir wall {:.2}x",
        rsw / rdw
    );
    let _ = std::fs::remove_dir_all(&root);
    serde_json::json!({
        "job": "repository", "scale": scale, "database_mb": db_mb, "rounds": rounds,
        "backup": [sj, dj, pj, ej], "restore": [rsj, rdj],
        "ratio": {"backup_s3_over_dir": sw / dw, "backup_s3_over_pipe": sw / pw, "restore_s3_over_dir": rsw / rdw, "encrypted_over_plain": ew / sw},
    })
}
