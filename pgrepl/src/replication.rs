//! The messages carried inside CopyData during START_REPLICATION, both directions, without I/O.
//!
//! Formats from `protocol-replication` in the PostgreSQL documentation and
//! `src/backend/replication/walsender.c` (`XLogSendPhysical`, `WalSndKeepalive`,
//! `ProcessStandbyReplyMessage`, `ProcessStandbyHSFeedbackMessage`). All integers are big-endian.

use bytes::{BufMut, Bytes, BytesMut};
use pgwal::Lsn;

use crate::message::{DecodeError, Reader};

/// Microseconds since 2000-01-01 00:00:00 UTC (`TimestampTz`).
pub type PgTimestamp = i64;

/// Seconds from the Unix epoch to the PostgreSQL epoch (2000-01-01).
pub const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// The current time as a [`PgTimestamp`].
pub fn pg_now() -> PgTimestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_micros() as i64 - PG_EPOCH_UNIX_SECS * 1_000_000
}

/// A chunk of WAL ('w').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// Where `data` starts in the WAL stream.
    pub wal_start: Lsn,
    /// The server's send-request pointer (its flush position), not the end of this chunk.
    pub wal_end: Lsn,
    /// Server clock when sent.
    pub send_time: PgTimestamp,
    /// The WAL bytes (shared with the receive buffer, not copied).
    pub data: Bytes,
}

impl XLogData {
    /// The position just past the last byte of `data`.
    pub fn data_end(&self) -> Lsn {
        Lsn(self.wal_start.0.saturating_add(self.data.len() as u64))
    }
}

/// A primary keepalive ('k').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The server's current end of WAL as the walsender sees it.
    pub wal_end: Lsn,
    /// Server clock when sent.
    pub send_time: PgTimestamp,
    /// The server wants a status update now.
    pub reply_requested: bool,
}

/// A server-to-client CopyData payload during physical replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalMessage {
    /// 'w'
    XLogData(XLogData),
    /// 'k'
    Keepalive(PrimaryKeepalive),
}

impl WalMessage {
    /// Decodes a CopyData payload. `body` must be the payload (a cheap `Bytes` clone), so that
    /// WAL data is sliced out without copying.
    pub fn decode(body: &Bytes) -> Result<WalMessage, DecodeError> {
        let mut r = Reader::new(b'd', body);
        let kind = r.u8()?;
        match kind {
            b'w' => {
                let wal_start = Lsn(r.u64()?);
                let wal_end = Lsn(r.u64()?);
                let send_time = r.i64()?;
                let len = r.rest().len() as u64;
                // everything downstream computes `wal_start + len`: refuse what cannot be
                if wal_start.checked_add(len).is_none() {
                    return Err(r.err(format!(
                        "XLogData at {wal_start} with {len} bytes runs past the end of the WAL address space"
                    )));
                }
                Ok(WalMessage::XLogData(XLogData {
                    wal_start,
                    wal_end,
                    send_time,
                    data: body.slice(25..),
                }))
            }
            b'k' => {
                let wal_end = Lsn(r.u64()?);
                let send_time = r.i64()?;
                let reply = r.u8()?;
                r.finish()?;
                Ok(WalMessage::Keepalive(PrimaryKeepalive {
                    wal_end,
                    send_time,
                    reply_requested: reply != 0,
                }))
            }
            other => Err(r.err(format!(
                "unknown replication message type 0x{other:02x} in CopyData"
            ))),
        }
    }

    /// Encodes the payload (used by tests and tools that replay streams).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            WalMessage::XLogData(x) => {
                out.put_u8(b'w');
                out.put_u64(x.wal_start.0);
                out.put_u64(x.wal_end.0);
                out.put_i64(x.send_time);
                out.put_slice(&x.data);
            }
            WalMessage::Keepalive(k) => {
                out.put_u8(b'k');
                out.put_u64(k.wal_end.0);
                out.put_i64(k.send_time);
                out.put_u8(u8::from(k.reply_requested));
            }
        }
    }
}

/// A standby status update ('r'). Positions are "last byte + 1"; [`Lsn::INVALID`] means unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Received and written.
    pub write: Lsn,
    /// Durable (fsynced). A slot's restart_lsn advances to this.
    pub flush: Lsn,
    /// Applied (a backup tool sends INVALID).
    pub apply: Lsn,
    /// Client clock.
    pub client_time: PgTimestamp,
    /// Ask the server to answer with a keepalive.
    pub reply_requested: bool,
}

/// Hot-standby feedback ('h'); all-zero xmins switch feedback off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotStandbyFeedback {
    /// Client clock.
    pub client_time: PgTimestamp,
    /// Oldest xmin.
    pub xmin: u32,
    /// Its epoch.
    pub xmin_epoch: u32,
    /// Oldest catalog xmin.
    pub catalog_xmin: u32,
    /// Its epoch.
    pub catalog_xmin_epoch: u32,
}

/// A client-to-server CopyData payload during physical replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyMessage {
    /// 'r'
    Status(StandbyStatusUpdate),
    /// 'h'
    HotStandbyFeedback(HotStandbyFeedback),
}

impl StandbyMessage {
    /// Encodes the CopyData payload.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            StandbyMessage::Status(s) => {
                out.put_u8(b'r');
                out.put_u64(s.write.0);
                out.put_u64(s.flush.0);
                out.put_u64(s.apply.0);
                out.put_i64(s.client_time);
                out.put_u8(u8::from(s.reply_requested));
            }
            StandbyMessage::HotStandbyFeedback(h) => {
                out.put_u8(b'h');
                out.put_i64(h.client_time);
                out.put_u32(h.xmin);
                out.put_u32(h.xmin_epoch);
                out.put_u32(h.catalog_xmin);
                out.put_u32(h.catalog_xmin_epoch);
            }
        }
    }

    /// Decodes a payload (what a server would do; used to test the encoder).
    pub fn decode(body: &[u8]) -> Result<StandbyMessage, DecodeError> {
        let mut r = Reader::new(b'd', body);
        let msg = match r.u8()? {
            b'r' => StandbyMessage::Status(StandbyStatusUpdate {
                write: Lsn(r.u64()?),
                flush: Lsn(r.u64()?),
                apply: Lsn(r.u64()?),
                client_time: r.i64()?,
                reply_requested: r.u8()? != 0,
            }),
            b'h' => StandbyMessage::HotStandbyFeedback(HotStandbyFeedback {
                client_time: r.i64()?,
                xmin: r.u32()?,
                xmin_epoch: r.u32()?,
                catalog_xmin: r.u32()?,
                catalog_xmin_epoch: r.u32()?,
            }),
            other => return Err(r.err(format!("unknown standby message 0x{other:02x}"))),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn status_update_is_34_bytes() {
        let mut b = BytesMut::new();
        StandbyMessage::Status(StandbyStatusUpdate {
            write: Lsn(1),
            flush: Lsn(2),
            apply: Lsn::INVALID,
            client_time: 5,
            reply_requested: false,
        })
        .encode(&mut b);
        assert_eq!(b.len(), 34);
    }

    #[test]
    fn unknown_and_short_messages_are_errors() {
        assert!(WalMessage::decode(&Bytes::from_static(b"x")).is_err());
        assert!(WalMessage::decode(&Bytes::from_static(b"")).is_err());
        assert!(WalMessage::decode(&Bytes::from_static(b"w\0\0\0")).is_err());
        assert!(WalMessage::decode(&Bytes::from_static(&[b'k'; 19])).is_err());
    }

    proptest! {
        #[test]
        fn wal_message_round_trip(start: u64, end: u64, t: i64, data in proptest::collection::vec(any::<u8>(), 0..300), keep: bool, reply: bool) {
            let m = if keep {
                WalMessage::Keepalive(PrimaryKeepalive { wal_end: Lsn(end), send_time: t, reply_requested: reply })
            } else {
                WalMessage::XLogData(XLogData { wal_start: Lsn(start), wal_end: Lsn(end), send_time: t, data: Bytes::from(data) })
            };
            let mut b = BytesMut::new();
            m.encode(&mut b);
            prop_assert_eq!(WalMessage::decode(&b.freeze()).unwrap(), m);
        }

        #[test]
        fn standby_message_round_trip(a: u64, b: u64, c: u64, t: i64, r: bool, x: u32, y: u32, fb: bool) {
            let m = if fb {
                StandbyMessage::HotStandbyFeedback(HotStandbyFeedback { client_time: t, xmin: x, xmin_epoch: y, catalog_xmin: y, catalog_xmin_epoch: x })
            } else {
                StandbyMessage::Status(StandbyStatusUpdate { write: Lsn(a), flush: Lsn(b), apply: Lsn(c), client_time: t, reply_requested: r })
            };
            let mut buf = BytesMut::new();
            m.encode(&mut buf);
            prop_assert_eq!(StandbyMessage::decode(&buf).unwrap(), m);
        }

        #[test]
        fn arbitrary_payloads_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = WalMessage::decode(&Bytes::from(data.clone()));
            let _ = StandbyMessage::decode(&data);
        }
    }
}
