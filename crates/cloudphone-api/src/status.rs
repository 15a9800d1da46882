//! The HTTP status and error body of every code on every operation: one rule, read from seed 001.
//!
//! The document says two things about an error's status, and they disagree:
//! - appendix 6.2 gives each code one status (`3002` with 200, `1000` with 400, `9999` with 500…);
//! - each operation's page ends with the statuses that operation answers (its 状态码 table):
//!   200/400/500 on most pages, only 200/400 on BatchReset, GetDeviceToken, BatchShowSku,
//!   CreateInstance, DeleteInstance and InstallApp.
//!
//! A page's per-status error tables carry no status information of their own: SetVideoConfig,
//! for one, lists the same codes under 200, 400 and 500. So the rule ([`status`]) is: **the
//! appendix's status for the code, if the operation's page lists that status; otherwise 400,
//! the error status every page lists** (each page lists `9999` in its 400 table). The statuses
//! of authentication, permission and throttling (401, 403, 429: table 6.1, which §3.3 names as
//! the full list) are answered the same on every page: no page lists them, and none gives those
//! codes another status. Codes the appendix omits take the status of the page table that lists
//! them ([`PAGE_ONLY`]).
//!
//! The body is `{"error_code", "error_msg"}` (§3.3), except where a page's own table for that
//! status names the message field otherwise: SyncCommand's 400 and 500 tables (4-6, 4-7) call
//! it `error_info` ([`Operation::error_message_field`]).

use serde::Serialize;

/// The 20 CloudDevice operations, each with its page in seed 001 (§4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    SyncCommand,
    AsyncCommand,
    GetTask,
    SetVideoConfig,
    BatchQueryStatus,
    BatchReset,
    GetDeviceToken,
    AssignInstance,
    UnassignInstance,
    ListInstances,
    BatchRebootInstance,
    BatchShowSku,
    CreateInstance,
    DeleteInstance,
    BatchPrepareInstances,
    ShowProgress,
    BatchBackupInstances,
    StopInstancesStreaming,
    ReleaseInstancesSession,
    InstallApp,
}

/// 200, 400 and 500: the status table of most pages.
const WITH_500: &[u16] = &[200, 400, 500];
/// 200 and 400 only.
const WITHOUT_500: &[u16] = &[200, 400];

impl Operation {
    /// Every operation, in the document's order.
    pub const ALL: [Operation; 20] = [
        Operation::SyncCommand,
        Operation::AsyncCommand,
        Operation::GetTask,
        Operation::SetVideoConfig,
        Operation::BatchQueryStatus,
        Operation::BatchReset,
        Operation::GetDeviceToken,
        Operation::AssignInstance,
        Operation::UnassignInstance,
        Operation::ListInstances,
        Operation::BatchRebootInstance,
        Operation::BatchShowSku,
        Operation::CreateInstance,
        Operation::DeleteInstance,
        Operation::BatchPrepareInstances,
        Operation::ShowProgress,
        Operation::BatchBackupInstances,
        Operation::StopInstancesStreaming,
        Operation::ReleaseInstancesSession,
        Operation::InstallApp,
    ];

    /// The operation's name, as its page title spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Operation::SyncCommand => "SyncCommand",
            Operation::AsyncCommand => "AsyncCommand",
            Operation::GetTask => "GetTask",
            Operation::SetVideoConfig => "SetVideoConfig",
            Operation::BatchQueryStatus => "BatchQueryStatus",
            Operation::BatchReset => "BatchReset",
            Operation::GetDeviceToken => "GetDeviceToken",
            Operation::AssignInstance => "AssignInstance",
            Operation::UnassignInstance => "UnassignInstance",
            Operation::ListInstances => "ListInstances",
            Operation::BatchRebootInstance => "BatchRebootInstance",
            Operation::BatchShowSku => "BatchShowSku",
            Operation::CreateInstance => "CreateInstance",
            Operation::DeleteInstance => "DeleteInstance",
            Operation::BatchPrepareInstances => "BatchPrepareInstances",
            Operation::ShowProgress => "ShowProgress",
            Operation::BatchBackupInstances => "BatchBackupInstances",
            Operation::StopInstancesStreaming => "StopInstancesStreaming",
            Operation::ReleaseInstancesSession => "ReleaseInstancesSession",
            Operation::InstallApp => "InstallApp",
        }
    }

    /// The method and path of its URI, as the page gives them (path parameters in braces).
    pub const fn route(self) -> (&'static str, &'static str) {
        match self {
            Operation::SyncCommand => ("POST", "/v1/instances/sync-command"),
            Operation::AsyncCommand => ("POST", "/v1/instances/async-command"),
            Operation::GetTask => ("GET", "/v1/instances/tasks/{task_id}"),
            Operation::SetVideoConfig => ("PUT", "/v1/instances/video-setting"),
            Operation::BatchQueryStatus => ("POST", "/v1/instances/batch-query-status"),
            Operation::BatchReset => ("POST", "/v1/instances/batch-reset"),
            Operation::GetDeviceToken => ("POST", "/v1/instances/{instance_id}/auth"),
            Operation::AssignInstance => ("POST", "/v1/instances/assign"),
            Operation::UnassignInstance => ("POST", "/v1/instances/unassign"),
            Operation::ListInstances => ("GET", "/v1/instances/batch-query"),
            Operation::BatchRebootInstance => ("POST", "/v1/instances/reboot"),
            Operation::BatchShowSku => ("GET", "/v1/instances/sku"),
            Operation::CreateInstance => ("POST", "/v1/instances/create"),
            Operation::DeleteInstance => ("POST", "/v1/instances/delete"),
            Operation::BatchPrepareInstances => ("POST", "/v1/instances/prepare"),
            Operation::ShowProgress => ("POST", "/v1/instances/prepare-progress"),
            Operation::BatchBackupInstances => ("POST", "/v1/instances/backup"),
            Operation::StopInstancesStreaming => ("POST", "/v1/instances/streaming/stop"),
            Operation::ReleaseInstancesSession => ("POST", "/v1/instances/session/release"),
            Operation::InstallApp => ("POST", "/v1/instances/app/install"),
        }
    }

    /// The statuses its page's 状态码 table lists.
    pub const fn page_statuses(self) -> &'static [u16] {
        match self {
            Operation::BatchReset
            | Operation::GetDeviceToken
            | Operation::BatchShowSku
            | Operation::CreateInstance
            | Operation::DeleteInstance
            | Operation::InstallApp => WITHOUT_500,
            Operation::SyncCommand
            | Operation::AsyncCommand
            | Operation::GetTask
            | Operation::SetVideoConfig
            | Operation::BatchQueryStatus
            | Operation::AssignInstance
            | Operation::UnassignInstance
            | Operation::ListInstances
            | Operation::BatchRebootInstance
            | Operation::BatchPrepareInstances
            | Operation::ShowProgress
            | Operation::BatchBackupInstances
            | Operation::StopInstancesStreaming
            | Operation::ReleaseInstancesSession => WITH_500,
        }
    }

    /// The message field of an error answered with `status`: the page's table for that status
    /// where it has one, §3.3's `error_msg` otherwise.
    pub const fn error_message_field(self, status: u16) -> MessageField {
        match (self, status) {
            // Tables 4-6 and 4-7; its 200 table (4-3) says `error_msg`.
            (Operation::SyncCommand, 400 | 500) => MessageField::ErrorInfo,
            _ => MessageField::ErrorMsg,
        }
    }
}

/// Where an error body puts its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageField {
    /// `error_msg` (§3.3, every page but one).
    ErrorMsg,
    /// `error_info` (SyncCommand's 400 and 500 tables).
    ErrorInfo,
}

/// Statuses table 6.1 gives to authentication and permission (401, 403) and throttling (429):
/// the same on every page, though no page lists them.
pub(crate) const EVERY_PAGE: [u16; 3] = [401, 403, 429];

/// Appendix 6.2, every row: the code and the status it lists. `6002` is listed twice (403 "no
/// permission" and 500 "token parse failure"); the first row is the one that counts here: 6002
/// is sent for an AK/SK call whose project is not the key's, and tokens are opaque, so a bad
/// one is `6001`, never a parse failure.
pub(crate) const APPENDIX: &[(&str, u16)] = &[
    ("KOOPHONE.API.0000", 200),
    ("KOOPHONE.API.0001", 200),
    ("KOOPHONE.API.0002", 200),
    ("KOOPHONE.API.0004", 200),
    ("KOOPHONE.API.0005", 200),
    ("KOOPHONE.API.1004", 200),
    ("KOOPHONE.API.1012", 200),
    ("KOOPHONE.API.2001", 200),
    ("KOOPHONE.API.2002", 200),
    ("KOOPHONE.API.2003", 200),
    ("KOOPHONE.API.2004", 200),
    ("KOOPHONE.API.2005", 200),
    ("KOOPHONE.API.2006", 200),
    ("KOOPHONE.API.3002", 200),
    ("KOOPHONE.API.3003", 200),
    ("KOOPHONE.API.3006", 200),
    ("KOOPHONE.API.3007", 200),
    ("KOOPHONE.API.3008", 200),
    ("KOOPHONE.API.3009", 200),
    ("KOOPHONE.API.4001", 200),
    ("KOOPHONE.API.40010", 200),
    ("KOOPHONE.API.62006", 200),
    ("KOOPHONE.API.62010", 200),
    ("KOOPHONE.API.62015", 200),
    ("KOOPHONE.API.62016", 200),
    ("KOOPHONE.API.62017", 200),
    ("KOOPHONE.API.62019", 200),
    ("KOOPHONE.API.62020", 200),
    ("KOOPHONE.API.62021", 200),
    ("KOOPHONE.API.9001", 200),
    ("KOOPHONE.API.0003", 400),
    ("KOOPHONE.API.1000", 400),
    ("KOOPHONE.API.1002", 400),
    ("KOOPHONE.API.1005", 400),
    ("KOOPHONE.API.3001", 400),
    ("KOOPHONE.API.4999", 400),
    ("KOOPHONE.API.5001", 400),
    ("KOOPHONE.API.6000", 400),
    ("KOOPHONE.API.1001", 401),
    ("KOOPHONE.API.1003", 401),
    ("KOOPHONE.API.6001", 401),
    ("KOOPHONE.API.6002", 403),
    ("KOOPHONE.API.6002", 500),
    ("KOOPHONE.API.9000", 500),
    ("KOOPHONE.API.9002", 500),
    ("KOOPHONE.API.9003", 500),
    ("KOOPHONE.API.9999", 500),
];

/// Codes the appendix omits, with the status of the page table that lists them (or, for API
/// gateway's throttling code, table 6.1's 429).
pub(crate) const PAGE_ONLY: &[(&str, u16)] = &[
    // GetTask's 400 table (4-20).
    ("KOOPHONE.API.1323", 400),
    // AssignInstance's 400 table (4-56).
    ("KPAPI.2209", 400),
    // UnassignInstance's 400 table (4-62).
    ("KOOPHONE.API.2210", 400),
    // ListInstances' 400 table (4-69).
    ("KOOPHONE.API.5002", 400),
    ("KOOPHONE.API.5004", 400),
    // BatchRebootInstance's 400 table (4-74).
    ("KOOPHONE.API.5005", 400),
    // InstallApp's 400 table (4-131).
    ("KOOPHONE.API.62005", 400),
    // "429 Too Many Requests" (table 6-1), answered with API gateway's code.
    ("APIGW.0308", 429),
];

/// The status the document gives `code` before any page applies: [`APPENDIX`], then
/// [`PAGE_ONLY`]. `None` for a code neither lists.
pub(crate) fn documented_status(code: &str) -> Option<u16> {
    APPENDIX
        .iter()
        .chain(PAGE_ONLY)
        .find(|(listed, _)| *listed == code)
        .map(|(_, status)| *status)
}

/// The rule: the status `code` is sent with on `operation`'s page. A code no table lists is a
/// parameter error's 400.
pub(crate) fn status(operation: Operation, code: &str) -> u16 {
    let documented = documented_status(code).unwrap_or(400);
    if operation.page_statuses().contains(&documented) || EVERY_PAGE.contains(&documented) {
        documented
    } else {
        400
    }
}

/// An error answer's body: `error_code` and the message under the page's field name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ErrorAnswer {
    /// `{"error_code", "error_msg"}` (§3.3).
    Msg(crate::error::ErrorBody),
    /// `{"error_code", "error_info"}` (SyncCommand's 400 and 500 tables).
    Info(ErrorInfoBody),
}

/// SyncCommand's error body (tables 4-6, 4-7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorInfoBody {
    pub error_code: String,
    pub error_info: String,
}

impl crate::error::ApiError {
    /// The status and body this error is answered with on `operation`'s page.
    pub fn answer_on(&self, operation: Operation) -> (u16, ErrorAnswer) {
        let status = status(operation, self.code());
        let body = match operation.error_message_field(status) {
            MessageField::ErrorInfo => ErrorAnswer::Info(ErrorInfoBody {
                error_code: self.code().to_string(),
                error_info: self.to_string(),
            }),
            MessageField::ErrorMsg => ErrorAnswer::Msg(self.body()),
        };
        (status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    /// Every `ApiError` variant once (text fields empty): a new variant is walked by the tests
    /// below without being listed anywhere.
    fn every_error() -> Vec<ApiError> {
        use strum::IntoEnumIterator;
        ApiError::iter().collect()
    }

    /// Every code the document lists (appendix and pages) and every code we send.
    fn every_code() -> Vec<&'static str> {
        let mut codes: Vec<&str> = APPENDIX.iter().chain(PAGE_ONLY).map(|(c, _)| *c).collect();
        codes.extend(every_error().iter().map(ApiError::code));
        codes.sort_unstable();
        codes.dedup();
        codes
    }

    /// Each operation's pages, walked: every code's status is one the page lists (or one of
    /// the statuses every page shares), and is the appendix's own wherever the page allows it.
    #[test]
    fn every_status_is_on_its_page() {
        for operation in Operation::ALL {
            let page = operation.page_statuses();
            assert!(page.contains(&200) && page.contains(&400), "{operation:?}");
            for code in every_code() {
                let sent = status(operation, code);
                assert!(
                    page.contains(&sent) || EVERY_PAGE.contains(&sent),
                    "{} sends {code} with {sent}, not on its page {page:?}",
                    operation.name()
                );
                let documented = documented_status(code).expect("every code is documented");
                if page.contains(&documented) || EVERY_PAGE.contains(&documented) {
                    assert_eq!(sent, documented, "{} {code}", operation.name());
                } else {
                    assert_eq!(
                        sent,
                        400,
                        "{} {code}: the page's error status",
                        operation.name()
                    );
                }
            }
        }
    }

    /// Every code we send is documented (so none falls back to the unlisted default).
    #[test]
    fn every_sent_code_is_documented() {
        for error in every_error() {
            assert!(documented_status(error.code()).is_some(), "{error:?}");
        }
    }

    /// The cases the issue names, as a table: (operation, code, status).
    #[test]
    fn representative_statuses() {
        let cases = [
            // Appendix 200 codes are 200 everywhere, CreateInstance's 400 table notwithstanding.
            (Operation::CreateInstance, "KOOPHONE.API.40010", 200),
            (Operation::CreateInstance, "KOOPHONE.API.3002", 200),
            (Operation::CreateInstance, "KOOPHONE.API.3006", 200),
            (Operation::InstallApp, "KOOPHONE.API.3008", 200),
            (Operation::InstallApp, "KOOPHONE.API.62006", 200),
            (Operation::InstallApp, "KOOPHONE.API.62015", 200),
            (Operation::ListInstances, "KOOPHONE.API.0002", 200),
            (Operation::BatchBackupInstances, "KOOPHONE.API.2006", 200),
            (Operation::BatchPrepareInstances, "KOOPHONE.API.2005", 200),
            // 9999: 500 where the page lists 500, 400 where it lists only 200/400.
            (Operation::SyncCommand, "KOOPHONE.API.9999", 500),
            (Operation::ListInstances, "KOOPHONE.API.9999", 500),
            (Operation::GetDeviceToken, "KOOPHONE.API.9999", 400),
            (Operation::BatchReset, "KOOPHONE.API.9999", 400),
            (Operation::CreateInstance, "KOOPHONE.API.9999", 400),
            (Operation::InstallApp, "KOOPHONE.API.9999", 400),
            // Parameter errors, the page-only codes, and the every-page statuses.
            (Operation::SyncCommand, "KOOPHONE.API.1000", 400),
            (Operation::GetTask, "KOOPHONE.API.1323", 400),
            (Operation::ListInstances, "KOOPHONE.API.5004", 400),
            (Operation::GetDeviceToken, "KOOPHONE.API.1001", 401),
            (Operation::BatchShowSku, "KOOPHONE.API.6001", 401),
            (Operation::SyncCommand, "APIGW.0308", 429),
        ];
        for (operation, code, expected) in cases {
            assert_eq!(status(operation, code), expected, "{operation:?} {code}");
        }
    }

    #[test]
    fn sync_command_errors_carry_error_info() {
        let json =
            |(status, body): (u16, ErrorAnswer)| (status, serde_json::to_value(body).unwrap());
        let (status, body) = json(ApiError::Internal.answer_on(Operation::SyncCommand));
        assert_eq!(
            (status, body),
            (
                500,
                serde_json::json!({"error_code": "KOOPHONE.API.9999", "error_info": "internal error"})
            )
        );
        let (status, body) =
            json(ApiError::InvalidParameter("command".into()).answer_on(Operation::SyncCommand));
        assert_eq!(
            (status, &body["error_code"]),
            (400, &serde_json::json!("KOOPHONE.API.1000"))
        );
        assert!(
            body.get("error_info").is_some() && body.get("error_msg").is_none(),
            "{body}"
        );
        // Its 200 table says error_msg; 401/429 are §3.3's body.
        for error in [
            ApiError::MissingRequestId,
            ApiError::AuthenticationFailed,
            ApiError::Throttled("x".into()),
        ] {
            let (_, body) = json(error.answer_on(Operation::SyncCommand));
            assert!(
                body.get("error_msg").is_some() && body.get("error_info").is_none(),
                "{body}"
            );
        }
        // Every other page: error_msg.
        for operation in Operation::ALL
            .into_iter()
            .filter(|o| *o != Operation::SyncCommand)
        {
            let (_, body) = json(ApiError::Internal.answer_on(operation));
            assert!(body.get("error_msg").is_some(), "{operation:?}: {body}");
        }
    }
}
