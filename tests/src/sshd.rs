//! A throwaway OpenSSH server (Debian's `openssh-server`, which `scripts/install-tools`
//! installs) on a free loopback port, for the SSH tunnel tests: a host key and a client key made
//! for it, key authentication only, TCP forwarding on or off, logging every channel. Killed and
//! its directory removed on drop; [`SshServer::kill_sessions`] cuts every connection as a
//! dropped tunnel would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

/// A running sshd.
#[derive(Debug)]
pub struct SshServer {
    /// Its directory: config, keys, log.
    pub dir: PathBuf,
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The user the client logs in as (the one running the tests).
    pub user: String,
    /// A client key (ed25519, no passphrase) that the server accepts.
    pub client_key: PathBuf,
    /// A known_hosts file holding the server's host key.
    pub known_hosts: PathBuf,
    forwarding: bool,
    child: Option<Child>,
}

fn ssh_keygen(path: &Path, passphrase: &str, comment: &str) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    crate::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f"])
            .arg(path),
    );
}

impl SshServer {
    /// Starts one with TCP forwarding allowed.
    pub fn start() -> SshServer {
        Self::start_with(true)
    }

    /// Starts one; `forwarding` false sets `AllowTcpForwarding no`.
    pub fn start_with(forwarding: bool) -> SshServer {
        if !Path::new(SSHD).exists() {
            panic!(
                "{SSHD} not found: run scripts/install-tools (as root it installs Debian's \
                 openssh-server)"
            );
        }
        let dir = crate::temp_dir("sshd");
        let user = Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|u| !u.is_empty())
            .expect("cannot tell the current user's name");
        let host_key = dir.join("host_ed25519");
        ssh_keygen(&host_key, "", "pgrepl-test-host");
        let client_key = dir.join("id_ed25519");
        ssh_keygen(&client_key, "", "pgrepl-test-client");
        std::fs::copy(
            client_key.with_extension("pub"),
            dir.join("authorized_keys"),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on 127.0.0.1");
        let mut s = SshServer {
            known_hosts: dir.join("known_hosts"),
            dir,
            port,
            user,
            client_key,
            forwarding,
            child: None,
        };
        s.write_known_hosts();
        s.spawn();
        s
    }

    fn write_known_hosts(&self) {
        std::fs::write(&self.known_hosts, format!("{}\n", self.known_hosts_line())).unwrap();
    }

    fn spawn(&mut self) {
        // the privilege-separation directory Debian's package makes at boot
        let _ = std::fs::create_dir_all("/run/sshd");
        let d = &self.dir;
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {hk}\n\
             PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             UsePAM no\n\
             StrictModes no\n\
             AllowTcpForwarding {fwd}\n\
             AllowAgentForwarding no\n\
             X11Forwarding no\n\
             MaxStartups 100\n\
             LogLevel DEBUG1\n",
            port = self.port,
            hk = d.join("host_ed25519").display(),
            d = d.display(),
            fwd = if self.forwarding { "yes" } else { "no" },
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-f"])
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(d.join("sshd.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start sshd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("sshd exited with {st}:\n{}", self.log());
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::Read;
                let mut b = [0u8; 4];
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                if s.read_exact(&mut b).is_ok() && &b == b"SSH-" {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `user@127.0.0.1:port`, as `--ssh` takes it.
    pub fn destination(&self) -> String {
        format!("{}@127.0.0.1:{}", self.user, self.port)
    }

    /// The host key as a known_hosts line: `[127.0.0.1]:port ssh-ed25519 AAAA...`.
    pub fn known_hosts_line(&self) -> String {
        let pubkey = std::fs::read_to_string(self.dir.join("host_ed25519.pub")).unwrap();
        let mut f = pubkey.split_whitespace();
        format!(
            "[127.0.0.1]:{} {} {}",
            self.port,
            f.next().unwrap(),
            f.next().unwrap()
        )
    }

    /// The host key's SHA256 fingerprint as ssh-keygen prints it (`SHA256:...`).
    pub fn host_key_fingerprint(&self) -> String {
        let out = crate::run(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(self.dir.join("host_ed25519.pub")),
        );
        out.split_whitespace().nth(1).unwrap().to_owned()
    }

    /// `--ssh DEST --ssh-key KEY --ssh-known-hosts FILE`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--ssh".into(),
            self.destination(),
            "--ssh-key".into(),
            self.client_key.display().to_string(),
            "--ssh-known-hosts".into(),
            self.known_hosts.display().to_string(),
        ]
    }

    /// A new ed25519 key pair in its directory that the server does not accept.
    pub fn new_client_key(&self, name: &str, passphrase: &str) -> PathBuf {
        let p = self.dir.join(name);
        ssh_keygen(&p, passphrase, name);
        p
    }

    /// Lets the server accept `key` (its `.pub` beside it).
    pub fn authorize(&self, key: &Path) {
        let mut a = std::fs::read_to_string(self.dir.join("authorized_keys")).unwrap();
        a.push_str(&std::fs::read_to_string(key.with_extension("pub")).unwrap());
        std::fs::write(self.dir.join("authorized_keys"), a).unwrap();
    }

    /// Kills every connection's processes (the listener stays), as a dropped tunnel would.
    pub fn kill_sessions(&self) -> usize {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return 0;
        };
        let pids = descendants(pid);
        for p in &pids {
            let _ = Command::new("kill")
                .args(["-KILL", &p.to_string()])
                .status();
        }
        pids.len()
    }

    /// How many connections authenticated so far.
    pub fn logins(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }

    /// How many direct-tcpip channels were asked for so far.
    pub fn tunnels(&self) -> usize {
        self.log().matches("server_request_direct_tcpip").count()
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

/// Every process below `pid`, from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(q) = frontier.pop() {
        for &(p, pp) in &parent_of {
            if pp == q && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

impl Drop for SshServer {
    fn drop(&mut self) {
        self.kill_sessions();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
