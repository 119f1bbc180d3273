//! The users (ZIM) or accounts (Tencent) of one simulated app, with the
//! profile registered for each: what both providers' import calls check
//! their senders and recipients against.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};

/// A registered profile: ZIM `UserName`/`UserAvatar`, Tencent
/// `Nick`/`FaceUrl`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Profile {
    pub name: Option<String>,
    pub avatar: Option<String>,
}

/// The users of one app.
#[derive(Debug)]
pub(crate) struct Directory {
    ids: HashSet<String>,
    /// Only users registered through the API have one.
    profiles: HashMap<String, Profile>,
}

impl Directory {
    /// The users given at start (`--users`), without profiles.
    pub(crate) fn new(users: &[String]) -> Self {
        Self {
            ids: users.iter().cloned().collect(),
            profiles: HashMap::new(),
        }
    }

    /// How many users there are.
    pub(crate) fn count(&self) -> usize {
        self.ids.len()
    }

    /// Whether `id` is registered.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Whether `id` may take part in an import: registered, or registered
    /// now when the simulator registers unknown users on first use.
    pub(crate) fn admit(&mut self, id: &str, auto_register: bool) -> bool {
        if self.ids.contains(id) {
            return true;
        }
        if auto_register {
            self.ids.insert(id.to_string());
        }
        auto_register
    }

    /// Registers `id` with `profile`, replacing the profile it had.
    pub(crate) fn register(&mut self, id: String, profile: Profile) {
        self.profiles.insert(id.clone(), profile);
        self.ids.insert(id);
    }

    /// `{"app": ID, "users": [{"id", "name", "avatar"}]}`, sorted by id
    /// (`GET /_sim/users`).
    pub(crate) fn json(&self, app: u32) -> Value {
        let mut ids: Vec<&String> = self.ids.iter().collect();
        ids.sort();
        let users: Vec<Value> = ids
            .into_iter()
            .map(|id| {
                let p = self.profiles.get(id).cloned().unwrap_or_default();
                json!({"id": id, "name": p.name, "avatar": p.avatar})
            })
            .collect();
        json!({"app": app, "users": users})
    }
}

/// Reads `--users FILE`: one id per line; blank lines and `#` comments skipped.
pub(crate) fn read_users(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the users file {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_registers_only_when_asked() {
        let mut d = Directory::new(&["a".to_string()]);
        assert!(d.admit("a", false));
        assert!(!d.admit("b", false));
        assert!(!d.contains("b"));
        assert!(d.admit("b", true));
        assert!(d.contains("b"));
        d.register(
            "c".into(),
            Profile {
                name: Some("Cee".into()),
                avatar: None,
            },
        );
        let v = d.json(7);
        assert_eq!(v["app"], 7);
        assert_eq!(v["users"][2], json!({"id": "c", "name": "Cee", "avatar": null}));
        assert_eq!(d.count(), 3);
    }
}
