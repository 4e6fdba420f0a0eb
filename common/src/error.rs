//! The wire's error codes and the library error that maps onto them.
//!
//! Every error that crosses the wire carries one [`ErrorCode`] (a stable
//! string clients may match on) and a message that says what to fix.

use std::fmt;

/// The stable error codes of the design, one-to-one with the strings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadFrame,
    FrameTooLarge,
    BadJson,
    BadRequest,
    BadSignature,
    StaleTimestamp,
    ReplayedNonce,
    UnknownType,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    Overloaded,
    Unavailable,
    Internal,
}

// === impl ErrorCode ===

impl ErrorCode {
    /// Every code, in the order the design lists them.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::BadFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::BadSignature,
        ErrorCode::StaleTimestamp,
        ErrorCode::ReplayedNonce,
        ErrorCode::UnknownType,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Overloaded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The string sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::StaleTimestamp => "stale_timestamp",
            ErrorCode::ReplayedNonce => "replayed_nonce",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Parses a wire string; `None` for a code this version does not know.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether the error says "try again": the request was not run, or was
    /// rolled back (`unavailable`, `overloaded`, `internal`), so a write
    /// answered so is not recorded and may be sent again.
    pub fn says_try_again(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::Overloaded | ErrorCode::Internal
        )
    }

    /// Whether a connection must be closed after this error is sent: the
    /// frame could not be trusted to be delimited, so the stream is lost.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::BadFrame | ErrorCode::FrameTooLarge | ErrorCode::BadJson
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of `dsf-common`: one variant per wire code, each carrying the
/// message that is sent to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadFrame(String),
    #[error("{0}")]
    FrameTooLarge(String),
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    BadSignature(String),
    #[error("{0}")]
    StaleTimestamp(String),
    #[error("{0}")]
    ReplayedNonce(String),
    #[error("{0}")]
    UnknownType(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

// === impl Error ===

impl Error {
    /// Builds the variant of `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        let m = message.into();
        match code {
            ErrorCode::BadFrame => Error::BadFrame(m),
            ErrorCode::FrameTooLarge => Error::FrameTooLarge(m),
            ErrorCode::BadJson => Error::BadJson(m),
            ErrorCode::BadRequest => Error::BadRequest(m),
            ErrorCode::BadSignature => Error::BadSignature(m),
            ErrorCode::StaleTimestamp => Error::StaleTimestamp(m),
            ErrorCode::ReplayedNonce => Error::ReplayedNonce(m),
            ErrorCode::UnknownType => Error::UnknownType(m),
            ErrorCode::Unauthorized => Error::Unauthorized(m),
            ErrorCode::Forbidden => Error::Forbidden(m),
            ErrorCode::NotFound => Error::NotFound(m),
            ErrorCode::Conflict => Error::Conflict(m),
            ErrorCode::Overloaded => Error::Overloaded(m),
            ErrorCode::Unavailable => Error::Unavailable(m),
            ErrorCode::Internal => Error::Internal(m),
        }
    }

    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::BadFrame(_) => ErrorCode::BadFrame,
            Error::FrameTooLarge(_) => ErrorCode::FrameTooLarge,
            Error::BadJson(_) => ErrorCode::BadJson,
            Error::BadRequest(_) => ErrorCode::BadRequest,
            Error::BadSignature(_) => ErrorCode::BadSignature,
            Error::StaleTimestamp(_) => ErrorCode::StaleTimestamp,
            Error::ReplayedNonce(_) => ErrorCode::ReplayedNonce,
            Error::UnknownType(_) => ErrorCode::UnknownType,
            Error::Unauthorized(_) => ErrorCode::Unauthorized,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::Overloaded(_) => ErrorCode::Overloaded,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The error for a frame whose declared length is above the cap.
    pub fn frame_too_large(len: usize, max: usize) -> Error {
        Error::FrameTooLarge(format!(
            "frame of {len} bytes exceeds max_frame {max} (raise --max-frame or send smaller requests)"
        ))
    }

    /// Shorthand for [`Error::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::BadRequest(message.into())
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_wire_string() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
    }

    #[test]
    fn every_code_builds_an_error_of_that_code() {
        for code in ErrorCode::ALL {
            let e = Error::new(code, "m");
            assert_eq!(e.code(), code);
            assert_eq!(e.to_string(), "m");
        }
    }

    #[test]
    fn too_large_message_says_what_to_do() {
        let e = Error::frame_too_large(2_097_152, 1_048_576);
        assert_eq!(
            e.to_string(),
            "frame of 2097152 bytes exceeds max_frame 1048576 (raise --max-frame or send smaller requests)"
        );
        assert!(e.code().closes_connection());
    }
}
