//! A fake walsender for hostile-input tests: it completes the startup handshake (trust
//! authentication), then answers each query with whatever bytes the test scripts for it — a
//! crafted BASE_BACKUP stream, XLogData at absurd positions, lies about lengths. It stands in for
//! a *misbehaving* server only; every test of correct behaviour runs against real PostgreSQL.
//!
//! Threads and blocking sockets, so that tests driving the `pgrepl` binary need no runtime.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the server does with a query.
pub type Script = dyn Fn(&str) -> Vec<u8> + Send + Sync;

/// A listener on loopback answering queries by script; stopped on drop.
pub struct FakeServer {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// Every query received, in order (for assertions).
    pub queries: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer")
            .field("port", &self.port)
            .finish()
    }
}

impl FakeServer {
    /// Starts serving; `script` gets each query's text and returns the bytes to send back
    /// (empty: hang up).
    pub fn start(script: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> FakeServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        l.set_nonblocking(true).expect("nonblocking listener");
        let port = l.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (stop2, queries2) = (stop.clone(), queries.clone());
        let accept = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let (script, queries) = (script.clone(), queries2.clone());
                        std::thread::spawn(move || {
                            let _ = serve(s, &*script, &queries);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeServer {
            port,
            stop,
            accept: Some(accept),
            queries,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A conninfo string for it.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=fake dbname=replication sslmode=disable connect_timeout=10",
            self.port
        )
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn read_exact_or_eof(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    match s.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn serve(mut s: TcpStream, script: &Script, queries: &Mutex<Vec<String>>) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    // startup packet (after refusing an SSLRequest or GSSENCRequest)
    loop {
        let mut len = [0u8; 4];
        if !read_exact_or_eof(&mut s, &mut len)? {
            return Ok(());
        }
        let n = u32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; n.saturating_sub(4)];
        s.read_exact(&mut body)?;
        let code = body
            .get(..4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if code == Some(80877103) || code == Some(80877104) {
            s.write_all(b"N")?;
            continue;
        }
        break;
    }
    s.write_all(&msg::session("17.2"))?;
    loop {
        let mut tag = [0u8; 1];
        if !read_exact_or_eof(&mut s, &mut tag)? {
            return Ok(());
        }
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        s.read_exact(&mut body)?;
        match tag[0] {
            b'Q' => {
                let q =
                    String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(&body)).into_owned();
                queries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(q.clone());
                let reply = script(&q);
                if reply.is_empty() {
                    return Ok(());
                }
                s.write_all(&reply)?;
                s.flush()?;
            }
            b'X' => return Ok(()),
            // status updates and the end of a COPY from the client
            _ => {}
        }
    }
}

/// Building backend messages.
pub mod msg {
    /// One message: tag, length, body.
    pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// AuthenticationOk, server_version, BackendKeyData, ReadyForQuery.
    pub fn session(version: &str) -> Vec<u8> {
        let mut s = msg(b'R', &0u32.to_be_bytes());
        s.extend(msg(b'S', format!("server_version\0{version}\0").as_bytes()));
        s.extend(msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
        s.extend(ready());
        s
    }

    /// ReadyForQuery (idle).
    pub fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    /// A result set of text columns, with its CommandComplete.
    pub fn result_set(columns: &[&str], rows: &[Vec<Option<&str>>]) -> Vec<u8> {
        let mut t = (columns.len() as u16).to_be_bytes().to_vec();
        for c in columns {
            t.extend_from_slice(c.as_bytes());
            t.push(0);
            t.extend_from_slice(&0u32.to_be_bytes()); // table
            t.extend_from_slice(&0u16.to_be_bytes()); // attribute
            t.extend_from_slice(&25u32.to_be_bytes()); // text
            t.extend_from_slice(&(-1i16).to_be_bytes());
            t.extend_from_slice(&(-1i32).to_be_bytes());
            t.extend_from_slice(&0u16.to_be_bytes());
        }
        let mut out = msg(b'T', &t);
        for r in rows {
            let mut d = (r.len() as u16).to_be_bytes().to_vec();
            for v in r {
                match v {
                    Some(v) => {
                        d.extend_from_slice(&(v.len() as u32).to_be_bytes());
                        d.extend_from_slice(v.as_bytes());
                    }
                    None => d.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
            out.extend(msg(b'D', &d));
        }
        out.extend(msg(b'C', b"SELECT\0"));
        out
    }

    /// The answer to IDENTIFY_SYSTEM.
    pub fn identify_system(system_id: u64, timeline: u32, xlogpos: &str) -> Vec<u8> {
        let (id, tli) = (system_id.to_string(), timeline.to_string());
        let mut out = result_set(
            &["systemid", "timeline", "xlogpos", "dbname"],
            &[vec![Some(&id), Some(&tli), Some(xlogpos), None]],
        );
        out.extend(ready());
        out
    }

    /// The answer to `SHOW name`.
    pub fn show(name: &str, value: &str) -> Vec<u8> {
        let mut out = result_set(&[name], &[vec![Some(value)]]);
        out.extend(ready());
        out
    }

    /// An ErrorResponse with `code` and `message`, then ReadyForQuery.
    pub fn error(code: &str, message: &str) -> Vec<u8> {
        let mut b = Vec::new();
        for (k, v) in [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', code),
            (b'M', message),
        ] {
            b.push(k);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        let mut out = msg(b'E', &b);
        out.extend(ready());
        out
    }

    /// CopyData.
    pub fn copy_data(body: &[u8]) -> Vec<u8> {
        msg(b'd', body)
    }

    /// CopyBothResponse, as START_REPLICATION answers.
    pub fn copy_both() -> Vec<u8> {
        msg(b'W', &[0, 0, 0])
    }

    /// An XLogData message carrying `data` from `start`, the server's end at `end`.
    pub fn xlogdata(start: u64, end: u64, data: &[u8]) -> Vec<u8> {
        let mut b = vec![b'w'];
        b.extend_from_slice(&start.to_be_bytes());
        b.extend_from_slice(&end.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(data);
        copy_data(&b)
    }

    /// A primary keepalive.
    pub fn keepalive(end: u64, reply: bool) -> Vec<u8> {
        let mut b = vec![b'k'];
        b.extend_from_slice(&end.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes());
        b.push(u8::from(reply));
        copy_data(&b)
    }

    /// An archive of a BASE_BACKUP stream: its name, its tablespace location (empty for the
    /// base archive) and its bytes.
    #[derive(Debug, Clone)]
    pub struct Archive {
        /// `base.tar`, `<oid>.tar`, ...
        pub name: String,
        /// The tablespace location, empty for the data directory.
        pub location: String,
        /// The archive's bytes as sent.
        pub bytes: Vec<u8>,
    }

    /// A whole BASE_BACKUP answer (PostgreSQL 15+ protocol): start position, tablespaces
    /// (oid, location, size in kB), COPY with the archives and the manifest, end position.
    pub fn base_backup(
        start: &str,
        tablespaces: &[(Option<&str>, Option<&str>, Option<&str>)],
        archives: &[Archive],
        manifest: Option<&[u8]>,
        end: &str,
    ) -> Vec<u8> {
        let mut out = result_set(&["recptr", "tli"], &[vec![Some(start), Some("1")]]);
        let rows: Vec<Vec<Option<&str>>> = tablespaces
            .iter()
            .map(|(o, l, s)| vec![*o, *l, *s])
            .collect();
        out.extend(result_set(&["spcoid", "spclocation", "size"], &rows));
        out.extend(msg(b'H', &[0, 0, 0]));
        for a in archives {
            let mut n = vec![b'n'];
            n.extend_from_slice(a.name.as_bytes());
            n.push(0);
            n.extend_from_slice(a.location.as_bytes());
            n.push(0);
            out.extend(copy_data(&n));
            for chunk in a.bytes.chunks(32 * 1024) {
                let mut d = vec![b'd'];
                d.extend_from_slice(chunk);
                out.extend(copy_data(&d));
            }
        }
        if let Some(m) = manifest {
            out.extend(copy_data(b"m"));
            let mut d = vec![b'd'];
            d.extend_from_slice(m);
            out.extend(copy_data(&d));
        }
        out.extend(msg(b'c', b""));
        out.extend(result_set(
            &["recptr", "tli"],
            &[vec![Some(end), Some("1")]],
        ));
        out.extend(ready());
        out
    }
}
