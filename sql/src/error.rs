//! The one error type of `dsf-sql` and its mapping onto the wire's codes.
//!
//! | variant | wire code |
//! |---|---|
//! | [`Error::Invalid`] | `bad_request` |
//! | [`Error::NotFound`] | `not_found` |
//! | [`Error::Forbidden`] | `forbidden` |
//! | [`Error::Conflict`] | `conflict` |
//! | [`Error::Unavailable`], [`Error::PoolTimeout`] | `unavailable` |
//! | [`Error::MigrationChanged`], [`Error::Internal`] | `internal` |

use std::time::Duration;

use dsf_common::ErrorCode;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the MySQL layer. Each variant names the
/// operation (`"blacklist.add"`, `"migrate"`) so the message alone is enough
/// to find the failing call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value broke a rule checked before the database saw it, e.g.
    /// `name: 1 to 64 characters`.
    #[error("{field}: {rule}")]
    Invalid {
        /// The field, as named on the wire (`name`, `id_card`, `limit`…).
        field: &'static str,
        /// The rule it broke, phrased as what is allowed.
        rule: &'static str,
    },

    /// The row an operation needs does not exist.
    #[error("{0}")]
    NotFound(String),

    /// A handler's own refusal, raised inside a transaction it runs
    /// (`call.tx(|tx| …)`): it rolls the transaction back and reaches the
    /// client as it is.
    #[error("{0}")]
    Refused(dsf_common::Error),

    /// The row exists, and the caller may not act on it (a room they are
    /// not a member of).
    #[error("{0}")]
    Forbidden(String),

    /// A unique key is taken (MySQL error 1062).
    #[error("{message}")]
    Conflict {
        /// The operation that hit the duplicate.
        op: &'static str,
        /// What is taken, e.g. `id card 1101… is already listed`.
        message: String,
    },

    /// The database cannot be reached, or dropped the connection, or is
    /// shutting down. Worth retrying later or on another node.
    #[error("{op}: database unavailable: {reason}")]
    Unavailable {
        /// The operation that failed.
        op: &'static str,
        /// What the driver or server said.
        reason: String,
    },

    /// Every pooled connection stayed busy for the whole acquire timeout.
    #[error(
        "{op}: no database connection free within {waited:?} (pool of {max}; \
         raise the pool margin or look for slow queries)"
    )]
    PoolTimeout {
        /// The operation that waited.
        op: &'static str,
        /// How long it waited.
        waited: Duration,
        /// The pool's upper bound.
        max: usize,
    },

    /// An applied migration's text differs from the one in this binary.
    #[error(
        "migration {version} ({name}) of {namespace} was changed after it was applied: checksum \
         {applied} in the database, {embedded} in this binary; restore the file \
         and put the change in a new migration"
    )]
    MigrationChanged {
        /// The service whose migration it is.
        namespace: String,
        /// The migration's number.
        version: u32,
        /// The migration's name.
        name: String,
        /// SHA-256 (hex) recorded when it was applied.
        applied: String,
        /// SHA-256 (hex) of the text in this binary.
        embedded: String,
    },

    /// Anything else: a bug, a schema mismatch, a bad URL.
    #[error("{op} failed: {message}")]
    Internal {
        /// The operation that failed.
        op: &'static str,
        /// What went wrong.
        message: String,
    },
}

// === impl Error ===

/// MySQL server errors that mean "the server cannot serve you right now"
/// rather than "your statement is wrong": too many connections (1040), a
/// Galera node outside the primary component (1047), server shutdown
/// (1053), an error during COMMIT (1180: the transaction did not commit, as
/// when a Galera node leaves the primary component mid-commit), lock wait
/// timeout (1205), deadlock (1213), query interrupted (1317), connection
/// killed (1927), read-only (1290 during a failover), and MariaDB's idle
/// disconnect (4031).
const UNAVAILABLE_CODES: [u16; 10] = [1040, 1047, 1053, 1180, 1205, 1213, 1290, 1317, 1927, 4031];

/// Duplicate entry for a unique key.
const ER_DUP_ENTRY: u16 = 1062;

/// Whether a server error says the database ran out of disk space: disk
/// full (1021), a table that cannot grow (1114, what InnoDB answers when
/// its file cannot be extended), or a write or engine error with errno 28
/// (ENOSPC; 3 and 1030).
fn out_of_space(e: &mysql::MySqlError) -> bool {
    match e.code {
        1021 | 1114 => true,
        3 | 1030 => e.message.contains("28"),
        _ => false,
    }
}

impl Error {
    /// The wire code this error is sent as.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Invalid { .. } => ErrorCode::BadRequest,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Refused(e) => e.code(),
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::Conflict { .. } => ErrorCode::Conflict,
            Error::Unavailable { .. } | Error::PoolTimeout { .. } => ErrorCode::Unavailable,
            Error::MigrationChanged { .. } | Error::Internal { .. } => ErrorCode::Internal,
        }
    }

    /// Classifies a driver error raised during `op`.
    pub fn from_mysql(op: &'static str, e: mysql::Error) -> Error {
        match e {
            mysql::Error::MySqlError(ref server) if server.code == ER_DUP_ENTRY => {
                Error::Conflict {
                    op,
                    message: format!("{op}: duplicate key: {}", server.message),
                }
            }
            mysql::Error::MySqlError(ref server) if out_of_space(server) => Error::Unavailable {
                op,
                reason: format!(
                    "the database is out of disk space (server error {}: {}): free space on its disk; reads go on meanwhile",
                    server.code, server.message
                ),
            },
            mysql::Error::MySqlError(ref server) if UNAVAILABLE_CODES.contains(&server.code) => {
                Error::Unavailable {
                    op,
                    reason: format!("server error {}: {}", server.code, server.message),
                }
            }
            mysql::Error::MySqlError(server) => Error::Internal {
                op,
                message: format!("server error {}: {}", server.code, server.message),
            },
            // Connection refused, reset, EOF, timeouts, a packet cut short:
            // the connection is gone, the statement is not at fault.
            mysql::Error::IoError(_)
            | mysql::Error::DriverError(_)
            | mysql::Error::CodecError(_) => Error::Unavailable {
                op,
                reason: e.to_string(),
            },
            other => Error::Internal {
                op,
                message: other.to_string(),
            },
        }
    }

    /// Replaces the message of a [`Error::Conflict`] with one that says what
    /// is taken in the caller's terms; other errors pass through.
    pub(crate) fn on_conflict(self, message: impl FnOnce() -> String) -> Error {
        match self {
            Error::Conflict { op, .. } => Error::Conflict {
                op,
                message: message(),
            },
            other => other,
        }
    }

    /// Whether InnoDB rolled this transaction back as a deadlock's victim,
    /// or Galera failed it in certification (MySQL error 1213 both):
    /// running it again is the cure.
    pub fn is_deadlock(&self) -> bool {
        matches!(self, Error::Unavailable { reason, .. } if reason.starts_with("server error 1213:"))
    }

    /// Whether this error means the database could not be reached or used,
    /// as opposed to a problem with the request or a bug.
    pub fn is_unavailable(&self) -> bool {
        self.code() == ErrorCode::Unavailable
    }
}

impl From<Error> for dsf_common::Error {
    fn from(e: Error) -> dsf_common::Error {
        match e {
            Error::Refused(e) => e,
            e => dsf_common::Error::new(e.code(), e.to_string()),
        }
    }
}

/// A handler's refusal inside its transaction: `Err(Error::NotFound(..).into())`.
impl From<dsf_common::Error> for Error {
    fn from(e: dsf_common::Error) -> Error {
        Error::Refused(e)
    }
}

/// A statement of a handler's own that failed, inside `call.tx(|tx| …)`:
/// `tx.exec_drop(…)?`.
impl From<mysql::Error> for Error {
    fn from(e: mysql::Error) -> Error {
        Error::from_mysql("query", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: u16) -> mysql::Error {
        mysql::Error::MySqlError(mysql::MySqlError {
            state: "23000".into(),
            message: "Duplicate entry 'x' for key 'PRIMARY'".into(),
            code,
        })
    }

    #[test]
    fn a_deadlock_is_unavailable_and_known_as_one() {
        let e = Error::from_mysql("tasks.claim", server_error(1213));
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert!(e.is_deadlock());
        assert!(!Error::from_mysql("x", server_error(1205)).is_deadlock());
    }

    #[test]
    fn a_commit_that_failed_is_unavailable() {
        // What a Galera node cut off from the others answers a COMMIT: the
        // transaction did not commit, so running the request again is safe.
        let e = Error::from_mysql(
            "wire.run_once",
            mysql::Error::MySqlError(mysql::MySqlError {
                state: "HY000".into(),
                message: "Error while appending streaming replication fragment(provider status: Not connected to Primary Component)".into(),
                code: 1180,
            }),
        );
        assert_eq!(e.code(), ErrorCode::Unavailable);
    }

    #[test]
    fn a_full_disk_is_unavailable_and_says_so() {
        let full = |code: u16, message: &str| {
            Error::from_mysql(
                "audit.record",
                mysql::Error::MySqlError(mysql::MySqlError {
                    state: "HY000".into(),
                    message: message.into(),
                    code,
                }),
            )
        };
        let e = full(1114, "The table 'audit' is full");
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert!(e.to_string().contains("out of disk space"), "{e}");
        let e = full(
            1030,
            "Got error 28 \"No space left on device\" from storage engine",
        );
        assert_eq!(e.code(), ErrorCode::Unavailable);
        // Another engine error is not about space.
        let e = full(
            1030,
            "Got error 1 \"Operation not permitted\" from storage engine",
        );
        assert_eq!(e.code(), ErrorCode::Internal);
    }

    #[test]
    fn duplicate_key_is_conflict() {
        let e = Error::from_mysql("blacklist.add", server_error(1062));
        assert_eq!(e.code(), ErrorCode::Conflict);
        let e = e.on_conflict(|| "id card X is already listed".into());
        assert_eq!(e.to_string(), "id card X is already listed");
    }

    #[test]
    fn refused_connection_is_unavailable_and_names_the_operation() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::from_mysql("users.get", mysql::Error::IoError(io));
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert!(e.to_string().starts_with("users.get: database unavailable"));
    }

    #[test]
    fn other_server_errors_are_internal() {
        let e = Error::from_mysql("gate.record", server_error(1146));
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(e.to_string().starts_with("gate.record failed"));
    }

    #[test]
    fn validation_error_is_bad_request_naming_field_and_rule() {
        let e = Error::Invalid {
            field: "name",
            rule: "1 to 64 characters",
        };
        let wire: dsf_common::Error = e.into();
        assert_eq!(wire.code(), ErrorCode::BadRequest);
        assert_eq!(wire.to_string(), "name: 1 to 64 characters");
    }
}
