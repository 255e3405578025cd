//! The messages of `pgoutput`, PostgreSQL's built-in logical decoding
//! output plugin (protocol version 1), as they arrive in a replication
//! stream's WAL data: what changed, in which relation, inside which
//! transaction.

use bytes::{Buf as _, Bytes};

use crate::error::PgError;

/// One `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A transaction begins; its changes follow, then its [`Change::Commit`].
    Begin {
        /// The LSN of its commit record.
        final_lsn: u64,
        /// When it committed, µs since 2000-01-01.
        commit_time: i64,
        /// Its transaction id.
        xid: u32,
    },
    /// The transaction ends.
    Commit {
        /// The LSN of its commit record.
        commit_lsn: u64,
        /// The end of its commit record: where a client that has it all
        /// says it is.
        end_lsn: u64,
        /// When it committed, µs since 2000-01-01.
        commit_time: i64,
    },
    /// What a relation looks like, sent before its first change and after
    /// it changes (a column added).
    Relation(Relation),
    /// A row inserted.
    Insert {
        /// The relation's id.
        relation: u32,
        /// The row.
        new: Tuple,
    },
    /// A row updated.
    Update {
        /// The relation's id.
        relation: u32,
        /// The row before: its key columns (`key_only`) when the key
        /// changed, or all of it under `REPLICA IDENTITY FULL`; else none.
        old: Option<Tuple>,
        /// True when `old` holds the key columns only.
        key_only: bool,
        /// The row after.
        new: Tuple,
    },
    /// A row deleted.
    Delete {
        /// The relation's id.
        relation: u32,
        /// The row: its key columns (`key_only`), or all of it under
        /// `REPLICA IDENTITY FULL`.
        old: Tuple,
        /// True when `old` holds the key columns only.
        key_only: bool,
    },
    /// Relations truncated.
    Truncate {
        /// Their ids.
        relations: Vec<u32>,
    },
    /// Anything else (origin, type, logical message): nothing to emit.
    Other(u8),
}

/// A relation (table) as `pgoutput` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Its id (the table's OID).
    pub id: u32,
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// `d` default (the primary key), `n` nothing, `f` full, `i` an index.
    pub replica_identity: u8,
    /// Its columns, in order.
    pub columns: Vec<Column>,
}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (the key).
    pub key: bool,
    /// Its name.
    pub name: String,
    /// Its type's OID.
    pub type_oid: u32,
    /// Its type modifier.
    pub type_modifier: i32,
}

/// A row's columns, in the relation's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<Datum>);

/// One column's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// NULL.
    Null,
    /// A TOASTed value the change left as it was: the server does not send
    /// it.
    Unchanged,
    /// The value in the type's text form.
    Text(Bytes),
}

fn short(what: &str) -> PgError {
    PgError::Protocol(format!("a pgoutput {what} message ends early"))
}

fn need(buf: &Bytes, n: usize, what: &str) -> Result<(), PgError> {
    if buf.remaining() < n {
        Err(short(what))
    } else {
        Ok(())
    }
}

fn cstr(buf: &mut Bytes, what: &str) -> Result<String, PgError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| short(what))?;
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end + 1);
    Ok(s)
}

fn tuple(buf: &mut Bytes, what: &str) -> Result<Tuple, PgError> {
    need(buf, 2, what)?;
    let n = buf.get_u16() as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        need(buf, 1, what)?;
        out.push(match buf.get_u8() {
            b'n' => Datum::Null,
            b'u' => Datum::Unchanged,
            b't' => {
                need(buf, 4, what)?;
                let len = buf.get_u32() as usize;
                need(buf, len, what)?;
                Datum::Text(buf.split_to(len))
            }
            other => {
                return Err(PgError::Protocol(format!(
                    "a column of kind {:?} in a pgoutput {what} (binary columns are not asked for)",
                    other as char
                )));
            }
        });
    }
    Ok(Tuple(out))
}

/// Reads one message.
pub fn parse(mut buf: Bytes) -> Result<Change, PgError> {
    need(&buf, 1, "empty")?;
    let tag = buf.get_u8();
    Ok(match tag {
        b'B' => {
            need(&buf, 20, "Begin")?;
            Change::Begin {
                final_lsn: buf.get_u64(),
                commit_time: buf.get_i64(),
                xid: buf.get_u32(),
            }
        }
        b'C' => {
            need(&buf, 25, "Commit")?;
            let _flags = buf.get_u8();
            Change::Commit {
                commit_lsn: buf.get_u64(),
                end_lsn: buf.get_u64(),
                commit_time: buf.get_i64(),
            }
        }
        b'R' => {
            need(&buf, 4, "Relation")?;
            let id = buf.get_u32();
            let schema = cstr(&mut buf, "Relation")?;
            let name = cstr(&mut buf, "Relation")?;
            need(&buf, 3, "Relation")?;
            let replica_identity = buf.get_u8();
            let n = buf.get_u16() as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                need(&buf, 1, "Relation")?;
                let key = buf.get_u8() & 1 == 1;
                let name = cstr(&mut buf, "Relation")?;
                need(&buf, 8, "Relation")?;
                columns.push(Column {
                    key,
                    name,
                    type_oid: buf.get_u32(),
                    type_modifier: buf.get_i32(),
                });
            }
            Change::Relation(Relation {
                id,
                schema,
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            need(&buf, 5, "Insert")?;
            let relation = buf.get_u32();
            let _n = buf.get_u8();
            Change::Insert {
                relation,
                new: tuple(&mut buf, "Insert")?,
            }
        }
        b'U' => {
            need(&buf, 5, "Update")?;
            let relation = buf.get_u32();
            let (old, key_only) = match buf.get_u8() {
                kind @ (b'K' | b'O') => {
                    let old = tuple(&mut buf, "Update")?;
                    need(&buf, 1, "Update")?;
                    let _n = buf.get_u8();
                    (Some(old), kind == b'K')
                }
                _ => (None, false),
            };
            Change::Update {
                relation,
                old,
                key_only,
                new: tuple(&mut buf, "Update")?,
            }
        }
        b'D' => {
            need(&buf, 5, "Delete")?;
            let relation = buf.get_u32();
            let key_only = buf.get_u8() == b'K';
            Change::Delete {
                relation,
                old: tuple(&mut buf, "Delete")?,
                key_only,
            }
        }
        b'T' => {
            need(&buf, 5, "Truncate")?;
            let n = buf.get_u32() as usize;
            let _options = buf.get_u8();
            need(&buf, n * 4, "Truncate")?;
            Change::Truncate {
                relations: (0..n).map(|_| buf.get_u32()).collect(),
            }
        }
        other => Change::Other(other),
    })
}
