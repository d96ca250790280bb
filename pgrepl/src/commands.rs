//! The replication commands that answer with a result set, as typed methods.
//!
//! Result shapes from `protocol-replication` in the PostgreSQL documentation and
//! `src/backend/replication/walsender.c` (`IdentifySystem`, `ReadReplicationSlot`,
//! `SendTimeLineHistory`, `CreateReplicationSlot`, `DropReplicationSlot`, `UploadManifest`).

use bytes::Bytes;
use pgwal::{Lsn, TimelineId};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::connection::{Connection, QueryResult};
use crate::error::{Error, Result};
use crate::message::BackendMessage;
use crate::quote::quote_ident;

/// The answer to IDENTIFY_SYSTEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier (as in pg_control).
    pub system_id: u64,
    /// The current timeline.
    pub timeline: TimelineId,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database, for logical walsenders; `None` for physical ones.
    pub dbname: Option<String>,
}

/// A timeline history file from TIMELINE_HISTORY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistoryFile {
    /// `0000000N.history`.
    pub file_name: String,
    /// The file's bytes.
    pub content: Bytes,
}

/// Options of CREATE_REPLICATION_SLOT ... PHYSICAL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateSlotOptions {
    /// Dropped when the session ends.
    pub temporary: bool,
    /// Reserve WAL from now on (RESERVE_WAL), so the slot holds WAL before its first use.
    pub reserve_wal: bool,
}

/// The answer to CREATE_REPLICATION_SLOT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub name: String,
    /// The consistent point the server reports; PostgreSQL fills it for logical slots only
    /// (a physical slot answers `0/0`, given here as `None`). Use
    /// [`Connection::read_replication_slot`] for a physical slot's restart_lsn.
    pub consistent_point: Option<Lsn>,
}

/// The answer to READ_REPLICATION_SLOT for an existing slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// `physical` or `logical`.
    pub slot_type: String,
    /// Oldest WAL the slot keeps, if any.
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn`.
    pub restart_tli: Option<TimelineId>,
}

/// Physical slot names: 1 to 63 of `[a-z0-9_]` (`ReplicationSlotValidateName`).
pub fn validate_slot_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 {
        return Err(Error::Usage(format!(
            "replication slot name \"{name}\" must be 1 to 63 characters"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::Usage(format!(
            "replication slot name \"{name}\" contains invalid character (only lower case letters, numbers, and the underscore character are allowed)"
        )));
    }
    Ok(())
}

fn single_row<'a>(
    results: &'a [QueryResult],
    command: &'static str,
    min_cols: usize,
) -> Result<&'a [Option<String>]> {
    let set = results
        .iter()
        .find(|r| !r.columns.is_empty())
        .ok_or_else(|| Error::protocol(command, "no result set"))?;
    let row = match set.rows.as_slice() {
        [row] => row,
        rows => {
            return Err(Error::protocol(
                command,
                format!("{} rows, expected 1", rows.len()),
            ))
        }
    };
    if row.len() < min_cols {
        return Err(Error::protocol(
            command,
            format!("{} columns, expected {min_cols}", row.len()),
        ));
    }
    Ok(row)
}

fn parse_lsn(v: &Option<String>, what: &'static str) -> Result<Lsn> {
    let s = v
        .as_deref()
        .ok_or_else(|| Error::protocol(what, "NULL where an LSN was expected"))?;
    s.parse().map_err(|e| Error::protocol(what, format!("{e}")))
}

fn parse_num<T: std::str::FromStr>(v: &Option<String>, what: &'static str) -> Result<T> {
    let s = v
        .as_deref()
        .ok_or_else(|| Error::protocol(what, "NULL where a number was expected"))?;
    s.parse()
        .map_err(|_| Error::protocol(what, format!("not a number: \"{s}\"")))
}

impl Connection {
    /// IDENTIFY_SYSTEM.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        self.state = "IDENTIFY_SYSTEM";
        let res = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(&res, "IDENTIFY_SYSTEM", 4)?;
        let out = SystemIdentity {
            system_id: parse_num(&row[0], "IDENTIFY_SYSTEM systemid")?,
            timeline: TimelineId(parse_num(&row[1], "IDENTIFY_SYSTEM timeline")?),
            xlogpos: parse_lsn(&row[2], "IDENTIFY_SYSTEM xlogpos")?,
            dbname: row[3].clone(),
        };
        self.state = "idle";
        Ok(out)
    }

    /// SHOW name: a server setting's value as text (with its unit, as SHOW prints it).
    pub async fn show(&mut self, name: &str) -> Result<String> {
        self.state = "SHOW";
        let res = self
            .simple_query(&format!("SHOW {}", quote_ident(name)))
            .await?;
        let row = single_row(&res, "SHOW", 1)?;
        let v = row[0]
            .clone()
            .ok_or_else(|| Error::protocol("SHOW", "value is NULL"))?;
        self.state = "idle";
        Ok(v)
    }

    /// The WAL segment size, from SHOW wal_segment_size.
    pub async fn wal_segment_size(&mut self) -> Result<pgwal::WalSegSize> {
        let text = self.show("wal_segment_size").await?;
        let bytes = parse_size_with_unit(&text).ok_or_else(|| {
            Error::protocol("SHOW", format!("cannot parse wal_segment_size \"{text}\""))
        })?;
        pgwal::WalSegSize::new(bytes).map_err(|e| Error::protocol("SHOW", e.to_string()))
    }

    /// TIMELINE_HISTORY tli.
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<TimelineHistoryFile> {
        self.state = "TIMELINE_HISTORY";
        let res = self
            .simple_query(&format!("TIMELINE_HISTORY {}", tli.0))
            .await?;
        let row = single_row(&res, "TIMELINE_HISTORY", 2)?;
        let out = TimelineHistoryFile {
            file_name: check_history_name(
                tli,
                row[0]
                    .clone()
                    .ok_or_else(|| Error::protocol("TIMELINE_HISTORY", "file name is NULL"))?,
            )?,
            content: Bytes::from(
                row[1]
                    .clone()
                    .ok_or_else(|| Error::protocol("TIMELINE_HISTORY", "content is NULL"))?,
            ),
        };
        self.state = "idle";
        Ok(out)
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] PHYSICAL [RESERVE_WAL]`.
    pub async fn create_physical_slot(
        &mut self,
        name: &str,
        opts: CreateSlotOptions,
    ) -> Result<CreatedSlot> {
        validate_slot_name(name)?;
        self.state = "CREATE_REPLICATION_SLOT";
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{} PHYSICAL{}",
            quote_ident(name),
            if opts.temporary { " TEMPORARY" } else { "" },
            if opts.reserve_wal { " RESERVE_WAL" } else { "" },
        );
        let res = self.simple_query(&sql).await?;
        let row = single_row(&res, "CREATE_REPLICATION_SLOT", 2)?;
        let out = CreatedSlot {
            name: row[0].clone().unwrap_or_else(|| name.to_owned()),
            consistent_point: match &row[1] {
                Some(s) => Some(s.parse::<Lsn>().map_err(|e| {
                    Error::protocol("CREATE_REPLICATION_SLOT", format!("consistent_point: {e}"))
                })?)
                .filter(|l| l.is_valid()),
                None => None,
            },
        };
        self.state = "idle";
        Ok(out)
    }

    /// READ_REPLICATION_SLOT name (PostgreSQL 15+): `None` if the slot does not exist.
    pub async fn read_replication_slot(&mut self, name: &str) -> Result<Option<SlotInfo>> {
        validate_slot_name(name)?;
        self.state = "READ_REPLICATION_SLOT";
        let res = self
            .simple_query(&format!("READ_REPLICATION_SLOT {}", quote_ident(name)))
            .await?;
        let row = single_row(&res, "READ_REPLICATION_SLOT", 3)?;
        let out = match &row[0] {
            None => None,
            Some(t) => Some(SlotInfo {
                slot_type: t.clone(),
                restart_lsn: match &row[1] {
                    Some(_) => Some(parse_lsn(&row[1], "restart_lsn")?),
                    None => None,
                },
                restart_tli: match &row[2] {
                    Some(_) => Some(TimelineId(parse_num(&row[2], "restart_tli")?)),
                    None => None,
                },
            }),
        };
        self.state = "idle";
        Ok(out)
    }

    /// `DROP_REPLICATION_SLOT name [WAIT]`.
    pub async fn drop_replication_slot(&mut self, name: &str, wait: bool) -> Result<()> {
        validate_slot_name(name)?;
        self.state = "DROP_REPLICATION_SLOT";
        self.simple_query(&format!(
            "DROP_REPLICATION_SLOT {}{}",
            quote_ident(name),
            if wait { " WAIT" } else { "" }
        ))
        .await?;
        self.state = "idle";
        Ok(())
    }

    /// UPLOAD_MANIFEST (PostgreSQL 17+): streams a backup manifest from `reader` for the
    /// BASE_BACKUP INCREMENTAL that follows on this connection. Memory stays at one chunk.
    pub async fn upload_manifest<R: AsyncRead + Unpin>(&mut self, mut reader: R) -> Result<u64> {
        self.check_idle()?;
        self.state = "UPLOAD_MANIFEST";
        frontend::query("UPLOAD_MANIFEST", self.buffer())
            .map_err(|e| Error::Usage(e.to_string()))?;
        self.flush().await?;
        loop {
            match self.recv().await? {
                BackendMessage::CopyInResponse => break,
                BackendMessage::NoticeResponse(n) => self.notice(&n),
                BackendMessage::ErrorResponse(e) => {
                    let err = self.db_error(e);
                    self.drain_until_ready().await?;
                    return Err(err);
                }
                other => {
                    return Err(Error::protocol(
                        "UPLOAD_MANIFEST",
                        format!("unexpected message {other:?}"),
                    ))
                }
            }
        }
        let mut sent = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut chunk).await {
                Ok(n) => n,
                Err(e) => {
                    // Abort the COPY so the connection stays in sync, then report.
                    frontend::copy_fail("client could not read the manifest", self.buffer())
                        .map_err(|e| Error::Usage(e.to_string()))?;
                    self.flush().await?;
                    let _ = self.drain_until_ready().await;
                    return Err(Error::io("reading the manifest to upload", e));
                }
            };
            if n == 0 {
                break;
            }
            let data =
                frontend::CopyData::new(&chunk[..n]).map_err(|e| Error::Usage(e.to_string()))?;
            data.write(self.buffer());
            self.flush().await?;
            sent += n as u64;
        }
        frontend::copy_done(self.buffer());
        self.flush().await?;
        let mut error = None;
        loop {
            match self.recv().await? {
                BackendMessage::CommandComplete(_) => {}
                BackendMessage::NoticeResponse(n) => self.notice(&n),
                BackendMessage::ErrorResponse(e) => error = Some(e),
                BackendMessage::ReadyForQuery(_) => break,
                BackendMessage::RowDescription(_) | BackendMessage::DataRow(_) => {}
                other => {
                    return Err(Error::protocol(
                        "UPLOAD_MANIFEST",
                        format!("unexpected message {other:?}"),
                    ))
                }
            }
        }
        if let Some(e) = error {
            return Err(self.db_error(e));
        }
        self.state = "idle";
        Ok(sent)
    }

    /// Reads and discards until ReadyForQuery (after an error inside a command).
    pub(crate) async fn drain_until_ready(&mut self) -> Result<()> {
        loop {
            match self.recv().await? {
                BackendMessage::ReadyForQuery(_) => return Ok(()),
                BackendMessage::NoticeResponse(n) => self.notice(&n),
                _ => {}
            }
        }
    }
}

/// Parses SHOW output such as `16MB`, `1GB`, `8kB` or a bare number of bytes.
pub fn parse_size_with_unit(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The file name TIMELINE_HISTORY returned, if it is the one PostgreSQL gives `tli`'s history
/// (`TLHistoryFileName`). Callers store the file under that name, so a name of the server's
/// choosing (`../x`) must not get through; pg_receivewal checks it the same way.
fn check_history_name(tli: TimelineId, name: String) -> Result<String> {
    if name == pgwal::timeline::history_file_name(tli) {
        Ok(name)
    } else {
        Err(Error::protocol(
            "TIMELINE_HISTORY",
            format!("server reported unexpected history file name for timeline {tli}: {name:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_names_are_the_timelines_own() {
        assert_eq!(
            check_history_name(TimelineId(2), "00000002.history".into()).unwrap(),
            "00000002.history"
        );
        assert_eq!(
            check_history_name(TimelineId(0x1A), "0000001A.history".into()).unwrap(),
            "0000001A.history"
        );
        for bad in [
            "00000003.history",
            "0000001a.history",
            "../00000002.history",
            "/etc/passwd",
            "00000002.history/..",
            "",
        ] {
            let e = check_history_name(TimelineId(2), bad.into()).unwrap_err();
            assert!(
                e.to_string()
                    .contains("unexpected history file name for timeline 2"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_with_unit("16MB"), Some(16 << 20));
        assert_eq!(parse_size_with_unit("1GB"), Some(1 << 30));
        assert_eq!(parse_size_with_unit("8kB"), Some(8192));
        assert_eq!(parse_size_with_unit("12 parsecs"), None);
    }

    #[test]
    fn slot_names() {
        assert!(validate_slot_name("ok_slot_1").is_ok());
        assert!(validate_slot_name("Bad").is_err());
        assert!(validate_slot_name("a\"; DROP").is_err());
        assert!(validate_slot_name("").is_err());
        assert!(validate_slot_name(&"a".repeat(64)).is_err());
    }
}
