//! ZIM return codes: one named constant per code chatferry meets, and the
//! class each falls in. The client, the simulator and the tests all use
//! these names, so a code means the same thing everywhere.
//!
//! ZEGO: zim-server/return-codes.md (全局返回码) and
//! zim-server/user/batch-register-users.md. The classes follow
//! providers.md, "Return codes that matter" (corrected): `ImportPeerMsg`
//! has no idempotency key, so only an answer that proves nothing was
//! written may be retried blindly; a server-side failure may come after
//! the write.

// ----- public codes (公共返回码) -----

/// 请求成功.
pub const SUCCESS: i64 = 0;
/// 请求失败: 服务器繁忙 (server busy).
pub const SERVER_BUSY: i64 = 1;
/// 输入参数错误.
pub const BAD_PARAMETER: i64 = 2;
/// 认证失败.
pub const AUTH_FAILED: i64 = 3;
/// 每秒请求数超过系统设定值 (requests per second over the limit).
pub const TOO_MANY_REQUESTS: i64 = 7;
/// 用户不存在: the user never logged in to ZIM.
pub const USER_NEVER_LOGGED_IN: i64 = 51102;
/// 请求 DB 时失败 (DB request failed).
pub const DB_REQUEST_FAILED: i64 = 105001;
/// URL 地址中的 Host 错误 (wrong host).
pub const WRONG_HOST: i64 = 100000000;
/// AppId 字段格式错误.
pub const APP_ID_MALFORMED: i64 = 100000001;
/// Timestamp 字段为空.
pub const TIMESTAMP_MISSING: i64 = 100000002;
/// Timestamp 字段格式错误.
pub const TIMESTAMP_MALFORMED: i64 = 100000003;
/// 签名过期: the signature's Timestamp is outside the server's window.
pub const SIGNATURE_EXPIRED: i64 = 100000004;
/// 签名错误.
pub const SIGNATURE_WRONG: i64 = 100000005;
/// Action 为空.
pub const ACTION_MISSING: i64 = 100000006;
/// 不支持的 Action.
pub const ACTION_UNSUPPORTED: i64 = 100000007;
/// SignatureNonce 字段为空.
pub const NONCE_MISSING: i64 = 100000008;
/// Signature 字段为空.
pub const SIGNATURE_MISSING: i64 = 100000009;
/// 获取 ServerSecret 失败 (内部错误).
pub const SERVER_SECRET_FAILED: i64 = 100000010;
/// 获取 App 配置失败 (内部错误).
pub const APP_CONFIG_FAILED: i64 = 100000011;
/// 读取 HTTP 包体失败 (内部错误).
pub const READ_BODY_FAILED: i64 = 100000012;
/// SignatureVersion 字段为空.
pub const SIGNATURE_VERSION_MISSING: i64 = 100000013;
/// 不支持的 SignatureVersion.
pub const SIGNATURE_VERSION_UNSUPPORTED: i64 = 100000014;
/// 网关内部错误 (gateway internal error).
pub const GATEWAY_INTERNAL: i64 = 100000015;
/// App 未配置正式环境 (no production environment).
pub const NO_PRODUCTION_ENV: i64 = 100000016;
/// App 未开通该服务 (service not enabled).
pub const SERVICE_NOT_ENABLED: i64 = 100000017;

// ----- business codes (业务返回码) -----

/// 业务类通用错误: 服务端出错.
pub const BUSINESS_ERROR: i64 = 660000001;
/// 输入参数错误: a parameter is missing or invalid.
pub const INVALID_INPUT: i64 = 660000002;
/// 逻辑处理错误: 服务端处理异常.
pub const LOGIC_ERROR: i64 = 660000003;
/// 用户个数超过限制 (too many users in one call).
pub const TOO_MANY_USERS: i64 = 660000011;
/// UserID 长度超过限制 (32 bytes).
pub const USER_ID_TOO_LONG: i64 = 660000012;
/// 不存在的用户 ID，或者用户已经登出.
pub const USER_UNKNOWN_OR_LOGGED_OUT: i64 = 660200001;
/// 调用接口的频率超出了 AppID 级别限制.
pub const APP_RATE_LIMITED: i64 = 660300005;
/// 消息大小超出限制.
pub const MESSAGE_TOO_LARGE: i64 = 660400001;
/// 操作者用户未注册.
pub const OPERATOR_NOT_REGISTERED: i64 = 660500002;
/// 文本审核请求出错 (the moderation request failed, not the text).
pub const TEXT_MODERATION_ERROR: i64 = 660500004;
/// 发送的文本消息没有通过审核.
pub const TEXT_MODERATION_REFUSED: i64 = 660500005;
/// 图片审核请求出错.
pub const IMAGE_MODERATION_ERROR: i64 = 660500006;
/// 发送的图片消息没有通过审核.
pub const IMAGE_MODERATION_REFUSED: i64 = 660500007;
/// 业务后台判断此消息应当"不发送" (your before-send callback refused it).
pub const CALLBACK_REFUSED: i64 = 660500010;
/// ZIM 服务端执行 db 操作出错.
pub const SERVER_DB_ERROR: i64 = 660600015;
/// 发送消息参数错误.
pub const SEND_PARAMETER_INVALID: i64 = 660600021;
/// 发送多媒体消息，获取重定向地址失败 (media redirect failed).
pub const MEDIA_REDIRECT_FAILED: i64 = 660600022;
/// 消息长度超过限制. The simulator also answers it for a
/// `SendMessageTime` older than the retention window (its own guess).
pub const MESSAGE_LENGTH_EXCEEDED: i64 = 660600023;
/// FromUserId 不能和 ToUserId 相等.
pub const FROM_EQUALS_TO: i64 = 660600030;
/// 调用 UserRegister 接口的频率超出限制.
pub const REGISTER_RATE_LIMITED: i64 = 660700001;
/// 用户已存在: success for a migration (also as a whole call's `Code`,
/// when every user of the call existed).
pub const USER_EXISTS: i64 = 660700002;
/// UserName 长度超过限制 (256 bytes).
pub const USER_NAME_TOO_LONG: i64 = 660700006;
/// UserAvatar 地址长度超过限制 (500 bytes).
pub const USER_AVATAR_TOO_LONG: i64 = 660700007;
/// 用户不存在: 请先注册用户.
pub const USER_DOES_NOT_EXIST: i64 = 660700012;
/// 用户未注册: 请先注册用户.
pub const USER_NOT_REGISTERED: i64 = 660700015;
/// 传递的时间戳大于当前时间 (SendMessageTime in the future).
pub const TIME_IN_FUTURE: i64 = 660800046;

/// Longest `UserName` UserRegister takes, in bytes (batch-register-users.md).
pub const MAX_USER_NAME_BYTES: usize = 256;
/// Longest `UserAvatar` UserRegister takes, in bytes (batch-register-users.md).
pub const MAX_USER_AVATAR_BYTES: usize = 500;

/// Rate limited: nothing written; slow down and retry.
pub const RATE_LIMITED: &[i64] = &[TOO_MANY_REQUESTS, APP_RATE_LIMITED, REGISTER_RATE_LIMITED];
/// Server-side failures: the write may have happened before the error.
pub const SERVER_ERRORS: &[i64] = &[
    SERVER_BUSY,
    DB_REQUEST_FAILED,
    SERVER_SECRET_FAILED,
    APP_CONFIG_FAILED,
    READ_BODY_FAILED,
    GATEWAY_INTERNAL,
    BUSINESS_ERROR,
    LOGIC_ERROR,
    SERVER_DB_ERROR,
    MEDIA_REDIRECT_FAILED,
    TEXT_MODERATION_ERROR,
    IMAGE_MODERATION_ERROR,
];
/// Credentials or public parameters refused: nothing written.
pub const AUTH: &[i64] = &[
    AUTH_FAILED,
    SIGNATURE_WRONG,
    APP_ID_MALFORMED,
    TIMESTAMP_MISSING,
    TIMESTAMP_MALFORMED,
    NONCE_MISSING,
    SIGNATURE_MISSING,
    SIGNATURE_VERSION_MISSING,
    SIGNATURE_VERSION_UNSUPPORTED,
];
/// The endpoint or the app cannot be used: halt the target.
pub const APP_UNUSABLE: &[i64] = &[
    WRONG_HOST,
    ACTION_MISSING,
    ACTION_UNSUPPORTED,
    NO_PRODUCTION_ENV,
    SERVICE_NOT_ENABLED,
];
/// The request itself is refused; resending it as it is cannot help.
pub const BAD_MESSAGE: &[i64] = &[
    BAD_PARAMETER,
    INVALID_INPUT,
    MESSAGE_TOO_LARGE,
    SEND_PARAMETER_INVALID,
    MESSAGE_LENGTH_EXCEEDED,
    FROM_EQUALS_TO,
    TIME_IN_FUTURE,
    USER_ID_TOO_LONG,
    TOO_MANY_USERS,
    USER_NAME_TOO_LONG,
    USER_AVATAR_TOO_LONG,
];
/// Refused by moderation or by the app's own callback.
pub const MODERATION: &[i64] = &[
    TEXT_MODERATION_REFUSED,
    IMAGE_MODERATION_REFUSED,
    CALLBACK_REFUSED,
];
/// A user is not registered: permanent until registered.
pub const USER_MISSING: &[i64] = &[
    USER_NEVER_LOGGED_IN,
    USER_UNKNOWN_OR_LOGGED_OUT,
    OPERATOR_NOT_REGISTERED,
    USER_DOES_NOT_EXIST,
    USER_NOT_REGISTERED,
];

/// What a ZIM `Code` means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    RateLimited,
    /// May have been applied: in doubt for a write, retryable for a read.
    ServerError,
    /// A signature timestamp outside the server's skew window: one fresh
    /// signature may fix it.
    ClockSkew,
    Auth,
    AppUnusable,
    BadMessage,
    Moderation,
    UserMissing,
    /// Not documented: treated like a server error for a write (in doubt).
    Unrecognized,
}

/// Classifies one code.
pub fn classify(code: i64) -> Class {
    let tables = [
        (RATE_LIMITED, Class::RateLimited),
        (SERVER_ERRORS, Class::ServerError),
        (AUTH, Class::Auth),
        (APP_UNUSABLE, Class::AppUnusable),
        (BAD_MESSAGE, Class::BadMessage),
        (MODERATION, Class::Moderation),
        (USER_MISSING, Class::UserMissing),
    ];
    match code {
        SUCCESS => Class::Success,
        SIGNATURE_EXPIRED => Class::ClockSkew,
        _ => crate::providers::class_in(code, &tables).unwrap_or(Class::Unrecognized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{assert_classes, assert_disjoint};

    /// providers.md's corrected table, written out as numbers, so a wrong
    /// constant shows up here and not only in a renamed list.
    #[test]
    fn every_documented_code_has_its_class() {
        let table: &[(&[i64], Class)] = &[
            (&[0], Class::Success),
            (&[7, 660300005, 660700001], Class::RateLimited),
            (
                &[
                    1, 105001, 100000010, 100000011, 100000012, 100000015, 660000001, 660000003, 660600015,
                    660600022, 660500004, 660500006,
                ],
                Class::ServerError,
            ),
            (&[100000004], Class::ClockSkew),
            (
                &[
                    3, 100000005, 100000001, 100000002, 100000003, 100000008, 100000009, 100000013, 100000014,
                ],
                Class::Auth,
            ),
            (
                &[100000000, 100000006, 100000007, 100000016, 100000017],
                Class::AppUnusable,
            ),
            (
                &[
                    2, 660000002, 660400001, 660600021, 660600023, 660600030, 660800046, 660000012,
                    660000011, 660700006, 660700007,
                ],
                Class::BadMessage,
            ),
            (&[660500005, 660500007, 660500010], Class::Moderation),
            (
                &[51102, 660200001, 660500002, 660700012, 660700015],
                Class::UserMissing,
            ),
            (&[424242, 660500009, -1], Class::Unrecognized),
        ];
        assert_classes(table, classify);
    }

    #[test]
    fn no_code_sits_in_two_classes() {
        assert_disjoint(&[
            RATE_LIMITED,
            SERVER_ERRORS,
            AUTH,
            APP_UNUSABLE,
            BAD_MESSAGE,
            MODERATION,
            USER_MISSING,
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
        classify_answer(&json!({"Code": code, "Message": "m", "RequestId": "r1"}))
    }

    /// What each class becomes for `ImportPeerMsg`: only answers that
    /// prove nothing was written are retried; server errors and unknown
    /// codes are in doubt and carry their code.
    #[test]
    fn each_class_becomes_its_outcome() {
        for &c in SERVER_ERRORS.iter().chain(&[424242, 660500009]) {
            match outcome(c) {
                Outcome::Unknown { code, reason } => {
                    assert_eq!(code, Some(c));
                    assert!(reason.contains(&c.to_string()), "{reason}");
                }
                o => panic!("{c}: {o:?}"),
            }
        }
        for &c in RATE_LIMITED {
            assert!(
                matches!(outcome(c), Outcome::RetryLater { throttled: true, .. }),
                "{c}"
            );
        }
        for &c in AUTH.iter().chain(APP_UNUSABLE).chain(&[SIGNATURE_EXPIRED]) {
            assert!(
                matches!(outcome(c), Outcome::Halt { code: Some(x), .. } if x == c),
                "{c}"
            );
        }
        for &c in BAD_MESSAGE.iter().chain(MODERATION).chain(USER_MISSING) {
            assert!(
                matches!(outcome(c), Outcome::Permanent { code: Some(x), .. } if x == c),
                "{c}"
            );
        }
        assert!(matches!(outcome(SUCCESS), Outcome::Accepted(_)));
    }
}

#[cfg(test)]
mod register {
    use super::super::{judge_register, RegisterStep};
    use super::*;
    use serde_json::json;

    fn err(user: &str, code: i64) -> serde_json::Value {
        json!({"UserId": user, "SubCode": code, "SubMessage": "m"})
    }

    /// ZEGO: zim-server/user/batch-register-users.md, answer by answer.
    #[test]
    fn registration_answers_as_documented() {
        let ids = ["a", "b", "c"];
        // Every user registered.
        let r = judge_register(&ids, &json!({"Code": 0, "ErrorList": []}));
        assert_eq!(
            r,
            RegisterStep::Done {
                ok: 3,
                failed: vec![]
            }
        );
        // Partial: one existed (fine), one refused.
        let v = json!({"Code": 0, "ErrorList": [err("a", USER_EXISTS), err("b", USER_ID_TOO_LONG)]});
        match judge_register(&ids, &v) {
            RegisterStep::Done { ok: 2, failed } => {
                assert_eq!(failed.len(), 1);
                assert_eq!(failed[0].0, "b");
                assert!(failed[0].1.contains("660000012"), "{failed:?}");
            }
            other => panic!("{other:?}"),
        }
        // Every user existed: a non-zero Code with the list is success.
        let v = json!({"Code": USER_EXISTS, "ErrorList": ids.map(|u| err(u, USER_EXISTS))});
        assert_eq!(
            judge_register(&ids, &v),
            RegisterStep::Done {
                ok: 3,
                failed: vec![]
            }
        );
        let v = json!({"Code": USER_EXISTS});
        assert_eq!(
            judge_register(&ids, &v),
            RegisterStep::Done {
                ok: 3,
                failed: vec![]
            }
        );
        // A refused call: rate limits and server errors are retried (it
        // is idempotent), credentials stop, bad input fails its users.
        for c in [REGISTER_RATE_LIMITED, DB_REQUEST_FAILED, 424242] {
            assert!(
                matches!(judge_register(&ids, &json!({"Code": c})), RegisterStep::Retry(_)),
                "{c}"
            );
        }
        assert!(matches!(
            judge_register(&ids, &json!({"Code": SIGNATURE_WRONG})),
            RegisterStep::Fail(_)
        ));
        match judge_register(&ids, &json!({"Code": INVALID_INPUT, "ErrorList": []})) {
            RegisterStep::Done { ok: 0, failed } => assert_eq!(failed.len(), 3),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge_register(&ids, &json!({"Nope": 1})),
            RegisterStep::Retry(_)
        ));
    }
}

// ----- Codes the simulator answers with -----

/// The server-side failures the simulator's `transient` and
/// `apply_then_error` faults answer by default: the general server errors
/// of ZEGO's zim-server/return-codes.md (请求失败, 请求 DB 时失败, 网关内部错误,
/// 业务类通用错误, 逻辑处理错误, ZIM 服务端执行 db 操作出错). The page does not
/// say whether the write happened before such an answer.
pub const SIMULATED_SERVER_ERRORS: &[i64] = &[
    SERVER_BUSY,
    DB_REQUEST_FAILED,
    GATEWAY_INTERNAL,
    BUSINESS_ERROR,
    LOGIC_ERROR,
    SERVER_DB_ERROR,
];
/// A `SignatureNonce` used again within the signature window. ZEGO
/// documents no code for a replay (zim-server/accessing-server-apis.md
/// only asks for a new signature on every call); the simulator answers
/// 100000008 (return-codes.md: SignatureNonce 字段为空).
pub const NONCE_REPLAYED: i64 = NONCE_MISSING;
/// A `SendMessageTime` older than the plan's history retention:
/// zim-server/messaging/import-one-to-one-messages.md says only that it
/// 不能早于套餐包规定的历史消息保存天数, with no code; the simulator answers
/// 660600023 (return-codes.md: 消息长度超过限制), its own guess.
pub const SEND_TIME_BEYOND_RETENTION: i64 = MESSAGE_LENGTH_EXCEEDED;
/// The whole-call `Code` of a UserRegister whose every user existed:
/// zim-server/user/batch-register-users.md says such a call fails with a
/// full `ErrorList` but not with which `Code`; the simulator answers
/// 660700002 (用户已存在).
pub const ALL_USERS_EXIST: i64 = USER_EXISTS;
