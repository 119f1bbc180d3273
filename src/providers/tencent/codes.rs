//! Tencent IM error codes: one named constant per code chatferry meets,
//! and the class each falls in. The client, the simulator and the tests
//! all use these names.
//!
//! Tencent: REST API 公共错误码 (cloud.tencent.com/document/product/269,
//! codes 60000–79999), 导入单聊消息 (importmsg's own codes), 导入单个账号 /
//! 导入多个账号 (account_import, multiaccount_import). The classes follow
//! providers.md, "Return codes that matter" (corrected). Tencent
//! deduplicates imports on (MsgSeq, MsgRandom, MsgTimeStamp), so a
//! transient error is safe to resend.

/// Success.
pub const SUCCESS: i64 = 0;
/// The sender's account is invalid or was not imported (importmsg).
pub const SENDER_NOT_IMPORTED: i64 = 20003;
/// Network error: retry (importmsg).
pub const NETWORK_ERROR: i64 = 20004;
/// Server internal error: retry (importmsg).
pub const SERVER_INTERNAL: i64 = 20005;
/// The URL lacks `identifier` or `usersig`, or they are malformed.
pub const URL_PARAMS_INVALID: i64 = 60004;
/// The UserSig's identity is wrong (providers.md, UserSig row).
pub const IDENTIFIER_INVALID: i64 = 60005;
/// The SDKAppID is invalid: wrong app.
pub const SDKAPPID_INVALID: i64 = 60006;
/// REST call rate over the limit.
pub const RATE_LIMITED_60007: i64 = 60007;
/// The service timed out: retry.
pub const SERVICE_TIMEOUT: i64 = 60008;
/// Request resource error: the REST API path is unknown.
pub const UNKNOWN_API: i64 = 60009;
/// The request needs the App admin's identity.
pub const NOT_ADMIN: i64 = 60010;
/// SDKAppID call rate over the limit.
pub const RATE_LIMITED_60011: i64 = 60011;
/// The REST API needs `sdkappid` in the URL.
pub const SDKAPPID_MISSING: i64 = 60012;
/// Account swap timed out: retry.
pub const ACCOUNT_SWAP_TIMEOUT: i64 = 60014;
/// The SDKAppID is disabled.
pub const SDKAPPID_DISABLED: i64 = 60016;
/// The request is disabled.
pub const REQUEST_DISABLED: i64 = 60017;
/// Too many requests.
pub const RATE_LIMITED_60018: i64 = 60018;
/// Too many requests.
pub const RATE_LIMITED_60019: i64 = 60019;
/// The plan (套餐包) expired.
pub const PLAN_EXPIRED: i64 = 60020;
/// The caller's IP is not allowed.
pub const IP_NOT_ALLOWED: i64 = 60021;
/// UserSig expired: regenerate once.
pub const USERSIG_EXPIRED: i64 = 70001;
/// UserSig too short or empty.
pub const USERSIG_EMPTY: i64 = 70002;
/// UserSig malformed.
pub const USERSIG_MALFORMED: i64 = 70003;
/// UserSig malformed.
pub const USERSIG_MALFORMED_70005: i64 = 70005;
/// UserSig verification failed: wrong key.
pub const USERSIG_BAD_SIGNATURE: i64 = 70009;
/// UserSig for another identifier.
pub const USERSIG_WRONG_IDENTIFIER: i64 = 70013;
/// UserSig for another SDKAppID.
pub const USERSIG_WRONG_APP: i64 = 70014;
/// Verification key not found.
pub const USERSIG_NO_KEY: i64 = 70016;
/// SDKAppID not found: UserSig verification failed.
pub const SDKAPPID_NOT_FOUND: i64 = 70020;
/// Too many bad UserSigs: wait a minute.
pub const SIG_LOCKOUT: i64 = 70050;
/// The account is blacklisted.
pub const ACCOUNT_BLACKLISTED: i64 = 70051;
/// UserSig invalidated: regenerate once.
pub const USERSIG_INVALIDATED: i64 = 70052;
/// The account has not been imported.
pub const ACCOUNT_NOT_IMPORTED: i64 = 70107;
/// Internal timeout: retry.
pub const INTERNAL_TIMEOUT: i64 = 70169;
/// Internal timeout: retry.
pub const INTERNAL_TIMEOUT_70202: i64 = 70202;
/// Trial app account cap reached.
pub const TRIAL_ACCOUNT_CAP: i64 = 70398;
/// Invalid parameters (account_import, multiaccount_import).
pub const ACCOUNT_PARAMS_INVALID: i64 = 70402;
/// The request needs App admin rights (account APIs).
pub const NEEDS_ADMIN: i64 = 70403;
/// Server internal error: retry.
pub const INTERNAL_ERROR: i64 = 70500;
/// JSON parse failed (importmsg).
pub const JSON_INVALID: i64 = 90001;
/// MsgBody invalid (importmsg).
pub const MSG_BODY_INVALID: i64 = 90002;
/// To_Account missing or invalid.
pub const TO_ACCOUNT_INVALID: i64 = 90003;
/// A request field is invalid (providers.md, bad-message row).
pub const BAD_REQUEST_90004: i64 = 90004;
/// MsgRandom missing or invalid.
pub const MSG_RANDOM_INVALID: i64 = 90005;
/// MsgTimeStamp missing or invalid.
pub const MSG_TIMESTAMP_INVALID: i64 = 90006;
/// MsgBody is not an array.
pub const MSG_BODY_NOT_ARRAY: i64 = 90007;
/// From_Account missing or invalid.
pub const FROM_ACCOUNT_INVALID: i64 = 90008;
/// The request needs App admin rights (importmsg).
pub const IMPORT_NEEDS_ADMIN: i64 = 90009;
/// A field has the wrong type or value.
pub const FIELD_INVALID: i64 = 90010;
/// To_Account has not been imported.
pub const TO_ACCOUNT_NOT_IMPORTED: i64 = 90012;
/// Offline push info invalid.
pub const PUSH_INFO_INVALID: i64 = 90026;
/// SyncFromOldSystem invalid.
pub const SYNC_MODE_INVALID: i64 = 90030;
/// The account does not exist.
pub const ACCOUNT_MISSING_90048: i64 = 90048;
/// Internal errors: retry.
pub const INTERNAL_90992: i64 = 90992;
pub const INTERNAL_90994: i64 = 90994;
pub const INTERNAL_90995: i64 = 90995;
pub const INTERNAL_91000: i64 = 91000;
/// The message body is too long.
pub const BODY_TOO_LONG: i64 = 80002;
/// The JSON packet is too long.
pub const PACKET_TOO_LONG: i64 = 93000;

/// A profile value is longer than 500 bytes (导入单个账号).
pub const PROFILE_VALUE_TOO_LONG: i64 = 40601;

/// Longest `Nick` and `FaceUrl`, in bytes: the account pages refuse a
/// profile value over 500 bytes (40601).
pub const MAX_PROFILE_VALUE_BYTES: usize = 500;

pub const RATE_LIMITED: &[i64] = &[
    RATE_LIMITED_60007,
    RATE_LIMITED_60011,
    RATE_LIMITED_60018,
    RATE_LIMITED_60019,
];
/// Transient: safe to resend (Tencent dedups).
pub const TRANSIENT: &[i64] = &[
    SERVICE_TIMEOUT,
    ACCOUNT_SWAP_TIMEOUT,
    NETWORK_ERROR,
    SERVER_INTERNAL,
    INTERNAL_TIMEOUT,
    INTERNAL_TIMEOUT_70202,
    INTERNAL_ERROR,
    INTERNAL_90992,
    INTERNAL_90994,
    INTERNAL_90995,
    INTERNAL_91000,
];
/// Expired or invalidated: regenerate once.
pub const SIG_EXPIRED: &[i64] = &[USERSIG_EXPIRED, USERSIG_INVALIDATED];
/// Malformed or wrong: regenerating will not help.
pub const SIG_INVALID: &[i64] = &[
    USERSIG_EMPTY,
    USERSIG_MALFORMED,
    USERSIG_MALFORMED_70005,
    USERSIG_BAD_SIGNATURE,
    USERSIG_WRONG_IDENTIFIER,
    USERSIG_WRONG_APP,
    USERSIG_NO_KEY,
    SDKAPPID_NOT_FOUND,
    URL_PARAMS_INVALID,
    IDENTIFIER_INVALID,
];
/// Not an admin, wrong app, or the app is unusable: halt the target.
pub const APP_UNUSABLE: &[i64] = &[
    SDKAPPID_INVALID,
    NOT_ADMIN,
    IMPORT_NEEDS_ADMIN,
    NEEDS_ADMIN,
    SDKAPPID_DISABLED,
    REQUEST_DISABLED,
    PLAN_EXPIRED,
    IP_NOT_ALLOWED,
    ACCOUNT_BLACKLISTED,
];
pub const BAD_MESSAGE: &[i64] = &[
    JSON_INVALID,
    MSG_BODY_INVALID,
    TO_ACCOUNT_INVALID,
    BAD_REQUEST_90004,
    MSG_RANDOM_INVALID,
    MSG_TIMESTAMP_INVALID,
    MSG_BODY_NOT_ARRAY,
    FROM_ACCOUNT_INVALID,
    FIELD_INVALID,
    PUSH_INFO_INVALID,
    SYNC_MODE_INVALID,
    PACKET_TOO_LONG,
    BODY_TOO_LONG,
    PROFILE_VALUE_TOO_LONG,
];
/// An account is missing: permanent until imported.
pub const ACCOUNT_MISSING: &[i64] = &[
    TO_ACCOUNT_NOT_IMPORTED,
    ACCOUNT_MISSING_90048,
    ACCOUNT_NOT_IMPORTED,
    SENDER_NOT_IMPORTED,
];

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
    /// Not an admin, wrong or disabled app, expired plan, IP not allowed.
    AppUnusable,
    BadMessage,
    AccountMissing,
    /// Trial app account cap: nothing more can be imported.
    AppCapped,
    Unrecognized,
}

/// Classifies one code.
pub fn classify(code: i64) -> Class {
    let tables = [
        (RATE_LIMITED, Class::RateLimited),
        (TRANSIENT, Class::Transient),
        (SIG_EXPIRED, Class::SigExpired),
        (SIG_INVALID, Class::SigInvalid),
        (APP_UNUSABLE, Class::AppUnusable),
        (BAD_MESSAGE, Class::BadMessage),
    ];
    match code {
        SUCCESS => Class::Success,
        SIG_LOCKOUT => Class::SigLockout,
        TRIAL_ACCOUNT_CAP => Class::AppCapped,
        c if ACCOUNT_MISSING.contains(&c) => Class::AccountMissing,
        _ => crate::providers::class_in(code, &tables).unwrap_or(Class::Unrecognized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{assert_classes, assert_disjoint};

    /// providers.md's corrected table, written out as numbers.
    #[test]
    fn every_documented_code_has_its_class() {
        let table: &[(&[i64], Class)] = &[
            (&[60007, 60011, 60018, 60019], Class::RateLimited),
            (&[70050], Class::SigLockout),
            (
                &[
                    60008, 60014, 20004, 20005, 70169, 70202, 70500, 90992, 90994, 90995, 91000,
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
            (
                &[60006, 60010, 90009, 70403, 60016, 60017, 60020, 60021, 70051],
                Class::AppUnusable,
            ),
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
        assert_classes(table, classify);
    }

    #[test]
    fn no_code_sits_in_two_classes() {
        assert_disjoint(&[
            RATE_LIMITED,
            TRANSIENT,
            SIG_EXPIRED,
            SIG_INVALID,
            APP_UNUSABLE,
            BAD_MESSAGE,
            ACCOUNT_MISSING,
        ]);
    }
}

#[cfg(test)]
mod answers {
    use super::super::classify_answer;
    use super::*;
    use crate::providers::Outcome;
    use serde_json::json;

    fn outcome(code: i64) -> Outcome {
        classify_answer(
            &json!({"ActionStatus": "FAIL", "ErrorCode": code, "ErrorInfo": "i"}),
            Some(1),
        )
    }

    /// Tencent dedups imports, so a transient answer is simply resent;
    /// an app-level answer halts the target.
    #[test]
    fn each_class_becomes_its_outcome() {
        for &c in TRANSIENT.iter().chain(RATE_LIMITED).chain(&[SIG_LOCKOUT]) {
            assert!(
                matches!(outcome(c), Outcome::RetryLater { code: Some(x), .. } if x == c),
                "{c}"
            );
        }
        for &c in APP_UNUSABLE
            .iter()
            .chain(SIG_EXPIRED)
            .chain(SIG_INVALID)
            .chain(&[TRIAL_ACCOUNT_CAP])
        {
            assert!(
                matches!(outcome(c), Outcome::Halt { code: Some(x), .. } if x == c),
                "{c}"
            );
        }
        for &c in BAD_MESSAGE.iter().chain(ACCOUNT_MISSING).chain(&[123456]) {
            assert!(
                matches!(outcome(c), Outcome::Permanent { code: Some(x), .. } if x == c),
                "{c}"
            );
        }
    }
}
