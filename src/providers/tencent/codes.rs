//! Tencent IM error codes, classified (providers.md, "Return codes that matter").

/// What a Tencent `ErrorCode` means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    RateLimited,
    /// 70050: too many bad UserSigs; wait a minute before anything else.
    SigLockout,
    Transient,
    /// Expired or invalidated: regenerate once.
    SigExpired,
    /// Malformed or wrong: regenerating will not help.
    SigInvalid,
    NotAdmin,
    BadMessage,
    AccountMissing,
    /// Trial app account cap: nothing more can be imported.
    AppCapped,
    Unrecognized,
}

/// Classifies one code.
pub fn classify(code: i64) -> Class {
    match code {
        0 => Class::Success,
        60007 | 60011 | 60018 | 60019 => Class::RateLimited,
        70050 => Class::SigLockout,
        60008 | 20004 | 20005 | 70169 | 70202 | 70500 | 90992 | 90994 | 90995 | 91000 => Class::Transient,
        70001 | 70052 => Class::SigExpired,
        70002 | 70003 | 70005 | 70009 | 70013 | 70014 | 70016 | 70020 | 60004 | 60005 => Class::SigInvalid,
        60006 | 60010 | 90009 | 70403 => Class::NotAdmin,
        90001 | 90002 | 90003 | 90004 | 90005 | 90006 | 90007 | 90008 | 90010 | 90026 | 90030 | 93000
        | 80002 => Class::BadMessage,
        90012 | 90048 | 70107 | 20003 => Class::AccountMissing,
        70398 => Class::AppCapped,
        _ => Class::Unrecognized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_code_has_its_class() {
        let table: &[(&[i64], Class)] = &[
            (&[60007, 60011, 60018, 60019], Class::RateLimited),
            (&[70050], Class::SigLockout),
            (
                &[
                    60008, 20004, 20005, 70169, 70202, 70500, 90992, 90994, 90995, 91000,
                ],
                Class::Transient,
            ),
            (&[70001, 70052], Class::SigExpired),
            (
                &[
                    70002, 70003, 70005, 70009, 70013, 70014, 70016, 70020, 60004, 60005,
                ],
                Class::SigInvalid,
            ),
            (&[60006, 60010, 90009, 70403], Class::NotAdmin),
            (
                &[
                    90001, 90002, 90003, 90004, 90005, 90006, 90007, 90008, 90010, 90026, 90030, 93000, 80002,
                ],
                Class::BadMessage,
            ),
            (&[90012, 90048, 70107, 20003], Class::AccountMissing),
            (&[70398], Class::AppCapped),
            (&[0], Class::Success),
            (&[123456], Class::Unrecognized),
        ];
        for (codes, class) in table {
            for c in *codes {
                assert_eq!(classify(*c), *class, "{c}");
            }
        }
    }
}
