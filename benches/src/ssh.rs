//! Through an SSH tunnel: `pgrepl basebackup --ssh` (russh, in process) against what users do
//! instead, `ssh -N -L` beside `pg_basebackup`, and against our own direct connection, on one
//! server, tar format without WAL and without fsync so that the tunnel is what is measured.
//! The `ssh` client's CPU (wait4 when it is stopped after each run) is added to
//! pg_basebackup's; `ssh -L` runs with OpenSSH's default cipher and with aes128-gcm, the one
//! we prefer.

use std::process::{Command, Stdio};

use pgrepl_testbed::{tool, Role, SshServer};

use crate::measure::{median, run, wait_child, Sample};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

pub fn bench(scale: u32, rounds: usize) -> serde_json::Value {
    let c = crate::measure::pgbench_cluster(scale, "ssh");
    let sshd = SshServer::start();
    let ours = crate::measure::ours_bin();
    let conninfo = c.conninfo(Role::Postgres, "sslmode=disable");
    let root = pgrepl_testbed::temp_dir("sshbench");
    let gb: f64 = c
        .psql("SELECT pg_database_size('postgres')")
        .parse::<f64>()
        .unwrap_or(0.0)
        / 1e9;
    let args = ["-c", "fast", "-F", "t", "-X", "none", "-N", "-D"];
    let (mut direct, mut tunnel, mut openssh, mut openssh_gcm) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..=rounds {
        for k in 0..4 {
            let side = (round + k) % 4;
            let target = root.join(format!("r{round}-{side}"));
            let _ = Command::new("sync").status();
            let sample = match side {
                0 => run(Command::new(&ours)
                    .args(["basebackup", "-d", &conninfo])
                    .args(args)
                    .arg(&target)),
                1 => run(Command::new(&ours)
                    .args(["basebackup", "-d", &conninfo])
                    .args(args)
                    .arg(&target)
                    .args(sshd.args())),
                _ => {
                    let lport = free_port();
                    let mut ssh = Command::new("ssh");
                    ssh.args([
                        "-N",
                        "-o",
                        "BatchMode=yes",
                        "-o",
                        "ExitOnForwardFailure=yes",
                    ])
                    .args(["-o", "StrictHostKeyChecking=yes", "-o"])
                    .arg(format!("UserKnownHostsFile={}", sshd.known_hosts.display()))
                    .arg("-i")
                    .arg(&sshd.client_key)
                    .args(["-p", &sshd.port.to_string(), "-L"])
                    .arg(format!("{lport}:127.0.0.1:{}", c.port))
                    .arg(format!("{}@127.0.0.1", sshd.user))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                    let start = std::time::Instant::now();
                    let child = ssh.spawn().expect("ssh");
                    while std::net::TcpStream::connect(("127.0.0.1", lport)).is_err() {
                        assert!(start.elapsed().as_secs() < 20, "ssh -L did not listen");
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    let forwarded =
                        conninfo.replace(&format!("port={}", c.port), &format!("port={lport}"));
                    let mut s = run(Command::new(tool("pg_basebackup"))
                        .args(["-d", &forwarded])
                        .args(args)
                        .arg(&target));
                    let _ = Command::new("kill")
                        .args(["-KILL", &child.id().to_string()])
                        .status();
                    let ssh_usage = wait_child(child, "ssh -L", true);
                    s.wall = start.elapsed().as_secs_f64();
                    s.cpu += ssh_usage.cpu;
                    s
                }
            };
            if round > 0 {
                [&mut direct, &mut tunnel, &mut openssh, &mut openssh_gcm][side].push(sample);
            }
            let _ = std::fs::remove_dir_all(&target);
        }
    }
    let m = |v: &[Sample]| {
        (
            median(v.iter().map(|s| s.wall).collect()),
            median(v.iter().map(|s| s.cpu).collect()),
            v.iter().map(|s| s.max_rss_kb).max().unwrap_or(0) / 1024,
        )
    };
    let (dw, dc, dr) = m(&direct);
    let (tw, tc, tr) = m(&tunnel);
    let (ow, oc, _) = m(&openssh);
    let (gw, gc, _) = m(&openssh_gcm);
    println!(
        "ssh tar {gb:.2} GB  pgrepl --ssh {tw:.2}s cpu {tc:.2}s rss {tr} MiB | ssh -L + pg_basebackup {ow:.2}s cpu {oc:.2}s (with -c aes128-gcm {gw:.2}s cpu {gc:.2}s) | pgrepl direct {dw:.2}s cpu {dc:.2}s rss {dr} MiB  ratio vs ssh -L wall {:.2}x cpu {:.2}x (vs -c aes128-gcm {:.2}x / {:.2}x), tunnel/direct wall {:.2}x ({:.0} MB/s through the tunnel)",
        tw / ow,
        tc / oc,
        tw / gw,
        tc / gc,
        tw / dw,
        gb * 1e3 / tw
    );
    let _ = std::fs::remove_dir_all(&root);
    serde_json::json!({
        "job": "ssh", "scale": scale, "database_gb": gb, "rounds": rounds,
        "pgrepl_ssh": {"wall_s": tw, "cpu_s": tc, "peak_rss_mib": tr},
        "ssh_L_pg_basebackup": {"wall_s": ow, "cpu_s": oc},
        "ssh_L_aes128_gcm_pg_basebackup": {"wall_s": gw, "cpu_s": gc},
        "pgrepl_direct": {"wall_s": dw, "cpu_s": dc, "peak_rss_mib": dr},
        "ratio": {"wall_vs_ssh_L": tw / ow, "cpu_vs_ssh_L": tc / oc, "wall_vs_ssh_L_gcm": tw / gw, "cpu_vs_ssh_L_gcm": tc / gc, "tunnel_over_direct": tw / dw},
    })
}
