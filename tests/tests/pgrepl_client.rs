//! pgrepl against real PostgreSQL servers: authentication, TLS, every replication command, and
//! hostile servers. Each scenario runs on 17 and 18 (and 15 where cheap).

use std::time::Duration;

use bytes::Bytes;
use pgrepl::{
    AuthError, BaseBackupEvent, BaseBackupOptions, CheckpointMode, Config, Connection,
    CreateSlotOptions, Error, Lsn, ReplicationEvent, StartReplication,
};
use pgrepl_testbed::{Cluster, ClusterOptions, PgVersion, Role, TestCa};
use pgwal::{segment_file_name, TimelineId};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(conninfo: &str) -> Result<Connection, Error> {
    let cfg = Config::from_conninfo(conninfo)?;
    Connection::connect(&cfg).await
}

macro_rules! per_version {
    ($name:ident, $body:ident, [$($v:ident),*]) => {
        mod $name {
            $(
                #[test]
                #[allow(non_snake_case)]
                fn $v() {
                    super::$body(pgrepl_testbed::PgVersion::$v);
                }
            )*
        }
    };
}

// ---------------------------------------------------------------- authentication and TLS

fn authentication(v: PgVersion) {
    let c = Cluster::start(v);
    let rt = rt();
    rt.block_on(async {
        // trust, over TCP and over the Unix socket
        let conn = connect(&c.conninfo(Role::Postgres, "sslmode=disable")).await.unwrap();
        assert!(!conn.is_tls());
        conn.close().await.unwrap();
        let conn = connect(&c.socket_conninfo()).await.unwrap();
        conn.close().await.unwrap();

        // cleartext password, md5 and scram without TLS
        for role in [Role::Cleartext, Role::Md5, Role::Scram] {
            let mut conn = connect(&c.conninfo(role, "sslmode=disable"))
                .await
                .unwrap_or_else(|e| panic!("{role:?}: {e}"));
            conn.identify_system().await.unwrap();
            assert!(!conn.channel_binding_used());
        }

        // wrong password: the server's message, typed
        for role in [Role::Cleartext, Role::Md5, Role::Scram] {
            let bad = format!(
                "host=127.0.0.1 port={} user={} password=wrong sslmode=disable",
                c.port,
                role.name()
            );
            let e = connect(&bad).await.unwrap_err();
            let db = e.as_db_error().unwrap_or_else(|| panic!("{role:?}: {e}"));
            assert_eq!(db.code, "28P01", "{db:?}");
            assert!(
                db.message.contains("password authentication failed"),
                "{db:?}"
            );
        }

        // no password known
        let e = connect(&format!(
            "host=127.0.0.1 port={} user=scram_user sslmode=disable passfile=/nonexistent",
            c.port
        ))
        .await
        .unwrap_err();
        assert!(
            matches!(e, Error::Auth(AuthError::PasswordRequired { .. })),
            "{e:?}"
        );

        // SCRAM over TLS with channel binding required
        let ca = c.ca_cert();
        let tls = format!(
            "host=localhost sslmode=verify-full sslrootcert={} channel_binding=require",
            ca.display()
        );
        let mut conn = connect(&c.conninfo(Role::Scram, &tls).replace("host=127.0.0.1 ", ""))
            .await
            .unwrap();
        assert!(conn.is_tls());
        assert!(conn.channel_binding_used());
        conn.identify_system().await.unwrap();

        // channel_binding=prefer (the default) binds over TLS; disable does not
        let conn = connect(&c.conninfo(Role::Scram, "sslmode=require")).await.unwrap();
        assert!(conn.is_tls() && conn.channel_binding_used());
        let conn = connect(&c.conninfo(Role::Scram, "sslmode=require channel_binding=disable"))
            .await
            .unwrap();
        assert!(conn.is_tls() && !conn.channel_binding_used());

        // channel_binding=require with md5 must fail on our side
        let e = connect(
            &c.conninfo(Role::Md5, "sslmode=require channel_binding=require"),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, Error::Auth(AuthError::ChannelBindingRequired(_))),
            "{e:?}"
        );

        // client certificate
        let (cert, key) = c.client_cert();
        let mut conn = connect(&format!(
            "host=localhost port={} user=cert_user sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            c.port,
            ca.display(),
            cert.display(),
            key.display()
        ))
        .await
        .unwrap();
        assert!(conn.is_tls());
        conn.identify_system().await.unwrap();

        // hostssl-only role: refused in plain, accepted with TLS, and sslmode=allow retries
        let e = connect(&c.conninfo(Role::TlsOnly, "sslmode=disable")).await.unwrap_err();
        assert_eq!(e.code(), Some("28000"), "{e}");
        let conn = connect(&c.conninfo(Role::TlsOnly, "sslmode=allow")).await.unwrap();
        assert!(conn.is_tls());
        let conn = connect(&c.conninfo(Role::TlsOnly, "sslmode=prefer")).await.unwrap();
        assert!(conn.is_tls());
    });
}
per_version!(authentication_methods, authentication, [V15, V17, V18]);

fn tls_verification(v: PgVersion) {
    let c = Cluster::start(v);
    let rt = rt();
    rt.block_on(async {
        let ca = c.ca_cert();
        // verify-full: the server certificate names localhost only
        let ok = format!(
            "host=localhost port={} user=postgres sslmode=verify-full sslrootcert={}",
            c.port,
            ca.display()
        );
        let conn = connect(&ok).await.unwrap();
        assert!(conn.is_tls());
        assert_eq!(conn.alpn_protocol(), Some(&b"postgresql"[..]));

        // host name mismatch
        let mismatch = format!(
            "host=127.0.0.1 port={} user=postgres sslmode=verify-full sslrootcert={}",
            c.port,
            ca.display()
        );
        let e = connect(&mismatch).await.unwrap_err();
        assert!(matches!(e, Error::Tls(_)), "{e:?}");
        assert!(e.to_string().contains("not valid for name"), "{e}");

        // verify-ca does not check the name
        let conn = connect(&mismatch.replace("verify-full", "verify-ca"))
            .await
            .unwrap();
        assert!(conn.is_tls());

        // unknown CA
        let other = pgrepl_testbed::temp_dir("ca");
        TestCa::new("someone else").write_cert(&other.join("root.crt"));
        let e = connect(&format!(
            "host=localhost port={} user=postgres sslmode=verify-full sslrootcert={}",
            c.port,
            other.join("root.crt").display()
        ))
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Tls(_)), "{e:?}");
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        std::fs::remove_dir_all(&other).unwrap();

        // verify-full without any root certificate is refused before connecting
        let e = connect(&format!(
            "host=localhost port={} user=postgres sslmode=verify-full",
            c.port
        ))
        .await
        .unwrap_err();
        assert!(e.to_string().contains("root certificate"), "{e}");

        if v >= PgVersion::V17 {
            // direct TLS (no SSLRequest), ALPN "postgresql"
            let conn = connect(&format!("{ok} sslnegotiation=direct"))
                .await
                .unwrap();
            assert!(conn.is_tls());
            assert_eq!(conn.alpn_protocol(), Some(&b"postgresql"[..]));
        }
    });

    // sslmode=require against a server without TLS
    let plain = Cluster::start_with(
        v,
        ClusterOptions {
            ssl: false,
            ..Default::default()
        },
    );
    rt.block_on(async {
        let e = connect(&plain.conninfo(Role::Postgres, "sslmode=require"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("server does not support SSL"), "{e}");
        // prefer falls back to plain
        let conn = connect(&plain.conninfo(Role::Postgres, "sslmode=prefer"))
            .await
            .unwrap();
        assert!(!conn.is_tls());
    });
}
per_version!(tls, tls_verification, [V17, V18]);

// ---------------------------------------------------------------- commands

fn slots_and_identify(v: PgVersion) {
    let c = Cluster::start(v);
    rt().block_on(async {
        let mut conn = connect(&c.conninfo(Role::Postgres, "sslmode=disable"))
            .await
            .unwrap();
        let id = conn.identify_system().await.unwrap();
        assert_eq!(
            id.system_id.to_string(),
            c.psql("SELECT system_identifier FROM pg_control_system()")
        );
        assert_eq!(
            id.timeline.0.to_string(),
            c.psql("SELECT timeline_id FROM pg_control_checkpoint()")
        );
        assert_eq!(id.dbname, None);
        assert_eq!(conn.show("wal_level").await.unwrap(), "replica");
        assert_eq!(conn.wal_segment_size().await.unwrap().bytes(), 16 << 20);

        let created = conn
            .create_physical_slot(
                "pgrepl_slot",
                CreateSlotOptions {
                    temporary: false,
                    reserve_wal: true,
                },
            )
            .await
            .unwrap();
        assert_eq!(created.name, "pgrepl_slot");
        // physical slots report no consistent point
        assert_eq!(created.consistent_point, None);
        let server_restart: Lsn = c
            .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pgrepl_slot'")
            .parse()
            .unwrap();
        assert!(
            server_restart.is_valid(),
            "RESERVE_WAL reserves WAL at once"
        );

        let info = conn
            .read_replication_slot("pgrepl_slot")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.slot_type, "physical");
        assert_eq!(info.restart_lsn, Some(server_restart));
        assert_eq!(info.restart_tli, Some(TimelineId(1)));
        assert_eq!(
            conn.read_replication_slot("no_such_slot").await.unwrap(),
            None
        );

        // creating it again: the server's error, and the connection stays usable
        let e = conn
            .create_physical_slot("pgrepl_slot", CreateSlotOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("42710"), "{e}");

        conn.drop_replication_slot("pgrepl_slot", false)
            .await
            .unwrap();
        assert_eq!(c.psql("SELECT count(*) FROM pg_replication_slots"), "0");
        let e = conn
            .drop_replication_slot("pgrepl_slot", false)
            .await
            .unwrap_err();
        let db = e.as_db_error().unwrap();
        assert_eq!(
            db.message,
            "replication slot \"pgrepl_slot\" does not exist"
        );

        // names are validated before anything is sent
        assert!(conn.read_replication_slot("x\"; DROP").await.is_err());
        conn.identify_system().await.unwrap();

        // a temporary slot disappears with the session
        conn.create_physical_slot(
            "tmp_slot",
            CreateSlotOptions {
                temporary: true,
                reserve_wal: true,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            c.psql("SELECT temporary FROM pg_replication_slots WHERE slot_name = 'tmp_slot'"),
            "t"
        );
        conn.close().await.unwrap();
        for _ in 0..100 {
            if c.psql("SELECT count(*) FROM pg_replication_slots") == "0" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("temporary slot survived its session");
    });
}
per_version!(slots, slots_and_identify, [V15, V17, V18]);

fn stream_a_segment(v: PgVersion) {
    let c = Cluster::start(v);
    rt().block_on(async {
        let mut conn = connect(&c.conninfo(Role::Postgres, "sslmode=disable"))
            .await
            .unwrap();
        let seg_size = conn.wal_segment_size().await.unwrap();
        conn.create_physical_slot(
            "stream_slot",
            CreateSlotOptions {
                temporary: false,
                reserve_wal: true,
            },
        )
        .await
        .unwrap();
        let id = conn.identify_system().await.unwrap();
        let seg = id.xlogpos.segment(seg_size);
        let seg_start = seg.start_lsn(seg_size).unwrap();
        let seg_end = seg.next().start_lsn(seg_size).unwrap();

        let mut stream = conn
            .start_replication(&StartReplication {
                slot: Some("stream_slot".into()),
                start: seg_start,
                timeline: Some(id.timeline),
            })
            .await
            .unwrap();

        // make WAL, then finish the segment
        c.psql("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
        let switch: Lsn = c.psql("SELECT pg_switch_wal()").parse().unwrap();
        assert!(
            switch < seg_end,
            "the test expects the switch in the first segment"
        );

        let mut buf = vec![0u8; seg_size.bytes() as usize];
        let mut received_to = seg_start;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while received_to < seg_end {
            let ev = tokio::time::timeout_at(deadline, stream.next())
                .await
                .expect("timed out waiting for WAL")
                .unwrap()
                .expect("stream ended early");
            match ev {
                ReplicationEvent::XLogData(x) => {
                    assert_eq!(
                        x.wal_start, received_to,
                        "WAL must arrive in order, gap-free"
                    );
                    let off = x.wal_start.checked_sub(seg_start).unwrap() as usize;
                    let n = x.data.len().min(buf.len() - off);
                    buf[off..off + n].copy_from_slice(&x.data[..n]);
                    received_to = x.data_end();
                }
                ReplicationEvent::Keepalive(k) => {
                    if k.reply_requested {
                        stream
                            .send_status(received_to, Lsn::INVALID, Lsn::INVALID, false)
                            .await
                            .unwrap();
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let name = segment_file_name(id.timeline, seg, seg_size);
        let server_file = std::fs::read(c.data.join("pg_wal").join(&name)).unwrap();
        assert_eq!(server_file.len(), buf.len());
        assert!(
            server_file == buf,
            "segment {name} differs from the server's pg_wal file"
        );

        // report it flushed: the slot and pg_stat_replication follow
        stream
            .send_status(seg_end, seg_end, Lsn::INVALID, true)
            .await
            .unwrap();
        let mut ok = false;
        for _ in 0..100 {
            let restart = c.psql(
                "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'stream_slot'",
            );
            let flush = c.psql("SELECT flush_lsn FROM pg_stat_replication");
            if restart == seg_end.to_string() && flush == seg_end.to_string() {
                ok = true;
                break;
            }
            // keep reading so the walsender is never blocked on us
            let _ = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        }
        assert!(ok, "slot restart_lsn / flush_lsn did not reach {seg_end}");

        // a clean end, and the connection is usable again
        assert_eq!(stream.finish().await.unwrap(), None);
        let again = conn.identify_system().await.unwrap();
        assert!(again.xlogpos >= seg_end);
    });
}
per_version!(start_replication, stream_a_segment, [V15, V17, V18]);

fn start_replication_errors(v: PgVersion) {
    let c = Cluster::start(v);
    rt().block_on(async {
        let mut conn = connect(&c.conninfo(Role::Postgres, "sslmode=disable"))
            .await
            .unwrap();
        let e = conn
            .start_replication(&StartReplication {
                slot: Some("missing".into()),
                start: Lsn(0x1000000),
                timeline: None,
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.as_db_error().unwrap().message,
            "replication slot \"missing\" does not exist"
        );
        // ahead of the flush position: the error arrives after CopyBothResponse
        let id = conn.identify_system().await.unwrap();
        let ahead = Lsn(id.xlogpos.0 + (64 << 20));
        let res = conn
            .start_replication(&StartReplication {
                slot: None,
                start: ahead,
                timeline: None,
            })
            .await;
        let e = match res {
            Err(e) => e,
            Ok(mut s) => s.next().await.unwrap_err(),
        };
        assert!(
            e.to_string().contains("ahead of the WAL flush position"),
            "{e}"
        );
    });
}
per_version!(
    start_replication_errors,
    start_replication_errors,
    [V17, V18]
);

struct Collected {
    events: Vec<BaseBackupEvent>,
    archives: Vec<(String, Option<String>, u64)>,
    manifest: Vec<u8>,
    estimate_kb: u64,
}

async fn collect(conn: &mut Connection, opts: &BaseBackupOptions) -> Result<Collected, Error> {
    let mut stream = conn.base_backup(opts).await?;
    let mut out = Collected {
        events: Vec::new(),
        archives: Vec::new(),
        manifest: Vec::new(),
        estimate_kb: 0,
    };
    while let Some(ev) = stream.next().await? {
        match &ev {
            BaseBackupEvent::ArchiveStart {
                name,
                tablespace_location,
            } => out
                .archives
                .push((name.clone(), tablespace_location.clone(), 0)),
            BaseBackupEvent::ArchiveData(d) => out.archives.last_mut().unwrap().2 += d.len() as u64,
            BaseBackupEvent::ManifestData(d) => out.manifest.extend_from_slice(d),
            BaseBackupEvent::Tablespaces(ts) => {
                out.estimate_kb = ts.iter().filter_map(|t| t.size_kb).sum()
            }
            _ => {}
        }
        // keep the small events only
        if !matches!(
            ev,
            BaseBackupEvent::ArchiveData(_) | BaseBackupEvent::ManifestData(_)
        ) {
            out.events.push(ev);
        }
    }
    Ok(out)
}

fn base_backup_events(v: PgVersion) {
    let c = Cluster::start(v);
    let ts_dir = c.create_tablespace("ts1");
    c.psql("CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g FROM generate_series(1, 10000) g");
    let ts_oid: u32 = c
        .psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'")
        .parse()
        .unwrap();
    rt().block_on(async {
        let mut conn = connect(&c.conninfo(Role::Postgres, "sslmode=disable")).await.unwrap();
        let opts = BaseBackupOptions {
            label: "it's a test".into(),
            checkpoint: CheckpointMode::Fast,
            wait: true, // makes the server send its "WAL archiving is not enabled" NOTICE
            ..Default::default()
        };
        let got = collect(&mut conn, &opts).await.unwrap();
        let BaseBackupEvent::Started { start_lsn, timeline } = got.events[0] else {
            panic!("first event {:?}", got.events[0])
        };
        assert_eq!(timeline, TimelineId(1));
        let BaseBackupEvent::Tablespaces(ts) = &got.events[1] else {
            panic!("second event {:?}", got.events[1])
        };
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[0].oid, Some(ts_oid));
        assert_eq!(ts[0].location.as_deref(), Some(ts_dir.to_str().unwrap()));
        assert_eq!((ts[1].oid, ts[1].location.as_ref()), (None, None));
        let names: Vec<&str> = got.archives.iter().map(|a| a.0.as_str()).collect();
        assert_eq!(names, [format!("{ts_oid}.tar").as_str(), "base.tar"]);
        assert_eq!(got.archives[0].1.as_deref(), Some(ts_dir.to_str().unwrap()));
        assert_eq!(got.archives[1].1, None);
        let total: u64 = got.archives.iter().map(|a| a.2).sum();
        let estimate = got.estimate_kb * 1024;
        assert!(
            total as f64 > estimate as f64 * 0.8 && (total as f64) < estimate as f64 * 1.25,
            "archive bytes {total} far from the server's estimate {estimate}"
        );
        let manifest = String::from_utf8(got.manifest.clone()).unwrap();
        assert!(manifest.starts_with("{ \"PostgreSQL-Backup-Manifest-Version\""), "{manifest:.80}");
        assert!(manifest.contains("\"Path\": \"backup_label\""));
        assert!(got.events.iter().any(|e| matches!(e, BaseBackupEvent::ManifestStart)));
        assert!(got.events.iter().any(|e| matches!(e, BaseBackupEvent::Progress(_))));
        assert!(
            got.events.iter().any(|e| matches!(e, BaseBackupEvent::Notice(n) if n.message.contains("WAL archiving is not enabled"))),
            "the server's NOTICE must reach the caller: {:?}",
            got.events
        );
        let BaseBackupEvent::Finished { end_lsn, timeline: end_tli } = *got.events.last().unwrap()
        else {
            panic!("last event {:?}", got.events.last())
        };
        assert!(end_lsn >= start_lsn);
        assert_eq!(end_tli, TimelineId(1));

        // the connection is reusable after the backup
        conn.identify_system().await.unwrap();

        // a server error before COPY (bad MAX_RATE) is typed and leaves the connection usable
        let e = collect(
            &mut conn,
            &BaseBackupOptions {
                max_rate_kb: Some(1),
                ..Default::default()
            },
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.code(), Some("22003"), "{e}");
        conn.identify_system().await.unwrap();

        if v >= PgVersion::V17 {
            // INCREMENTAL without UPLOAD_MANIFEST
            let e = collect(
                &mut conn,
                &BaseBackupOptions {
                    incremental: true,
                    ..Default::default()
                },
            )
            .await
            .err()
            .unwrap();
            assert!(
                e.to_string().contains("must UPLOAD_MANIFEST before performing an incremental BASE_BACKUP"),
                "{e}"
            );

            // UPLOAD_MANIFEST then INCREMENTAL on the same connection
            c.psql("INSERT INTO in_ts SELECT g FROM generate_series(1, 1000) g");
            let sent = conn.upload_manifest(&got.manifest[..]).await.unwrap();
            assert_eq!(sent, got.manifest.len() as u64);
            let inc = collect(
                &mut conn,
                &BaseBackupOptions {
                    incremental: true,
                    checkpoint: CheckpointMode::Fast,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let inc_manifest = String::from_utf8(inc.manifest).unwrap();
            assert!(
                inc_manifest.contains("INCREMENTAL."),
                "an incremental backup lists INCREMENTAL files"
            );
            let inc_total: u64 = inc.archives.iter().map(|a| a.2).sum();
            assert!(inc_total < total, "incremental {inc_total} not smaller than full {total}");

            // a manifest from another cluster: the server's error
            let mut bad = got.manifest.clone();
            let text = String::from_utf8_lossy(&bad).into_owned();
            let bogus = text.replacen("\"System-Identifier\": ", "\"System-Identifier\": 1", 1);
            bad.clear();
            bad.extend_from_slice(bogus.as_bytes());
            let e = conn.upload_manifest(&bad[..]).await.unwrap_err();
            assert!(e.as_db_error().is_some(), "{e}");
            conn.identify_system().await.unwrap();
        }
    });
}
per_version!(base_backup, base_backup_events, [V15, V17, V18]);

// ---------------------------------------------------------------- hostile servers

/// A listener on loopback that answers the first connection with `script` (after reading the
/// startup packet) and then hangs up.
async fn hostile(script: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b).await;
        let _ = s.write_all(&script).await;
        let _ = s.flush().await;
        // read whatever the client sends next (a query), then hang up
        let _ = tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await;
    });
    format!("host=127.0.0.1 port={port} user=u sslmode=disable connect_timeout=10")
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn ready_session() -> Vec<u8> {
    let mut s = msg(b'R', &0u32.to_be_bytes());
    s.extend(msg(b'S', b"server_version\x0017.2\x00"));
    s.extend(msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
    s.extend(msg(b'Z', b"I"));
    s
}

#[test]
fn hostile_servers_give_typed_errors() {
    rt().block_on(async {
        // garbage instead of an authentication request
        let e = connect(&hostile(b"\x01\x00\x00\x00\x09garbage".to_vec()).await)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Protocol {
                    state: "authentication",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("unknown message type"), "{e}");

        // a length beyond any sane bound: refused before allocating, also for lengths that would
        // be acceptable later in the session
        for len in [0x7fff_ffffu32, 0x0200_0000] {
            let mut s = vec![b'R'];
            s.extend_from_slice(&len.to_be_bytes());
            let e = connect(&hostile(s).await).await.unwrap_err();
            assert!(e.to_string().contains("declares length"), "{e}");
        }

        // hang-up in the middle of a frame
        let e = connect(&hostile(b"R\x00\x00\x00\x08\x00".to_vec()).await)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Closed {
                    state: "authentication"
                }
            ),
            "{e:?}"
        );

        // a server that accepts and then says nothing: connect_timeout ends the wait
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let started = std::time::Instant::now();
        let e = connect(&format!(
            "host=127.0.0.1 port={port} user=u sslmode=disable connect_timeout=2"
        ))
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Timeout("connect")), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        silent.abort();

        // an unsupported authentication method
        let e = connect(&hostile(msg(b'R', &7u32.to_be_bytes())).await)
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::Auth(AuthError::UnsupportedMethod(_))),
            "{e:?}"
        );

        // a malformed IDENTIFY_SYSTEM answer: too few columns
        let mut s = ready_session();
        let mut t = vec![0, 1];
        t.extend_from_slice(b"systemid\0");
        t.extend_from_slice(&[0; 18]);
        s.extend(msg(b'T', &t));
        s.extend(msg(b'D', &[0, 1, 0, 0, 0, 1, b'1']));
        s.extend(msg(b'C', b"IDENTIFY_SYSTEM\0"));
        s.extend(msg(b'Z', b"I"));
        let mut conn = connect(&hostile(s).await).await.unwrap();
        let e = conn.identify_system().await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Protocol {
                    state: "IDENTIFY_SYSTEM",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("1 columns, expected 4"), "{e}");

        // a truncated XLogData inside the replication stream, then a hang-up
        let mut s = ready_session();
        s.extend(msg(b'W', &[0, 0, 0]));
        s.extend(msg(b'd', b"w\x00\x00\x00\x00"));
        let mut conn = connect(&hostile(s).await).await.unwrap();
        let mut stream = conn
            .start_replication(&StartReplication {
                slot: None,
                start: Lsn(0),
                timeline: None,
            })
            .await
            .unwrap();
        let e = stream.next().await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Protocol {
                    state: "START_REPLICATION streaming",
                    ..
                }
            ),
            "{e:?}"
        );

        // hang-up in the middle of a BASE_BACKUP copy
        let mut s = ready_session();
        s.extend(msg(b'T', &[0, 0]));
        s.extend(msg(
            b'D',
            &[0, 2, 0, 0, 0, 3, b'0', b'/', b'1', 0, 0, 0, 1, b'1'],
        ));
        s.extend(msg(b'C', b"SELECT\0"));
        s.extend(msg(b'T', &[0, 0]));
        s.extend(msg(b'C', b"SELECT\0"));
        s.extend(msg(b'H', &[0, 0, 0]));
        s.extend(msg(b'd', b"nbase.tar\0\0"));
        s.extend(msg(b'd', b"dsome tar bytes"));
        let mut conn = connect(&hostile(s).await).await.unwrap();
        let mut bb = conn
            .base_backup(&BaseBackupOptions::default())
            .await
            .unwrap();
        let mut seen = Vec::new();
        let e = loop {
            match bb.next().await {
                Ok(Some(ev)) => seen.push(ev),
                Ok(None) => panic!("stream ended cleanly after a hang-up"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                e,
                Error::Closed {
                    state: "BASE_BACKUP copy"
                }
            ),
            "{e:?}"
        );
        assert!(
            seen.contains(&BaseBackupEvent::ArchiveData(Bytes::from_static(
                b"some tar bytes"
            )))
        );
        assert!(!seen
            .iter()
            .any(|e| matches!(e, BaseBackupEvent::Finished { .. })));
    });
}

// ---------------------------------------------------------------- timelines

fn timeline_switch(v: PgVersion) {
    let primary = Cluster::start(v);
    primary.psql("CREATE TABLE before_promote AS SELECT 1 AS x");
    let standby = primary.standby();
    standby.promote();
    standby.psql("CREATE TABLE after_promote AS SELECT 2 AS x");
    let history_on_disk = std::fs::read(standby.data.join("pg_wal/00000002.history")).unwrap();
    // "1\t0/3000060\tno recovery target specified\n"
    let text = String::from_utf8(history_on_disk.clone()).unwrap();
    let switch: Lsn = text.split('\t').nth(1).unwrap().parse().unwrap();

    rt().block_on(async {
        let mut conn = connect(&standby.conninfo(Role::Postgres, "sslmode=disable"))
            .await
            .unwrap();
        let id = conn.identify_system().await.unwrap();
        assert_eq!(id.timeline, TimelineId(2));
        let h = conn.timeline_history(TimelineId(2)).await.unwrap();
        assert_eq!(h.file_name, "00000002.history");
        assert_eq!(&h.content[..], &history_on_disk[..]);

        // stream the old timeline: WAL up to the switch point, then the typed end
        let seg_size = conn.wal_segment_size().await.unwrap();
        let start = switch.segment_start(seg_size);
        let mut stream = conn
            .start_replication(&StartReplication {
                slot: None,
                start,
                timeline: Some(TimelineId(1)),
            })
            .await
            .unwrap();
        let mut received = start;
        let end = loop {
            let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .expect("timed out")
                .unwrap()
                .expect("stream ended without EndOfTimeline");
            match ev {
                ReplicationEvent::XLogData(x) => {
                    assert_eq!(x.wal_start, received);
                    received = x.data_end();
                }
                ReplicationEvent::EndOfTimeline {
                    next_timeline,
                    next_timeline_start,
                } => break (next_timeline, next_timeline_start),
                ReplicationEvent::Keepalive(_) | ReplicationEvent::Notice(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(end, (TimelineId(2), switch));
        assert!(
            received >= switch,
            "got WAL up to {received}, switch at {switch}"
        );
        assert_eq!(stream.next().await.unwrap(), None);
        drop(stream);

        // the connection is back in sync
        assert_eq!(
            conn.identify_system().await.unwrap().timeline,
            TimelineId(2)
        );

        // asking exactly at the end of the old timeline skips COPY: the end comes at once
        let mut stream = conn
            .start_replication(&StartReplication {
                slot: None,
                start: switch,
                timeline: Some(TimelineId(1)),
            })
            .await
            .unwrap();
        assert_eq!(
            stream.next().await.unwrap(),
            Some(ReplicationEvent::EndOfTimeline {
                next_timeline: TimelineId(2),
                next_timeline_start: switch
            })
        );
        assert_eq!(stream.next().await.unwrap(), None);
        drop(stream);
        conn.identify_system().await.unwrap();
    });
}
per_version!(timelines, timeline_switch, [V17, V18]);

fn cancelled_reads_lose_nothing(v: PgVersion) {
    // next() raced against a branch that is ready at once: every byte still arrives in order.
    // The WAL is written while the stream waits for it, so that reads do wait (and get
    // cancelled) rather than find everything already buffered.
    let c = std::sync::Arc::new(Cluster::start(v));
    rt().block_on(async {
        let mut conn = connect(&c.conninfo(Role::Postgres, "sslmode=disable"))
            .await
            .unwrap();
        let id = conn.identify_system().await.unwrap();
        let seg_size = conn.wal_segment_size().await.unwrap();
        let start = id.xlogpos.segment_start(seg_size);
        let mut stream = conn
            .start_replication(&StartReplication {
                slot: None,
                start,
                timeline: None,
            })
            .await
            .unwrap();
        let mut writer = Some({
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    c.psql(&format!(
                        "CREATE TABLE t{i} AS SELECT g FROM generate_series(1, 5000) g"
                    ));
                }
                c.psql("SELECT pg_switch_wal()").parse::<Lsn>().unwrap()
            })
        });
        let mut switch: Option<Lsn> = None;
        let mut received = start;
        let mut cancelled = 0u32;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while switch.is_none_or(|s| received <= s) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out at {received}"
            );
            if writer.as_ref().is_some_and(|w| w.is_finished()) {
                switch = writer.take().map(|w| w.join().expect("the writer thread"));
            }
            tokio::select! {
                ev = stream.next() => {
                    if let Some(ReplicationEvent::XLogData(x)) = ev.unwrap() {
                        assert_eq!(x.wal_start, received, "a cancelled read lost or repeated WAL");
                        received = x.data_end();
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(1)) => cancelled += 1,
            }
        }
        assert!(cancelled > 0, "the race never cancelled a read");
        stream.finish().await.unwrap();
    });
}
per_version!(cancel_safety, cancelled_reads_lose_nothing, [V18]);
