//! Tencent TLS sig v2 ("UserSig"): generation for our requests and decoding
//! for the simulator's check.

use std::io::{Read, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Why a UserSig was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserSigError {
    #[error("usersig is not valid base64/zlib/json")]
    Malformed,
    #[error("usersig signature does not match")]
    BadSignature,
    #[error("usersig expired")]
    Expired,
    #[error("usersig identifier does not match")]
    WrongIdentifier,
    #[error("usersig sdkappid does not match")]
    WrongApp,
}

/// The decoded fields of a UserSig.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fields {
    #[serde(rename = "TLS.ver")]
    pub ver: String,
    #[serde(rename = "TLS.identifier")]
    pub identifier: String,
    #[serde(rename = "TLS.sdkappid")]
    pub sdk_app_id: u64,
    #[serde(rename = "TLS.expire")]
    pub expire: i64,
    #[serde(rename = "TLS.time")]
    pub time: i64,
    #[serde(rename = "TLS.sig")]
    pub sig: String,
}

/// base64(HMAC-SHA256(key, content)) over the v2 content string.
pub fn tls_sig(sdk_app_id: u64, identifier: &str, key: &str, time: i64, expire: i64) -> String {
    let content = format!(
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdk_app_id}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("hmac takes any key length");
    mac.update(content.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Builds a UserSig valid from `time` for `expire` seconds.
pub fn generate(sdk_app_id: u64, identifier: &str, key: &str, time: i64, expire: i64) -> String {
    let fields = Fields {
        ver: "2.0".into(),
        identifier: identifier.into(),
        sdk_app_id,
        expire,
        time,
        sig: tls_sig(sdk_app_id, identifier, key, time, expire),
    };
    let json = serde_json::to_vec(&fields).expect("fields serialize");
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&json).expect("write to vec");
    let compressed = z.finish().expect("finish to vec");
    STANDARD
        .encode(compressed)
        .chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            c => c,
        })
        .collect()
}

/// Decodes a UserSig without checking it.
pub fn decode(usersig: &str) -> Result<Fields, UserSigError> {
    if usersig.len() > 4096 {
        return Err(UserSigError::Malformed);
    }
    let b64: String = usersig
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect();
    let compressed = STANDARD.decode(b64).map_err(|_| UserSigError::Malformed)?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(&compressed[..])
        .take(16 * 1024)
        .read_to_end(&mut json)
        .map_err(|_| UserSigError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| UserSigError::Malformed)
}

/// Decodes and checks a UserSig the way the service does.
pub fn verify(
    usersig: &str,
    sdk_app_id: u64,
    identifier: &str,
    key: &str,
    now: i64,
) -> Result<Fields, UserSigError> {
    let f = decode(usersig)?;
    if f.sdk_app_id != sdk_app_id {
        return Err(UserSigError::WrongApp);
    }
    let expected = tls_sig(f.sdk_app_id, &f.identifier, key, f.time, f.expire);
    // The comparison is over public data (the sig is in the request), so
    // constant time is not needed; equality of the decoded bytes is.
    if expected != f.sig {
        return Err(UserSigError::BadSignature);
    }
    if f.identifier != identifier {
        return Err(UserSigError::WrongIdentifier);
    }
    if now > f.time.saturating_add(f.expire) {
        return Err(UserSigError::Expired);
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

    #[test]
    fn official_tls_sig_vector() {
        assert_eq!(
            tls_sig(1400000000, "xiaojun", KEY, 1700000000, 15552000),
            "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4="
        );
    }

    #[test]
    fn round_trip_and_refusals() {
        let s = generate(1400000000, "xiaojun", KEY, 1700000000, 15552000);
        let f = verify(&s, 1400000000, "xiaojun", KEY, 1700000001).unwrap();
        assert_eq!(f.sig, "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4=");
        assert_eq!(f.ver, "2.0");
        assert_eq!(
            verify(&s, 1400000000, "xiaojun", "wrong", 1700000001),
            Err(UserSigError::BadSignature)
        );
        assert_eq!(
            verify(&s, 1400000000, "xiaojun", KEY, 1700000000 + 15552001),
            Err(UserSigError::Expired)
        );
        assert_eq!(
            verify(&s, 1400000000, "admin", KEY, 1700000001),
            Err(UserSigError::WrongIdentifier)
        );
        assert_eq!(decode("!!!"), Err(UserSigError::Malformed));
    }
}
