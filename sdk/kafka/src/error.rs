//! What can go wrong talking to Kafka, sorted by what the caller does
//! about it: wait and try again ([`KafkaError::is_retriable`]), return
//! because the host interrupted a wait ([`KafkaError::is_interrupted`]),
//! or fail.

use std::fmt;
use std::io;

pub use kafka_protocol::ResponseError;

use crate::records::RecordsError;

/// A failed exchange with a broker.
#[derive(Debug)]
pub enum KafkaError {
    /// The connection to `addr` failed or broke.
    Io {
        /// The broker, `host:port`.
        addr: String,
        /// What failed.
        error: io::Error,
    },
    /// The broker answered with an error code.
    Broker {
        /// The broker, `host:port`.
        addr: String,
        /// What was asked (`Fetch orders/3`, `Produce`, …).
        what: String,
        /// Its error.
        code: ResponseError,
    },
    /// The broker's answer or its record batches could not be read, or it
    /// cannot speak a version of a request we need.
    Protocol {
        /// The broker, `host:port`.
        addr: String,
        /// What is wrong.
        what: String,
    },
    /// The records of a fetch were not readable.
    Records {
        /// Where they came from (`orders/3 at 1200`).
        what: String,
        /// What is wrong.
        error: RecordsError,
    },
    /// Authentication failed (SASL), for a reason that will not pass.
    Auth {
        /// The broker, `host:port`.
        addr: String,
        /// What the broker said (never the password).
        what: String,
    },
    /// Something the client cannot do with this cluster or config.
    Unsupported(String),
}

impl KafkaError {
    /// Whether trying again later may work: the broker is away, or it
    /// answered with an error Kafka calls retriable (a leader moving, a
    /// topic being made, a timeout). A connection the sandbox refuses (no
    /// `net` grant) is not.
    pub fn is_retriable(&self) -> bool {
        match self {
            KafkaError::Io { error, .. } => error.kind() != io::ErrorKind::PermissionDenied,
            KafkaError::Broker { code, .. } => code.is_retriable(),
            _ => false,
        }
    }

    /// Whether the host interrupted a wait (to stop, pause or swap): the
    /// call should return and be made again later.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, KafkaError::Io { error, .. } if error.kind() == io::ErrorKind::Interrupted)
    }

    /// Whether metadata should be asked for again before the next try: a
    /// partition's leader moved or is being elected, or a topic is new.
    pub fn wants_metadata(&self) -> bool {
        matches!(
            self,
            KafkaError::Io { .. }
                | KafkaError::Broker {
                    code: ResponseError::NotLeaderOrFollower
                        | ResponseError::LeaderNotAvailable
                        | ResponseError::UnknownTopicOrPartition
                        | ResponseError::FencedLeaderEpoch
                        | ResponseError::UnknownLeaderEpoch
                        | ResponseError::NotCoordinator
                        | ResponseError::CoordinatorNotAvailable,
                    ..
                }
        )
    }

    pub(crate) fn io(addr: &str, error: io::Error) -> Self {
        KafkaError::Io {
            addr: addr.to_owned(),
            error,
        }
    }

    pub(crate) fn protocol(addr: &str, what: impl fmt::Display) -> Self {
        KafkaError::Protocol {
            addr: addr.to_owned(),
            what: what.to_string(),
        }
    }

    /// `Err` for a non-zero error code.
    pub(crate) fn check(addr: &str, what: impl fmt::Display, code: i16) -> Result<(), KafkaError> {
        match ResponseError::try_from_code(code) {
            None => Ok(()),
            Some(code) => Err(KafkaError::Broker {
                addr: addr.to_owned(),
                what: what.to_string(),
                code,
            }),
        }
    }
}

impl fmt::Display for KafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KafkaError::Io { addr, error } => write!(f, "broker {addr}: {error}"),
            KafkaError::Broker { addr, what, code } => {
                write!(f, "broker {addr}: {what}: {code} (error {})", code.code())
            }
            KafkaError::Protocol { addr, what } => write!(f, "broker {addr}: {what}"),
            KafkaError::Records { what, error } => write!(f, "{what}: {error}"),
            KafkaError::Auth { addr, what } => write!(f, "broker {addr}: {what}"),
            KafkaError::Unsupported(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for KafkaError {}
