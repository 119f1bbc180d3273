//! `accounts import --users FILE`: users with their profiles, one JSON
//! object a line (`{"id", "name"?, "avatar"?}`), checked like messages:
//! a bad line is reported with its number and reason and the rest are
//! still registered.
//!
//! The limits are the providers' own: ZIM `UserRegister` takes a
//! `UserName` of at most 256 bytes and a `UserAvatar` of at most 500
//! (ZEGO: zim-server/user/batch-register-users.md); Tencent refuses a
//! profile value (`Nick`, `FaceUrl`) over 500 bytes (导入单个账号, 40601).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};

use anyhow::Context;
use serde::Deserialize;

use super::Rejected;
use crate::config::TargetConfig;
use crate::providers::{tencent, zim, UserProfile};

/// One line of a users file. Unknown fields are ignored, like messages'.
#[derive(Debug, Deserialize)]
struct UserLine {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    avatar: Option<String>,
}

/// A users file read and checked.
#[derive(Debug, Default)]
pub struct UsersFile {
    pub users: Vec<UserProfile>,
    /// Every refused line.
    pub rejected: Vec<Rejected>,
}

/// Reads `path` (`-`: stdin) and checks each line against `target`.
pub fn read(path: &str, target: &TargetConfig) -> anyhow::Result<UsersFile> {
    let input: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("cannot open users file {path}"))?)
    };
    let mut out = UsersFile::default();
    let mut first_seen: HashMap<String, u64> = HashMap::new();
    for (i, line) in BufReader::new(input).split(b'\n').enumerate() {
        let line_no = i as u64 + 1;
        let line = line.with_context(|| format!("cannot read {path} at line {line_no}"))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(&line, target) {
            Ok(u) => match first_seen.get(&u.id) {
                Some(first) => out.rejected.push(Rejected {
                    line: line_no,
                    reason: format!("id {:?} was already given at line {first}", u.id),
                }),
                None => {
                    first_seen.insert(u.id.clone(), line_no);
                    out.users.push(u);
                }
            },
            Err(reason) => out.rejected.push(Rejected {
                line: line_no,
                reason,
            }),
        }
    }
    Ok(out)
}

/// Parses and checks one line.
pub fn parse_line(line: &[u8], target: &TargetConfig) -> Result<UserProfile, String> {
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("line is not valid UTF-8 (bad byte at offset {})", e.valid_up_to()))?;
    let u: UserLine = super::input::from_json_line(text.trim_end_matches('\r'))?;
    // An empty column in an export means "no value", not an empty profile.
    let name = u.name.filter(|s| !s.is_empty());
    let avatar = u.avatar.filter(|s| !s.is_empty());
    let (max_name, max_avatar, name_field, avatar_field) = match target {
        TargetConfig::Zim(_) => {
            zim::body::check_user_id("id", &u.id).map_err(|e| e.to_string())?;
            (
                zim::codes::MAX_USER_NAME_BYTES,
                zim::codes::MAX_USER_AVATAR_BYTES,
                "ZIM UserName",
                "ZIM UserAvatar",
            )
        }
        TargetConfig::Tencent(_) => {
            tencent::body::check_user_id("id", &u.id).map_err(|e| e.to_string())?;
            let max = tencent::codes::MAX_PROFILE_VALUE_BYTES;
            (max, max, "Tencent Nick", "Tencent FaceUrl")
        }
    };
    for (field, value, max, what) in [
        ("name", &name, max_name, name_field),
        ("avatar", &avatar, max_avatar, avatar_field),
    ] {
        if let Some(v) = value {
            if v.len() > max {
                return Err(format!(
                    "{field} is {} bytes; {what} takes at most {max}",
                    v.len()
                ));
            }
        }
    }
    Ok(UserProfile {
        id: u.id,
        name,
        avatar,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zim() -> TargetConfig {
        let cfg = crate::config::Config::from_toml(
            "[targets.z]\nkind = \"zim\"\napp_id = 1\nserver_secret = \"s\"\n\
             [targets.t]\nkind = \"tencent\"\nsdk_app_id = 1\nadmin_identifier = \"a\"\nsecret_key = \"k\"\n",
        )
        .unwrap();
        cfg.targets["z"].clone()
    }

    #[test]
    fn reasons_name_the_field_and_the_limit() {
        let z = zim();
        let u = parse_line(br#"{"id":"a","name":"Ann","avatar":""}"#, &z).unwrap();
        assert_eq!(u.name.as_deref(), Some("Ann"));
        assert_eq!(u.avatar, None);
        assert!(parse_line(b"{", &z).unwrap_err().contains("invalid JSON"));
        assert!(parse_line(br#"{"name":"x"}"#, &z)
            .unwrap_err()
            .contains("missing field `id`"));
        assert!(parse_line(br#"{"id":"a/b"}"#, &z).unwrap_err().contains("'/'"));
        let long = format!(r#"{{"id":"a","name":"{}"}}"#, "x".repeat(257));
        let e = parse_line(long.as_bytes(), &z).unwrap_err();
        assert!(e.contains("name is 257 bytes") && e.contains("256"), "{e}");
        let long = format!(r#"{{"id":"a","avatar":"{}"}}"#, "x".repeat(501));
        assert!(parse_line(long.as_bytes(), &z).unwrap_err().contains("avatar"));
    }
}
