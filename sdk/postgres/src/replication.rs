//! Logical replication: the stream a `START_REPLICATION` opens (over a
//! connection made with `replication = Some("database")`), and the status
//! updates that tell the server what the client has made durable.
//!
//! The protocol is PostgreSQL's streaming replication protocol: once
//! streaming, each `CopyData` holds either WAL data (`w`: the output
//! plugin's message, with its LSNs) or a keepalive (`k`); the client
//! answers with standby status updates (`r`).

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::client::Client;
use crate::error::{DbError, PgError};

/// What the server streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// WAL data: where it starts, where the server's WAL ends, and the
    /// output plugin's message (for `pgoutput`, see [`crate::pgoutput`]).
    XLogData {
        /// The LSN this data starts at.
        start: u64,
        /// The end of the server's WAL when it was sent.
        wal_end: u64,
        /// The message.
        data: Bytes,
    },
    /// The server is alive; its WAL ends at `wal_end`. Answer at once if
    /// `reply` (or be disconnected after `wal_sender_timeout`).
    Keepalive {
        /// The end of the server's WAL.
        wal_end: u64,
        /// The server asks for a status update now.
        reply: bool,
    },
}

/// `X/Y`, PostgreSQL's way of writing an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Reads `X/Y`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// A PostgreSQL timestamp (µs since 2000-01-01) as milliseconds since the
/// Unix epoch.
pub fn pg_time_to_unix_ms(pg_us: i64) -> i64 {
    (pg_us + PG_EPOCH_US) / 1000
}

impl Client {
    /// Runs `sql`, a `START_REPLICATION …`, and waits for the stream to
    /// begin.
    pub fn start_replication(&mut self, sql: &str) -> Result<(), PgError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.send_raw(&out)?;
        loop {
            let (tag, body) = self.raw_frame(true)?.expect("waited");
            match tag {
                b'W' => return Ok(()),
                b'N' | b'S' => {}
                b'E' => return Err(error_of(tag, &body)?.into()),
                other => {
                    return Err(PgError::Protocol(format!(
                        "the server answered START_REPLICATION with message {:?}",
                        other as char
                    )));
                }
            }
        }
    }

    /// The next message of the stream, waiting for it.
    pub fn replication_message(&mut self) -> Result<Replication, PgError> {
        loop {
            if let Some(m) = self.replication_message_from(true)? {
                return Ok(m);
            }
        }
    }

    /// The next message of the stream if one has arrived, without waiting.
    pub fn replication_message_ready(&mut self) -> Result<Option<Replication>, PgError> {
        self.replication_message_from(false)
    }

    fn replication_message_from(&mut self, wait: bool) -> Result<Option<Replication>, PgError> {
        loop {
            let Some((tag, mut body)) = self.raw_frame(wait)? else {
                return Ok(None);
            };
            match tag {
                b'd' if body.first() == Some(&b'w') && body.len() >= 25 => {
                    body.advance(1);
                    let start = body.get_u64();
                    let wal_end = body.get_u64();
                    let _sent_at = body.get_i64();
                    return Ok(Some(Replication::XLogData {
                        start,
                        wal_end,
                        data: body,
                    }));
                }
                b'd' if body.first() == Some(&b'k') && body.len() >= 18 => {
                    body.advance(1);
                    let wal_end = body.get_u64();
                    let _sent_at = body.get_i64();
                    let reply = body.get_u8() == 1;
                    return Ok(Some(Replication::Keepalive { wal_end, reply }));
                }
                b'N' | b'S' => {}
                b'E' => return Err(error_of(tag, &body)?.into()),
                b'c' => {
                    return Err(PgError::Protocol(
                        "the server ended the replication stream".into(),
                    ));
                }
                other => {
                    return Err(PgError::Protocol(format!(
                        "a message {:?} in the replication stream",
                        other as char
                    )));
                }
            }
        }
    }

    /// Tells the server everything up to `lsn` is durable where the client
    /// put it (written, flushed and applied): the slot may free the WAL
    /// before it. `reply` asks the server to answer with a keepalive.
    pub fn standby_status(&mut self, lsn: u64, reply: bool) -> Result<(), PgError> {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let mut update = BytesMut::with_capacity(34);
        update.put_u8(b'r');
        update.put_u64(lsn);
        update.put_u64(lsn);
        update.put_u64(lsn);
        update.put_i64(now_us - PG_EPOCH_US);
        update.put_u8(u8::from(reply));
        let mut out = BytesMut::with_capacity(40);
        frontend::CopyData::new(&update[..])?.write(&mut out);
        self.send_raw(&out)
    }
}

/// The server's `ErrorResponse` in a raw frame.
fn error_of(tag: u8, body: &Bytes) -> Result<DbError, PgError> {
    let mut frame = BytesMut::with_capacity(body.len() + 5);
    frame.put_u8(tag);
    frame.put_u32(body.len() as u32 + 4);
    frame.put_slice(body);
    match Message::parse(&mut frame)? {
        Some(Message::ErrorResponse(e)) => Ok(DbError::parse(&e)?),
        _ => Err(PgError::Protocol(
            "an error message that does not parse".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_read_and_write_as_postgres_does() {
        assert_eq!(format_lsn(0x1_6B37_4D48), "1/6B374D48");
        assert_eq!(parse_lsn("1/6B374D48"), Some(0x1_6B37_4D48));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nope"), None);
    }
}
