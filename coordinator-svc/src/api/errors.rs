//! Machine-readable errors (`coordinator.proto`, top): every status carries a
//! `google.rpc.ErrorInfo` (domain [`DOMAIN`], a reason, metadata), `INVALID_ARGUMENT` a
//! `google.rpc.BadRequest` naming the field, `RESOURCE_EXHAUSTED` a `google.rpc.RetryInfo`.

use std::collections::HashMap;
use std::time::Duration;

use shared::election::SessionId;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::node::{ErrorReason, NodeError};
use crate::session::AbortInfo;

/// `google.rpc.ErrorInfo.domain` of every error of this API.
pub const DOMAIN: &str = "coordinator.musig2";

/// A status with its ErrorInfo (and RetryInfo for RESOURCE_EXHAUSTED).
pub fn status(
    code: Code,
    reason: ErrorReason,
    message: impl Into<String>,
    metadata: &[(&str, String)],
) -> Status {
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    let mut details = ErrorDetails::with_error_info(reason.as_str(), DOMAIN, meta);
    if code == Code::ResourceExhausted {
        let ms = match reason {
            ErrorReason::RateLimited { retry_after_ms } => retry_after_ms.max(1),
            ErrorReason::TooManyRequests => 5_000,
            _ => 1_000,
        };
        details.set_retry_info(Some(Duration::from_millis(ms.unsigned_abs())));
    }
    Status::with_error_details(code, message, details)
}

/// INVALID_ARGUMENT for one field (reason INVALID_FIELD, a BadRequest violation).
pub fn invalid(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    let mut details = ErrorDetails::with_error_info(
        ErrorReason::InvalidField.as_str(),
        DOMAIN,
        HashMap::from([("field".to_string(), field.to_string())]),
    );
    details.add_bad_request_violation(field, description.clone());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        details,
    )
}

/// A node error as a status; `session` adds its id to the metadata.
pub fn node_status(e: NodeError, session: Option<SessionId>) -> Status {
    let reason = e.reason();
    let (code, message) = match e {
        NodeError::InvalidArgument(_, m) => (Code::InvalidArgument, m),
        NodeError::NotFound(_, m) => (Code::NotFound, m),
        NodeError::FailedPrecondition(_, m) => (Code::FailedPrecondition, m),
        NodeError::Unavailable(_, m) => (Code::Unavailable, m),
        NodeError::ResourceExhausted(_, m) => (Code::ResourceExhausted, m),
        NodeError::PermissionDenied(_, m) => (Code::PermissionDenied, m),
        _ => (Code::Unavailable, "the node is stopping".to_string()),
    };
    let meta: Vec<(&str, String)> = session
        .map(|id| ("session_id", id.to_string()))
        .into_iter()
        .collect();
    if reason == ErrorReason::InvalidField {
        // The core re-validates what the API already checked field by field.
        return invalid("request", message);
    }
    status(code, reason, message, &meta)
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        node_status(e, None)
    }
}

/// The metadata describing an abort: session id, abort code, culprits.
pub fn abort_metadata(id: SessionId, abort: Option<&AbortInfo>) -> Vec<(&'static str, String)> {
    let mut meta = vec![("session_id", id.to_string())];
    if let Some(a) = abort {
        meta.push(("abort_code", a.code.to_pb().as_str_name().to_string()));
        if !a.culprits.is_empty() {
            let culprits: Vec<String> = a.culprits.iter().map(hex::encode).collect();
            meta.push(("culprits", culprits.join(",")));
        }
    }
    meta
}

/// NOT_FOUND for an unknown session.
pub fn session_not_found(id: SessionId) -> Status {
    status(
        Code::NotFound,
        ErrorReason::SessionNotFound,
        format!("session {id} is unknown"),
        &[("session_id", id.to_string())],
    )
}
