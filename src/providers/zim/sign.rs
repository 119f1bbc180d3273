//! ZIM server API signature (`SignatureVersion=2.0`).

use md5::{Digest, Md5};

/// Lowercase hex `md5(AppId ‖ SignatureNonce ‖ ServerSecret ‖ Timestamp)`.
pub fn signature(app_id: u32, nonce: &str, server_secret: &str, timestamp: i64) -> String {
    let mut h = Md5::new();
    h.update(app_id.to_string().as_bytes());
    h.update(nonce.as_bytes());
    h.update(server_secret.as_bytes());
    h.update(timestamp.to_string().as_bytes());
    hex(&h.finalize())
}

/// A fresh 16-hex-character nonce.
pub fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn official_vector() {
        assert_eq!(
            super::signature(
                12345,
                "4fd24687296dd9f3",
                "9193cc662a4c0ec135ec71fb57194b38",
                1615186943
            ),
            "43e5cfcca828314675f91b001390566a"
        );
    }
}
