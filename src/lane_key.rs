//! The key that names a lane: two user ids joined by the unit separator
//! U+001F, which the loader refuses in user ids, so a key always splits
//! back into the same two users. This type is the only place that knows
//! the separator.
//!
//! - a ZIM lane is one user's *view* of a conversation (`view`, `peer`):
//!   ImportPeerMsg writes one view at a time;
//! - a Tencent lane is the conversation itself, the same whichever user is
//!   named first.

use std::fmt;

/// A lane's key, as stored in `lanes.lane_key`.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct LaneKey(String);

impl LaneKey {
    /// What joins the two user ids.
    pub const SEPARATOR: char = '\u{1f}';

    /// One user's view of a conversation with `peer` (ZIM).
    pub fn view(view: &str, peer: &str) -> LaneKey {
        LaneKey(format!("{view}{}{peer}", Self::SEPARATOR))
    }

    /// The conversation of two users, the same key in either order.
    pub fn conversation(a: &str, b: &str) -> LaneKey {
        if a <= b {
            LaneKey::view(a, b)
        } else {
            LaneKey::view(b, a)
        }
    }

    /// A key read back from the database or a provider.
    pub fn from_stored(key: impl Into<String>) -> LaneKey {
        LaneKey(key.into())
    }

    /// The two users, in key order (view then peer for a ZIM view); None
    /// for a key without the separator.
    pub fn users(&self) -> Option<(&str, &str)> {
        self.0.split_once(Self::SEPARATOR)
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key for people: the two users joined by `joiner` (" / ").
    pub fn shown_with(&self, joiner: &str) -> String {
        self.0.replace(Self::SEPARATOR, joiner)
    }
}

impl fmt::Display for LaneKey {
    /// For logs and messages: `a / b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown_with(" / "))
    }
}

impl AsRef<str> for LaneKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_has_one_key_in_either_order() {
        assert_eq!(LaneKey::conversation("b", "a"), LaneKey::conversation("a", "b"));
        assert_eq!(LaneKey::conversation("b", "a").users(), Some(("a", "b")));
    }

    #[test]
    fn a_view_keeps_its_order_and_splits_back() {
        let k = LaneKey::view("zed", "amy");
        assert_eq!(k.users(), Some(("zed", "amy")));
        assert_eq!(k.as_str(), "zed\u{1f}amy");
        assert_eq!(k.to_string(), "zed / amy");
        assert_eq!(LaneKey::from_stored("nosep").users(), None);
    }
}
