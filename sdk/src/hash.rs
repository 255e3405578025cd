//! Hashes for plugins: a stable one, the same value for the same bytes in
//! every build and on every machine (std's hashers promise neither), for
//! what a plugin stores or shares, such as a position; and HMAC over SHA-2,
//! for protocols' handshakes and keyed masking.

use sha2::Digest;
use sha2::digest::core_api::BlockSizeUser;

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// HMAC (RFC 2104) of `message` under `key`, over the SHA-2 digest `D`
/// (`sha2::Sha256`, `sha2::Sha512`).
pub fn hmac<D: Digest + BlockSizeUser>(key: &[u8], message: &[u8]) -> Vec<u8> {
    let block = <D as BlockSizeUser>::block_size();
    let mut k = if key.len() > block {
        D::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(block, 0);
    let mut inner = D::new();
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<_>>());
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = D::new();
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<_>>());
    outer.update(inner);
    outer.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hmac_has_the_values_of_rfc_4231() {
        let hex = |b: Vec<u8>| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        // Test case 2, and test case 6 (a key longer than the block).
        assert_eq!(
            hex(super::hmac::<sha2::Sha256>(
                b"Jefe",
                b"what do ya want for nothing?"
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(super::hmac::<sha2::Sha256>(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn fnv1a_has_the_published_values() {
        assert_eq!(super::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
