//! Helpers for the common shapes of a source position.
//!
//! A position is opaque to the host: whatever bytes the source hands back
//! with `Poll` are stored with the batch and returned on resume. Most sources
//! need a counter or a (file, offset) pair; these helpers encode them.

use crate::Error;

/// Reads a position written as a little-endian `u64`.
pub fn decode_u64(position: &[u8]) -> Result<u64, Error> {
    let bytes: [u8; 8] = position.try_into().map_err(|_| {
        Error::fatal(format!(
            "stored position is {} bytes, expected an 8-byte counter",
            position.len()
        ))
    })?;
    Ok(u64::from_le_bytes(bytes))
}

/// Writes a `u64` position.
pub fn encode_u64(value: u64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn u64_positions_round_trip_and_bad_lengths_are_fatal() {
        assert_eq!(decode_u64(&encode_u64(42)).unwrap(), 42);
        assert!(matches!(decode_u64(b"abc"), Err(Error::Fatal(_))));
    }
}
