//! The online library against real servers: a backup whose sink is slow does not starve the
//! WAL stream beside it, the futures and types are Send, cancelling a backup cleans up, and a
//! failing sink is reported over the WAL stream its abort stopped.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basebackup::checksum::ChecksumKind;
use basebackup::sink::{
    ArchiveInfo, BackupEnd, BackupSink, DirectorySink, SinkError, Tee, VerifySink,
};
use basebackup::tar::EntryHeader;
use pgrepl::BaseBackupOptions;
use pgrepl_testbed::{temp_dir, tool, Cluster, ClusterOptions, PgVersion, Role};
use pgstream::{take_backup, take_backup_until, BackupError, SlotChoice, WalMethod};

fn rt() -> tokio::runtime::Runtime {
    // one thread, as the CLI runs: a sink that blocked it would starve the WAL stream's task
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A sink that sleeps at every entry, in front of a real one.
#[derive(Debug)]
struct Slow<S> {
    inner: S,
    pause: Duration,
}

impl<S: BackupSink> BackupSink for Slow<S> {
    fn archive_begin(&mut self, a: &ArchiveInfo) -> Result<(), SinkError> {
        self.inner.archive_begin(a)
    }
    fn entry_begin(&mut self, e: &EntryHeader) -> Result<(), SinkError> {
        std::thread::sleep(self.pause);
        self.inner.entry_begin(e)
    }
    fn entry_data(&mut self, d: &[u8]) -> Result<(), SinkError> {
        self.inner.entry_data(d)
    }
    fn entry_end(&mut self) -> Result<(), SinkError> {
        self.inner.entry_end()
    }
    fn archive_end(&mut self) -> Result<(), SinkError> {
        self.inner.archive_end()
    }
    fn manifest(&mut self, c: &[u8]) -> Result<(), SinkError> {
        self.inner.manifest(c)
    }
    fn wal_dir(&mut self) -> Result<Option<std::path::PathBuf>, SinkError> {
        self.inner.wal_dir()
    }
    fn wal_done(&mut self) -> Result<(), SinkError> {
        self.inner.wal_done()
    }
    fn finish(&mut self, end: &BackupEnd) -> Result<(), SinkError> {
        self.inner.finish(end)
    }
    fn abort(&mut self) {
        self.inner.abort()
    }
}

fn stream_method(c: &Cluster, system_id: u64) -> WalMethod {
    WalMethod::Stream {
        slot: SlotChoice::Temporary,
        config: Box::new(
            pgrepl::Config::from_conninfo(&c.conninfo(Role::Postgres, "sslmode=disable")).unwrap(),
        ),
        system_id,
        sync: false,
        status_interval: Some(Duration::from_secs(1)),
    }
}

#[test]
fn a_slow_sink_does_not_starve_the_wal_stream() {
    let c = Arc::new(Cluster::start_with(
        PgVersion::V18,
        ClusterOptions {
            conf: vec!["wal_sender_timeout = 5s".into()],
            ..Default::default()
        },
    ));
    let work = temp_dir("slow-sink");
    let target = work.join("backup");
    // WAL keeps coming while the backup runs, so the stream has work throughout
    let load = {
        let c = c.clone();
        std::thread::spawn(move || {
            c.psql("CREATE TABLE t (x int)");
            let until = Instant::now() + Duration::from_secs(14);
            while Instant::now() < until {
                c.psql("INSERT INTO t SELECT generate_series(1, 2000)");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let began = Instant::now();
    let summary = rt().block_on(async {
        let config =
            pgrepl::Config::from_conninfo(&c.conninfo(Role::Postgres, "sslmode=disable")).unwrap();
        let mut conn = pgrepl::Connection::connect(&config).await.unwrap();
        let id = conn.identify_system().await.unwrap();
        let dir = DirectorySink::new(&target, Vec::new(), false).unwrap();
        // about 1000 entries × 15 ms: three times wal_sender_timeout
        let sink = Tee(
            VerifySink::new(ChecksumKind::Crc32c, Some(id.system_id)),
            Slow {
                inner: dir,
                pause: Duration::from_millis(15),
            },
        );
        let (summary, _) = take_backup(
            &mut conn,
            &BaseBackupOptions {
                checkpoint: pgrepl::CheckpointMode::Fast,
                ..Default::default()
            },
            &stream_method(&c, id.system_id),
            sink,
            |_| {},
        )
        .await
        .expect("the backup succeeds although its sink is slow");
        summary
    });
    load.join().unwrap();
    let took = began.elapsed();
    assert!(
        took > Duration::from_secs(10),
        "the sink was not slow enough to test anything ({took:?})"
    );
    // the WAL stream kept going: the backup's WAL is there, and PostgreSQL's tool accepts it
    assert!(summary.end_lsn > summary.start_lsn);
    let segments = std::fs::read_dir(target.join("pg_wal"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().len() == 24)
        .count();
    assert!(segments >= 1, "no WAL segment was streamed");
    let out = std::process::Command::new(tool("pg_verifybackup"))
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&work).unwrap();
}

/// Types a manager shares between tasks, and the futures it spawns, are Send (and Sync where
/// they are shared).
#[test]
fn public_types_and_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<pgrepl::Config>();
    send_sync::<pgrepl::Error>();
    send_sync::<pgstream::BackupSummary>();
    send_sync::<pgstream::BackupError>();
    send_sync::<pgstream::ReceiveError>();
    send_sync::<pgstream::ReceiveOptions>();
    send_sync::<pgstream::WalMethod>();
    send_sync::<basebackup::manifest::Manifest>();
    send_sync::<basebackup::sink::SinkError>();
    send_sync::<basebackup::combine::CombineError>();
    send_sync::<walarchive::WriteError>();
    send_sync::<walarchive::FetchError>();
    send_sync::<pgwal::receiver::Receiver>();
    send_sync::<pgwal::WalError>();
    fn sink_is_send<S: BackupSink>() {}
    sink_is_send::<DirectorySink>();
    // the futures themselves (built, never run)
    let config = pgrepl::Config::from_conninfo("host=127.0.0.1 port=1 user=x").unwrap();
    let opts = pgstream::ReceiveOptions::new("/nonexistent");
    send(&pgstream::receive_wal(
        &config,
        &opts,
        std::future::pending(),
        |_| {},
    ));
    send(&async {
        let mut conn = pgrepl::Connection::connect(&config).await?;
        let dir = DirectorySink::new(Path::new("/nonexistent/x"), Vec::new(), false)?;
        take_backup(
            &mut conn,
            &BaseBackupOptions::default(),
            &WalMethod::None,
            dir,
            |_| {},
        )
        .await?;
        Ok::<(), BackupError>(())
    });
}

/// take_backup_until: cancelled in the middle, the backup fails with Cancelled only after the
/// sink removed what it wrote, and the server dropped the temporary slot.
#[test]
fn a_cancelled_backup_leaves_nothing() {
    let c = Cluster::start(PgVersion::V18);
    c.pgbench_init(5);
    let work = temp_dir("cancelled");
    let target = work.join("backup");
    let r = rt().block_on(async {
        let config =
            pgrepl::Config::from_conninfo(&c.conninfo(Role::Postgres, "sslmode=disable")).unwrap();
        let mut conn = pgrepl::Connection::connect(&config).await.unwrap();
        let id = conn.identify_system().await.unwrap();
        let dir = DirectorySink::new(&target, Vec::new(), false).unwrap();
        let sink = Slow {
            inner: dir,
            pause: Duration::from_millis(5),
        };
        take_backup_until(
            &mut conn,
            &BaseBackupOptions {
                checkpoint: pgrepl::CheckpointMode::Fast,
                max_rate_kb: Some(32),
                ..Default::default()
            },
            &stream_method(&c, id.system_id),
            sink,
            tokio::time::sleep(Duration::from_secs(3)),
            |_| {},
        )
        .await
    });
    assert!(matches!(r, Err(BackupError::Cancelled)), "{r:?}");
    assert!(!target.exists());
    let names: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.is_empty(), "left behind: {names:?}");
    // the WAL stream's temporary slot goes with its connection
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.psql("SELECT count(*) FROM pg_replication_slots") != "0" {
        assert!(Instant::now() < deadline, "the temporary slot stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_dir_all(&work).unwrap();
}

/// A sink that fails at the first archive, and whose abort removes the directory that streamed
/// WAL goes to and makes the server switch segments, so that the WAL stream fails too (as a
/// repository sink's spool does) before the sink's thread has reported.
struct FailsFirst {
    inner: DirectorySink,
    cluster: Arc<Cluster>,
    wal: Option<std::path::PathBuf>,
}

impl BackupSink for FailsFirst {
    // no archive begins, so no entry, manifest or end ever reaches it
    fn archive_begin(&mut self, _: &ArchiveInfo) -> Result<(), SinkError> {
        Err(SinkError::new("the store refused the first object"))
    }
    fn archive_end(&mut self) -> Result<(), SinkError> {
        Err(SinkError::new("no archive began"))
    }
    fn wal_dir(&mut self) -> Result<Option<std::path::PathBuf>, SinkError> {
        let d = self.inner.wal_dir()?;
        self.wal = d.clone();
        Ok(d)
    }
    fn finish(&mut self, _: &BackupEnd) -> Result<(), SinkError> {
        Err(SinkError::new("no archive began"))
    }
    fn abort(&mut self) {
        if let Some(d) = &self.wal {
            let _ = std::fs::remove_dir_all(d);
        }
        self.cluster.psql("SELECT pg_switch_wal()");
        std::thread::sleep(Duration::from_secs(2));
        self.inner.abort()
    }
}

/// When the sink fails and its abort takes the WAL stream down with it, the backup fails with
/// the sink's error (the cause), not with the WAL stream's.
#[test]
fn a_failing_sink_is_reported_over_the_wal_stream_it_stopped() {
    let c = Arc::new(Cluster::start(PgVersion::V18));
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 100000) AS x");
    let work = temp_dir("failing-sink");
    let target = work.join("backup");
    let r = rt().block_on(async {
        let config =
            pgrepl::Config::from_conninfo(&c.conninfo(Role::Postgres, "sslmode=disable")).unwrap();
        let mut conn = pgrepl::Connection::connect(&config).await.unwrap();
        let id = conn.identify_system().await.unwrap();
        let sink = FailsFirst {
            inner: DirectorySink::new(&target, Vec::new(), false).unwrap(),
            cluster: c.clone(),
            wal: None,
        };
        take_backup(
            &mut conn,
            &BaseBackupOptions {
                checkpoint: pgrepl::CheckpointMode::Fast,
                // slow, so that the backup waits on the server when the WAL stream fails
                max_rate_kb: Some(32),
                ..Default::default()
            },
            &stream_method(&c, id.system_id),
            sink,
            |_| {},
        )
        .await
    });
    match r {
        Err(BackupError::Sink(e)) => assert!(
            e.to_string().contains("the store refused the first object"),
            "{e}"
        ),
        Err(other) => panic!("expected the sink's error, got {other}"),
        Ok(_) => panic!("the backup succeeded although its sink failed"),
    }
    assert!(!target.exists());
    std::fs::remove_dir_all(&work).unwrap();
}
