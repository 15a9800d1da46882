//! Every error this API answers: Alibaba's gateway codes (the document promises a common table
//! and has none; these are the codes SDK users meet everywhere else) and the resource codes of
//! the Actions. One rule gives each its HTTP status ([`VsError::status`]); the body is
//! `{RequestId, HostId, Code, Message}` ([`ErrorBody`]).

use serde::Serialize;

/// Why a request was refused. `Display` is the `Message` sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VsError {
    /// A required parameter (common or the Action's) is absent or empty.
    #[error(
        "The input parameter \"{0}\" that is mandatory for processing this request is not supplied."
    )]
    MissingParameter(String),
    /// A parameter is present but its value is not one the Action takes.
    #[error("The specified parameter \"{0}\" is not valid.")]
    InvalidParameter(String),
    #[error("Specified signature is not matched with our calculation.")]
    SignatureDoesNotMatch,
    #[error("Specified signature nonce was used already.")]
    SignatureNonceUsed,
    /// `Timestamp` (or `x-acs-date`) more than 15 minutes from the server's clock.
    #[error("Specified time stamp or date value is expired.")]
    TimestampExpired,
    #[error("Specified access key is not found.")]
    AccessKeyNotFound,
    /// The key may not call this Action (an operator key on a tenant Action or the reverse),
    /// or its tenant is suspended.
    #[error("{0}")]
    Forbidden(String),
    #[error("Specified api is not found, please check your url and method.")]
    ActionNotFound,
    /// Only a different `Version` than 2018-12-12.
    #[error("Specified parameter Version is not valid.")]
    InvalidVersion,
    #[error("Request was denied due to request throttling.")]
    Throttling,
    #[error("The request processing has failed due to some unknown error.")]
    InternalError,
    /// A group that does not exist or belongs to another tenant (indistinguishable on purpose).
    #[error("The specified group does not exist.")]
    GroupNotFound,
    #[error("The specified stream does not exist.")]
    StreamNotFound,
    /// An unknown service `UserId` (or a deleted one for Suspend/Renew).
    #[error("The specified user does not exist.")]
    UserNotFound,
    /// CreateMtsService for a `UserId` that already has a service that is not deleted.
    #[error("The specified user already has a service.")]
    UserAlreadyExists,
    /// DeleteGroup of a group that is still enabled (the document: halt it first).
    #[error("The group must be halted before it can be deleted.")]
    GroupNotHalted,
    /// DescribeStreamURL of a stream no node offering a live edge holds yet (none has
    /// announced one): nothing could serve the URL.
    #[error("The stream is not on a live edge node yet.")]
    StreamNotPlaced,
}

impl VsError {
    /// The `Code` field.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingParameter(_) => "MissingParameter",
            Self::InvalidParameter(_) => "InvalidParameter",
            Self::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            Self::SignatureNonceUsed => "SignatureNonceUsed",
            Self::TimestampExpired => "InvalidTimeStamp.Expired",
            Self::AccessKeyNotFound => "InvalidAccessKeyId.NotFound",
            Self::Forbidden(_) => "Forbidden",
            Self::ActionNotFound => "InvalidAction.NotFound",
            Self::InvalidVersion => "InvalidVersion",
            Self::Throttling => "Throttling",
            Self::InternalError => "InternalError",
            Self::GroupNotFound => "InvalidGroup.NotFound",
            Self::StreamNotFound => "InvalidStream.NotFound",
            Self::UserNotFound => "InvalidUser.NotFound",
            Self::UserAlreadyExists => "InvalidUser.AlreadyExists",
            Self::GroupNotHalted => "IncorrectGroupStatus",
            Self::StreamNotPlaced => "IncorrectStreamStatus",
        }
    }

    /// The HTTP status: the one rule (docs/live-api.md lists it). `*.NotFound` is 404,
    /// `Forbidden` 403, `Throttling` 429, `InternalError` 500 (the store failed), every other
    /// refusal 400.
    pub fn status(&self) -> u16 {
        match self {
            Self::AccessKeyNotFound
            | Self::ActionNotFound
            | Self::GroupNotFound
            | Self::StreamNotFound
            | Self::UserNotFound => 404,
            Self::Forbidden(_) => 403,
            Self::Throttling => 429,
            Self::InternalError => 500,
            Self::MissingParameter(_)
            | Self::InvalidParameter(_)
            | Self::SignatureDoesNotMatch
            | Self::SignatureNonceUsed
            | Self::TimestampExpired
            | Self::InvalidVersion
            | Self::UserAlreadyExists
            | Self::GroupNotHalted
            | Self::StreamNotPlaced => 400,
        }
    }

    /// The error body for this refusal.
    pub fn body(&self, request_id: &str, host_id: &str) -> ErrorBody {
        ErrorBody {
            request_id: request_id.to_string(),
            host_id: host_id.to_string(),
            code: self.code().to_string(),
            message: self.to_string(),
        }
    }
}

/// The error body: the document's example minus its `Status`/`Data` (which no SDK reads), as
/// Alibaba's gateway sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorBody {
    pub request_id: String,
    pub host_id: String,
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_codes_are_404_and_only_internal_errors_are_5xx() {
        let all = [
            VsError::MissingParameter("Id".into()),
            VsError::InvalidParameter("Id".into()),
            VsError::SignatureDoesNotMatch,
            VsError::SignatureNonceUsed,
            VsError::TimestampExpired,
            VsError::AccessKeyNotFound,
            VsError::Forbidden("x".into()),
            VsError::ActionNotFound,
            VsError::InvalidVersion,
            VsError::Throttling,
            VsError::InternalError,
            VsError::GroupNotFound,
            VsError::StreamNotFound,
            VsError::UserNotFound,
            VsError::UserAlreadyExists,
            VsError::GroupNotHalted,
            VsError::StreamNotPlaced,
        ];
        for error in &all {
            let status = error.status();
            assert_eq!(
                error.code().ends_with(".NotFound"),
                status == 404,
                "{error:?}"
            );
            assert!(
                status < 500 || matches!(error, VsError::InternalError),
                "{error:?}"
            );
        }
        let body = serde_json::to_value(VsError::GroupNotFound.body("R1", "vs.local")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"RequestId": "R1", "HostId": "vs.local",
                "Code": "InvalidGroup.NotFound", "Message": "The specified group does not exist."})
        );
    }
}
