//! The signed connection of [`dsf_common::call`], and how its failures
//! become this crate's [`Error`] when no resend is done.

use std::time::Duration;

pub use dsf_common::call::{Connection, Failure, Signer};

use crate::error::Error;

/// A [`Failure`] as the public error for `kind` sent to `server`.
pub trait IntoError {
    /// The error, with no resend done.
    fn into_error(self, kind: &str, server: &str) -> Error;
}

impl IntoError for Failure {
    fn into_error(self, kind: &str, server: &str) -> Error {
        match self {
            Failure::NotSent(last) => Error::NoNode {
                kind: kind.into(),
                deadline: Duration::ZERO,
                last,
            },
            Failure::Lost(reason) => Error::OutcomeUnknown {
                kind: kind.into(),
                server: server.into(),
                reason,
            },
            Failure::TimedOut(after) => Error::Timeout {
                what: format!("{kind} on {server}"),
                after,
            },
            Failure::BadReply(reason) => Error::BadReply {
                server: server.into(),
                reason,
            },
            Failure::Server(e) => Error::Refused {
                kind: kind.into(),
                server: server.into(),
                code: e.code(),
                message: e.to_string(),
            },
        }
    }
}
