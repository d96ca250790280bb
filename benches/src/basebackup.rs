//! Base backups: `pgrepl basebackup` against `pg_basebackup` on the same server, alternating, in
//! several modes. Client CPU (user+sys, children included) and peak RSS come from wait4; the
//! same backup with `-t blackhole` gives the server's own share of the wall time, and
//! `pg_basebackup -Ft -X none -D - > /dev/null` (with the manifest and without) the physical
//! floor: what the server can send when nothing is written. A durable mode's backup also has to
//! reach the disk: two `dd oflag=direct conv=fsync` at once, writing as many bytes as our
//! backup holds into the same file system, give the disk's share, and the physical floor of
//! that mode is the larger of the two (a client that overlaps reading and writing perfectly
//! ends there). The `--no-sync` modes run once more on a slow disk (both clients' writes
//! throttled by a block-I/O cgroup), where the page cache is faster than the device.

use std::process::Command;

use pgrepl_testbed::{tool, Role};

use crate::measure::{median, run, Sample};

struct Mode {
    name: &'static str,
    ours: &'static [&'static str],
    theirs: &'static [&'static str],
    /// pg_basebackup's output goes through `zstd -5 -T0` (the test bed's PG 18 has no zstd).
    pipe_zstd: bool,
    incremental: bool,
    /// Both clients run with their direct (and synchronous) writes throttled to
    /// [`SLOW_DISK_BPS`]: a disk slower than the page cache.
    slow_disk: bool,
}

/// The write rate of the "slow disk" modes, in bytes per second.
const SLOW_DISK_BPS: u64 = 150_000_000;

/// How long freed memory takes to go back to the host (see the rounds in [`bench`]): a second
/// was enough in every try, two leave a margin.
const MEMORY_COLD: std::time::Duration = std::time::Duration::from_secs(2);

const MODES: &[Mode] = &[
    Mode {
        name: "plain --no-sync",
        ours: &["-N"],
        theirs: &["-N"],
        pipe_zstd: false,
        incremental: false,
        slow_disk: false,
    },
    Mode {
        name: "plain, fsync",
        ours: &[],
        theirs: &[],
        pipe_zstd: false,
        incremental: false,
        slow_disk: false,
    },
    Mode {
        name: "tar --no-sync",
        ours: &["-F", "t", "-N"],
        theirs: &["-F", "t", "-N"],
        pipe_zstd: false,
        incremental: false,
        slow_disk: false,
    },
    Mode {
        name: "tar, fsync",
        ours: &["-F", "t"],
        theirs: &["-F", "t"],
        pipe_zstd: false,
        incremental: false,
        slow_disk: false,
    },
    Mode {
        name: "tar + zstd:5",
        // our default workers: one per core, as `zstd -T0` on the other side
        ours: &["-F", "t", "-N", "-X", "none", "-Z", "zstd:5"],
        theirs: &["-F", "t", "-X", "none"],
        pipe_zstd: true,
        incremental: false,
        slow_disk: false,
    },
    Mode {
        name: "incremental",
        ours: &["-N"],
        theirs: &["-N"],
        pipe_zstd: false,
        incremental: true,
        slow_disk: false,
    },
    Mode {
        name: "plain --no-sync, slow disk",
        ours: &["-N"],
        theirs: &["-N"],
        pipe_zstd: false,
        incremental: false,
        slow_disk: true,
    },
    Mode {
        name: "tar --no-sync, slow disk",
        ours: &["-F", "t", "-N"],
        theirs: &["-F", "t", "-N"],
        pipe_zstd: false,
        incremental: false,
        slow_disk: true,
    },
];

/// A block-I/O cgroup that throttles writes to the disk under a directory: cgroup v1's
/// `blkio.throttle.write_bps_device`, which throttles the writes a process makes itself
/// (direct and synchronous ones) and leaves the kernel's writeback of the page cache alone —
/// a slow disk behind plenty of memory for dirty pages — or else cgroup v2's `io.max`, which
/// also throttles that writeback.
struct SlowDisk {
    dir: std::path::PathBuf,
    procs: std::path::PathBuf,
    kind: &'static str,
}

impl SlowDisk {
    fn new(under: &std::path::Path, bps: u64) -> Result<SlowDisk, String> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(under)
            .map_err(|e| format!("{}: {e}", under.display()))?
            .dev();
        let (major, minor) = (
            ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
            (dev & 0xff) | ((dev >> 12) & !0xff),
        );
        // throttles name whole disks: a partition's disk is its parent in sysfs
        let sys = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let disk = if sys.join("partition").exists() {
            let parent = std::fs::canonicalize(&sys)
                .map_err(|e| format!("{}: {e}", sys.display()))?
                .parent()
                .map(|p| p.join("dev"))
                .ok_or("no parent disk")?;
            std::fs::read_to_string(&parent)
                .map_err(|e| format!("{}: {e}", parent.display()))?
                .trim()
                .to_owned()
        } else {
            format!("{major}:{minor}")
        };
        let write = |p: &std::path::Path, v: &str| {
            std::fs::write(p, v).map_err(|e| format!("{}: {e}", p.display()))
        };
        let v1 = std::path::Path::new("/sys/fs/cgroup/blkio");
        if v1.is_dir() {
            let dir = v1.join("pgrepl-bench-slow");
            let _ = std::fs::create_dir(&dir);
            write(
                &dir.join("blkio.throttle.write_bps_device"),
                &format!("{disk} {bps}"),
            )?;
            return Ok(SlowDisk {
                procs: dir.join("cgroup.procs"),
                dir,
                kind: "cgroup v1 blkio",
            });
        }
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .map_err(|e| format!("no cgroup v1 blkio and no cgroup v2: {e}"))?;
        if !controllers.split_whitespace().any(|c| c == "io") {
            return Err("the cgroup v2 hierarchy has no io controller".into());
        }
        write(&v2.join("cgroup.subtree_control"), "+io")?;
        let dir = v2.join("pgrepl-bench-slow");
        let _ = std::fs::create_dir(&dir);
        write(&dir.join("io.max"), &format!("{disk} wbps={bps}"))?;
        Ok(SlowDisk {
            procs: dir.join("cgroup.procs"),
            dir,
            kind: "cgroup v2 io.max",
        })
    }

    /// `cmd`, run inside the cgroup.
    fn wrap(&self, cmd: &Command) -> Command {
        let mut w = Command::new("sh");
        w.arg("-c")
            .arg(format!(
                "echo $$ > '{}' && exec \"$@\"",
                self.procs.display()
            ))
            .arg("sh")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        w
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Calls `f` with every regular file under `dir` (links are not followed).
fn each_file(dir: &std::path::Path, f: &mut impl FnMut(&std::path::Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            each_file(&e.path(), f);
        } else if t.is_file() {
            f(&e.path());
        }
    }
}

/// Reads every file under `dir` (the server's data directory), so that the server's reads in
/// the next run come from the page cache. These VMs page out page cache they judge idle
/// (DAMON's `pageout` scheme samples one page per region of several MB, so blocks read a few
/// seconds ago go with their idle neighbours): an incremental backup, which reads scattered
/// blocks, then waited for the disk in some runs and not in others, whichever client ran.
fn read_all(dir: &std::path::Path) {
    each_file(dir, &mut |p| {
        // through std's stack buffer: a heap buffer here would stay in this process's RSS,
        // which every client forked from it then reports as its own peak
        if let Ok(mut f) = std::fs::File::open(p) {
            let _ = std::io::copy(&mut f, &mut std::io::sink());
        }
    });
}

/// The bytes of the regular files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    each_file(dir, &mut |p| {
        n += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    });
    n
}

/// Truncates every file under `dir` to nothing, keeping the files.
fn empty_files(dir: &std::path::Path) {
    each_file(dir, &mut |p| {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(p) {
            let _ = f.set_len(0);
        }
    });
}

/// Runs the modes whose names contain `only` (all without it).
pub fn bench(scale: u32, rounds: usize, only: Option<&str>) -> serde_json::Value {
    let c = crate::measure::pgbench_cluster(scale, "basebackup");
    let conninfo = c.conninfo(Role::Postgres, "sslmode=disable");
    let ours_bin = crate::measure::ours_bin();
    let root = pgrepl_testbed::temp_dir("bbbench");
    // parents for the incremental mode
    let ours_full = root.join("ours_full");
    let theirs_full = root.join("theirs_full");
    crate::measure::run(
        Command::new(&ours_bin)
            .args(["basebackup", "-d", &conninfo, "-c", "fast", "-N", "-D"])
            .arg(&ours_full),
    );
    crate::measure::run(
        Command::new(tool("pg_basebackup"))
            .args(["-d", &conninfo, "-c", "fast", "-N", "-D"])
            .arg(&theirs_full),
    );
    let db_mb: f64 = c
        .psql("SELECT pg_database_size('postgres')")
        .parse::<f64>()
        .unwrap_or(0.0)
        / 1e6;
    let mut lines = Vec::new();
    let mut json = Vec::new();
    let slow = SlowDisk::new(&root, SLOW_DISK_BPS);
    match &slow {
        Ok(s) => println!(
            "slow-disk modes: writes of both clients throttled to {} MB/s by {}",
            SLOW_DISK_BPS / 1_000_000,
            s.kind
        ),
        Err(e) => println!("slow-disk modes skipped: cannot throttle the disk ({e})"),
    }
    let modes: Vec<&Mode> = MODES
        .iter()
        .filter(|m| only.is_none_or(|o| m.name.contains(o)))
        .collect();
    for &mode in &modes {
        let slow = match (&slow, mode.slow_disk) {
            (_, false) => None,
            (Ok(s), true) => Some(s),
            (Err(_), true) => continue,
        };
        let throttled = |cmd: &mut Command| match slow {
            Some(s) => run(&mut s.wrap(cmd)),
            None => run(cmd),
        };
        let mut ours: Vec<Sample> = Vec::new();
        let mut theirs: Vec<Sample> = Vec::new();
        // The server's share: the same backup with `-t blackhole`, where the server reads,
        // checksums and discards the files. Neither client can finish before it.
        let mut server: Vec<f64> = Vec::new();
        // `pg_basebackup -Ft -X none -D - > /dev/null`, with the manifest and without
        let mut floor: [Vec<f64>; 2] = Default::default();
        // A durable mode: how long the disk takes for our backup's bytes, written with O_DIRECT
        // in 4 MiB blocks and fsynced (by dd, so that no buffer of ours stays in the harness's
        // RSS, which wait4 would count in the next client's peak)
        let durable = !mode.ours.contains(&"-N") && !mode.pipe_zstd;
        let mut disk: Vec<f64> = Vec::new();
        // the bytes of our last backup in a durable mode
        let mut our_bytes: Option<u64> = None;
        // Each backup's files are emptied after its run (freeing their blocks and page cache)
        // but deleted only when the mode ends: ext4 without a journal (these VMs) skips inodes
        // freed in the last 60 s when it allocates new ones, so deleting each backup before the
        // next run made every run slower than the last (both tools create ~1000 files).
        let mut done: Vec<std::path::PathBuf> = Vec::new();
        // Round 0 is an unmeasured warm-up of both sides (page cache, the server's writeback).
        // An incremental takes a fraction of a second, within which the server's checkpoint
        // and WAL summarizer vary by as much as the clients differ: it gets twice the rounds
        // (an even number, so that each side goes first as often).
        let mode_rounds = if mode.incremental { 2 * rounds } else { rounds };
        for round in 0..=mode_rounds {
            if mode.incremental {
                c.pgbench(&["-t", "2000", "-c", "2", "-n"]);
                // Outside the timing: write out pgbench's dirty buffers and let the WAL
                // summarizer catch up, or whichever side goes first pays for both (its fast
                // checkpoint flushes them; its INCREMENTAL waits for the summaries).
                c.psql("CHECKPOINT");
                let caught_up =
                    "SELECT (SELECT summarized_lsn FROM pg_get_wal_summarizer_state()) \
                                 >= (SELECT redo_lsn FROM pg_control_checkpoint())";
                for _ in 0..100 {
                    if c.psql(caught_up) == "t" {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
            // Alternate who goes first, and flush the previous run's dirty pages and deletions
            // outside the timed region, so neither pays for the other's writeback. Then let
            // the memory they freed go cold: these VMs hand free memory back to the host within
            // a second, and the first write into a page the host took back costs a fault on the
            // host (dd of 1.5 GB into the page cache: 0.33-0.87 s right after deleting the last
            // copy, 2.4-4.9 s a second or more later). A run that began within that second
            // wrote its page cache several times faster than one that began after it, so
            // whoever followed a page-cache writer gained; now every run starts cold, as a
            // backup on such a host does.
            for side in [round % 2, 1 - round % 2] {
                read_all(&c.data);
                let _ = Command::new("sync").status();
                std::thread::sleep(MEMORY_COLD);
                if side == 0 {
                    let target = root.join(format!("ours{round}"));
                    let mut cmd = Command::new(&ours_bin);
                    cmd.args(["basebackup", "-d", &conninfo, "-c", "fast", "-D"])
                        .arg(&target)
                        .args(mode.ours);
                    if mode.incremental {
                        cmd.arg("-i").arg(&ours_full);
                    }
                    let sample = throttled(&mut cmd);
                    if round > 0 {
                        ours.push(sample);
                        if durable {
                            our_bytes = Some(dir_bytes(&target));
                        }
                    }
                    empty_files(&target);
                    done.push(target);
                } else {
                    let target = root.join(format!("theirs{round}"));
                    let sample = if mode.pipe_zstd {
                        std::fs::create_dir_all(&target).unwrap();
                        run(Command::new("sh").arg("-c").arg(format!(
                            "{} -d '{}' -c fast -D - {} | zstd -q -5 -T0 -o {}",
                            tool("pg_basebackup").display(),
                            conninfo,
                            mode.theirs.join(" "),
                            target.join("base.tar.zst").display()
                        )))
                    } else {
                        let mut cmd = Command::new(tool("pg_basebackup"));
                        cmd.args(["-d", &conninfo, "-c", "fast", "-D"])
                            .arg(&target)
                            .args(mode.theirs);
                        if mode.incremental {
                            cmd.arg("-i").arg(theirs_full.join("backup_manifest"));
                        }
                        throttled(&mut cmd)
                    };
                    if round > 0 {
                        theirs.push(sample);
                    }
                    empty_files(&target);
                    done.push(target);
                }
            }
            if round > 0 {
                // the physical floor: what the server can send, straight into /dev/null (for
                // the incremental mode, the same incremental)
                for (i, extra) in [&[][..], &["--no-manifest"][..]].iter().enumerate() {
                    let mut cmd = Command::new(tool("pg_basebackup"));
                    cmd.args([
                        "-d", &conninfo, "-c", "fast", "-Ft", "-X", "none", "-D", "-",
                    ])
                    .args(*extra);
                    if mode.incremental {
                        cmd.arg("-i").arg(theirs_full.join("backup_manifest"));
                    }
                    floor[i].push(run(&mut cmd).wall);
                }
                if let Some(bytes) = our_bytes {
                    // two files, half the bytes each, written at once: two writes in flight,
                    // as our sink keeps (one dd was 10-25% slower on a virtio disk)
                    let f = [root.join("disk-floor-1"), root.join("disk-floor-2")];
                    let dd = |f: &std::path::Path| {
                        format!(
                            "dd if=/dev/zero of='{}' bs=4M oflag=direct conv=fsync count={} &",
                            f.display(),
                            bytes.div_ceil(8 << 20)
                        )
                    };
                    let _ = Command::new("sync").status();
                    disk.push(
                        run(Command::new("sh").arg("-c").arg(format!(
                            "{} {} wait",
                            dd(&f[0]),
                            dd(&f[1])
                        )))
                        .wall,
                    );
                    for f in &f {
                        let _ = std::fs::remove_file(f);
                    }
                }
            }
            if round > 0 && !mode.pipe_zstd {
                let mut cmd = Command::new(&ours_bin);
                cmd.args(["basebackup", "-d", &conninfo, "-c", "fast"])
                    .args(["-t", "blackhole", "-X", "none"]);
                if mode.incremental {
                    cmd.arg("-i").arg(&ours_full);
                }
                server.push(run(&mut cmd).wall);
            }
        }
        for d in &done {
            let _ = std::fs::remove_dir_all(d);
        }
        if !std::ptr::eq(mode, *modes.last().unwrap()) {
            // let those inodes age past the 60 s before the next mode
            let _ = Command::new("sync").status();
            std::thread::sleep(std::time::Duration::from_secs(61));
        }
        let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
        let (ow, oc) = (m(&ours, |s| s.wall), m(&ours, |s| s.cpu));
        let (tw, tc) = (m(&theirs, |s| s.wall), m(&theirs, |s| s.cpu));
        // pg_basebackup's page-cache writes vary a lot between runs on VMs that hand free
        // memory back to the host: show each side's range next to the medians
        let range = |v: &[Sample]| {
            let w: Vec<f64> = v.iter().map(|s| s.wall).collect();
            (
                w.iter().copied().fold(f64::INFINITY, f64::min),
                w.iter().copied().fold(0.0, f64::max),
            )
        };
        let (olo, ohi) = range(&ours);
        let (tlo, thi) = range(&theirs);
        // Each round's two runs back up the same data (in the incremental mode the changed
        // blocks grow from round to round): the median of the rounds' own ratios pairs them,
        // where the ratio of the medians can set one side's small round against the other's
        // large one.
        let paired = median(
            ours.iter()
                .zip(&theirs)
                .map(|(o, t)| o.wall / t.wall)
                .collect(),
        );
        let floor_paired = median(
            ours.iter()
                .zip(&floor[0])
                .map(|(o, f)| o.wall / f)
                .collect(),
        );
        let orss = ours.iter().map(|s| s.max_rss_kb).max().unwrap_or(0) / 1024;
        let trss = theirs.iter().map(|s| s.max_rss_kb).max().unwrap_or(0) / 1024;
        let sw = (!server.is_empty()).then(|| median(server.clone()));
        let fl =
            (!floor[0].is_empty()).then(|| (median(floor[0].clone()), median(floor[1].clone())));
        let dw = (!disk.is_empty()).then(|| median(disk.clone()));
        // the physical floor of a durable mode: the server's or the disk's, whichever is slower
        let physical = fl.map(|f| dw.map_or(f.0, |d| d.max(f.0)));
        let line = format!(
            "basebackup {:<16} pgrepl {ow:.2}s ({olo:.2}-{ohi:.2}) cpu {oc:.2}s  pg_basebackup {tw:.2}s ({tlo:.2}-{thi:.2}) cpu {tc:.2}s  ratio wall {:.2}x (per round {paired:.2}x) cpu {:.2}x  peak RSS {orss} / {trss} MiB{}{}{}",
            mode.name,
            ow / tw,
            oc / tc,
            sw.map(|w| format!("  server alone {w:.2}s")).unwrap_or_default(),
            fl.map(|(m, n)| format!(
                "  floor {m:.2}s (no manifest {n:.2}s) ours/floor {:.2}x (per round {floor_paired:.2}x)",
                ow / m
            ))
            .unwrap_or_default(),
            match (dw, physical) {
                (Some(d), Some(p)) => format!(
                    "  disk alone {d:.2}s ours/max(floor, disk) {:.2}x",
                    ow / p
                ),
                _ => String::new(),
            }
        );
        println!("{line}");
        lines.push(line);
        json.push(serde_json::json!({
            "mode": mode.name,
            "rounds": mode_rounds,
            "slow_disk_bps": mode.slow_disk.then_some(SLOW_DISK_BPS),
            "ours": {"wall_s": ow, "wall_min_s": olo, "wall_max_s": ohi, "cpu_s": oc, "peak_rss_mib": orss},
            "pg_basebackup": {"wall_s": tw, "wall_min_s": tlo, "wall_max_s": thi, "cpu_s": tc, "peak_rss_mib": trss},
            "ratio": {"wall": ow / tw, "wall_per_round_median": paired, "cpu": oc / tc},
            "ours_wall_per_round_s": ours.iter().map(|s| s.wall).collect::<Vec<_>>(),
            "pg_basebackup_wall_per_round_s": theirs.iter().map(|s| s.wall).collect::<Vec<_>>(),
            "server_alone_wall_s": sw,
            "floor_wall_s": fl.map(|f| f.0),
            "floor_no_manifest_wall_s": fl.map(|f| f.1),
            "ratio_to_floor": fl.map(|f| ow / f.0),
            "ratio_to_floor_per_round_median": fl.map(|_| floor_paired),
            "disk_alone_wall_s": dw,
            "ratio_to_physical_floor": physical.map(|p| ow / p),
        }));
    }
    let _ = std::fs::remove_dir_all(&root);
    serde_json::json!({"job": "basebackup", "scale": scale, "database_mb": db_mb, "rounds": rounds, "modes": json})
}
