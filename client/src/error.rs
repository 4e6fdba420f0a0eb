//! The one error type of `dsf-client`. Every variant says what happened,
//! where (which balancer, which node, which message type), and what to do.

use std::io;
use std::time::Duration;

use dsf_common::ErrorCode;

/// What can go wrong talking to a dsf cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered, signed, and refused the request.
    #[error("{kind} refused by {server}: {code}: {message}{}", hint(kind, *code, message))]
    Refused {
        /// The message type that was refused.
        kind: String,
        /// Node id or address that answered.
        server: String,
        /// The wire code; match on this, not on the message.
        code: ErrorCode,
        /// The server's own message, which says what to fix.
        message: String,
    },

    /// No balancer could be reached (all of `--lb` are down or refuse us).
    #[error("no balancer reachable (tried {}): {last} (start lb-server, or point --lb / DSF_LB at a running one)", tried.join(", "))]
    NoBalancer {
        /// Every balancer address tried, in order.
        tried: Vec<String>,
        /// The last failure.
        last: String,
    },

    /// The balancers answered, but no app-server node could be reached
    /// before the deadline.
    #[error("no node reachable for {kind} (tried for {deadline:?}): {last}")]
    NoNode {
        /// The message type being sent.
        kind: String,
        /// How long it kept trying.
        deadline: Duration,
        /// The last failure (a refused connection, `unavailable`, ...).
        last: String,
    },

    /// A write may have reached a server and no reply came back, even to
    /// its resends with the same nonce within the replay window (or it went
    /// by a path that does not resend): whether it took effect is unknown.
    /// Rare: a write cut off by a failed node is resent and answered.
    #[error("outcome of {kind} on {server} is unknown: {reason} (check with a read, e.g. `get`/`whoami`, before sending it again as a new request)")]
    OutcomeUnknown {
        /// The message type sent.
        kind: String,
        /// The node it was sent to.
        server: String,
        /// What cut it off (EOF, reset, no reply in time).
        reason: String,
    },

    /// A reply that cannot be trusted or read: forged or missing signature,
    /// malformed envelope, unexpected id.
    #[error("bad reply from {server}: {reason} (the server may use another secret for this app: check DSF_APP_SECRET / --app-secret-file and --app)")]
    BadReply {
        /// Who sent it.
        server: String,
        /// What was wrong with it.
        reason: String,
    },

    /// No reply within the time allowed for an idempotent request.
    #[error("{what} timed out after {after:?} (raise --timeout, or check the server's load with `client status`)")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long it waited.
        after: Duration,
    },

    /// A local I/O failure (reading a file, the terminal, a socket set-up).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        #[source]
        source: io::Error,
    },

    /// The client is not configured well enough to send anything.
    #[error("{0}")]
    Config(String),
}

/// What to do about a refusal, when the server's message does not say it
/// already: a role refusal needs an admin, a refused login is the name or
/// password, not a missing login.
fn hint(kind: &str, code: ErrorCode, message: &str) -> &'static str {
    match code {
        ErrorCode::Unauthorized if kind == "user.login" => "",
        ErrorCode::Unauthorized => {
            " (log in with `client login NAME`, or check the app id and secret)"
        }
        ErrorCode::Forbidden if message.contains("needs role") => {
            " (this needs a user with a higher role: ask an admin)"
        }
        ErrorCode::BadSignature => " (the server holds another secret for this app)",
        ErrorCode::StaleTimestamp => " (this machine's clock is off: sync it)",
        ErrorCode::Overloaded => " (the server is busy: retry later)",
        ErrorCode::Unavailable => " (the cluster is degraded: retry later)",
        _ => "",
    }
}

// === impl Error ===

impl Error {
    /// The wire code when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Short stable name of the variant, for `--json` output and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Refused { .. } => "refused",
            Error::NoBalancer { .. } => "no_balancer",
            Error::NoNode { .. } => "no_node",
            Error::OutcomeUnknown { .. } => "outcome_unknown",
            Error::BadReply { .. } => "bad_reply",
            Error::Timeout { .. } => "timeout",
            Error::Io { .. } => "io",
            Error::Config(_) => "config",
        }
    }

    /// A local I/O failure, with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(kind: &str, code: ErrorCode, message: &str) -> String {
        Error::Refused {
            kind: kind.into(),
            server: "app-1".into(),
            code,
            message: message.into(),
        }
        .to_string()
    }

    #[test]
    fn a_hint_is_given_only_where_it_is_what_to_do() {
        let role = refused(
            "user.create",
            ErrorCode::Forbidden,
            "user.create needs role admin or above; user \"ann\" is viewer",
        );
        assert!(role.ends_with("(this needs a user with a higher role: ask an admin)"));
        let room = refused(
            "msg.send",
            ErrorCode::Forbidden,
            "you are not in room \"ops\": join it first",
        );
        assert!(room.ends_with("join it first"), "{room}");
        let token = refused("whoami", ErrorCode::Unauthorized, "no session");
        assert!(token.contains("log in with `client login NAME`"), "{token}");
        let login = refused(
            "user.login",
            ErrorCode::Unauthorized,
            "wrong name or password",
        );
        assert!(login.ends_with("wrong name or password"), "{login}");
    }
}
