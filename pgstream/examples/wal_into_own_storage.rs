//! WAL streamed into storage of your own, with honest flush feedback: the server is told a
//! position is flushed only after the storage made it durable, so a replication slot never
//! releases WAL your storage could still lose.
//!
//! The "storage" here is one append-only file per timeline, fsynced once a second; yours may be
//! an object store or a database. The receiver ([`pgwal::receiver::Receiver`]) checks what the
//! server sends (continuity, every page header, timeline switches) before it is handed to you.
//!
//!   cargo run -p pgstream --example wal_into_own_storage -- CONNINFO STORE_DIR SLOT STOP_LSN
//!
//! Streams from the start of the slot's restart_lsn segment (or the server's current segment)
//! up to STOP_LSN, then prints what is durable.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgrepl::{Connection, Lsn, ReplicationEvent, StartReplication, TimelineId};
use pgwal::receiver::Receiver;

/// Append-only files, one per timeline, named after the timeline and their first LSN.
struct Store {
    dir: PathBuf,
    file: Option<(TimelineId, File)>,
}

impl Store {
    fn append(&mut self, tli: TimelineId, start: Lsn, data: &[u8]) -> std::io::Result<()> {
        if self.file.as_ref().map(|(t, _)| *t) != Some(tli) {
            let name = format!("{:08X}-{:016X}.wal", tli.0, start.0);
            let f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.dir.join(name))?;
            self.file = Some((tli, f));
        }
        self.file
            .as_mut()
            .map_or(Ok(()), |(_, f)| f.write_all(data))
    }

    fn make_durable(&mut self) -> std::io::Result<()> {
        if let Some((_, f)) = &self.file {
            f.sync_data()?;
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [conninfo, dir, slot, stop] = &args[..] else {
        return Err("usage: wal_into_own_storage CONNINFO STORE_DIR SLOT STOP_LSN".into());
    };
    let stop: Lsn = stop.parse()?;
    let config = pgrepl::Config::from_conninfo(conninfo)?;
    let mut conn = Connection::connect(&config).await?;
    let id = conn.identify_system().await?;
    let seg = conn.wal_segment_size().await?;
    let start = match conn.read_replication_slot(slot).await? {
        Some(info) => info.restart_lsn.unwrap_or(id.xlogpos),
        None => return Err(format!("replication slot \"{slot}\" does not exist").into()),
    };
    let mut receiver = Receiver::new(start, id.timeline, seg, id.system_id);
    receiver.set_stop(Some(stop));
    std::fs::create_dir_all(dir)?;
    let mut store = Store {
        dir: Path::new(dir).to_path_buf(),
        file: None,
    };

    let mut stream = conn
        .start_replication(&StartReplication {
            slot: Some(slot.clone()),
            start: receiver.received(),
            timeline: Some(id.timeline),
        })
        .await?;
    let mut last_sync = Instant::now();
    while let Some(event) = stream.next().await? {
        let mut reply = false;
        match event {
            ReplicationEvent::XLogData(x) => {
                let incoming = receiver.xlogdata(x.wal_start, x.wal_end, &x.data)?;
                store.append(incoming.timeline, incoming.start, incoming.data)?;
                receiver.written(Lsn(incoming.start.0 + incoming.data.len() as u64));
            }
            ReplicationEvent::Keepalive(k) => {
                reply = receiver.keepalive(k.wal_end, k.reply_requested);
            }
            // an archiver that follows promotions checks the switch with
            // receiver.end_of_timeline() and streams on from the switch's `resume`
            ReplicationEvent::EndOfTimeline { .. } | ReplicationEvent::ServerShutdown => break,
            _ => {}
        }
        // durable first, then reported: never the other way round
        if receiver.stopped() || reply || last_sync.elapsed() > Duration::from_secs(1) {
            store.make_durable()?;
            receiver.durable(receiver.received());
            let s = receiver.status();
            stream.send_status(s.write, s.flush, Lsn(0), false).await?;
            last_sync = Instant::now();
        }
        if receiver.stopped() {
            break;
        }
    }
    stream.finish().await?;
    println!(
        "durable up to {} on timeline {} (the slot may now release WAL before it)",
        receiver.flushed(),
        receiver.timeline()
    );
    Ok(())
}
