//! ZIM return codes, classified (providers.md, "Return codes that matter").

/// What a ZIM `Code` means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    RateLimited,
    Transient,
    /// A signature timestamp outside the server's skew window: one fresh
    /// signature may fix it.
    ClockSkew,
    Auth,
    BadMessage,
    UserMissing,
    AppUnusable,
    Unrecognized,
}

/// Classifies one code.
pub fn classify(code: i64) -> Class {
    match code {
        0 => Class::Success,
        7 | 660300005 | 660700001 => Class::RateLimited,
        1 | 105001 | 100000015 | 660000001 | 660000003 => Class::Transient,
        100000004 => Class::ClockSkew,
        3 | 100000005 | 100000001 | 100000002 | 100000003 | 100000008 | 100000009 | 100000013 | 100000014 => {
            Class::Auth
        }
        2 | 660000002 | 660400001 | 660600023 | 660600030 | 660800046 | 660000012 => Class::BadMessage,
        51102 | 660200001 | 660500002 | 660700012 | 660700015 => Class::UserMissing,
        100000016 | 100000017 => Class::AppUnusable,
        _ => Class::Unrecognized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_code_has_its_class() {
        for c in [7, 660300005, 660700001] {
            assert_eq!(classify(c), Class::RateLimited, "{c}");
        }
        for c in [1, 105001, 100000015, 660000001, 660000003] {
            assert_eq!(classify(c), Class::Transient, "{c}");
        }
        for c in [
            3, 100000005, 100000001, 100000002, 100000003, 100000008, 100000009, 100000013, 100000014,
        ] {
            assert_eq!(classify(c), Class::Auth, "{c}");
        }
        for c in [
            2, 660000002, 660400001, 660600023, 660600030, 660800046, 660000012,
        ] {
            assert_eq!(classify(c), Class::BadMessage, "{c}");
        }
        for c in [51102, 660200001, 660500002, 660700012, 660700015] {
            assert_eq!(classify(c), Class::UserMissing, "{c}");
        }
        assert_eq!(classify(100000004), Class::ClockSkew);
        assert_eq!(classify(100000016), Class::AppUnusable);
        assert_eq!(classify(100000017), Class::AppUnusable);
        assert_eq!(classify(0), Class::Success);
        assert_eq!(classify(424242), Class::Unrecognized);
    }
}
