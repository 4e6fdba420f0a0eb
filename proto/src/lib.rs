//! `dsf-proto`: the message catalogue, written once and used by the servers
//! (each route is checked against it) and by the SDK (which types it may
//! send again, and how).
//!
//! For every message type: its name, who may send it ([`Auth`]), whether it
//! *writes* (the server records `(app, nonce)` and the reply in the same
//! transaction as the write, so the same signed request never runs twice,
//! on any node) and whether it *streams* (events before the final reply).
//! The table is DESIGN.md's "Message types", plus the writes of the
//! accounts and blacklist that the design leaves implicit.

#![forbid(unsafe_code)]

/// Who may send a message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// A valid app signature is enough (an app key may be scoped to fewer types).
    App,
    /// A session token of a user with at least the viewer role.
    Viewer,
    /// ... at least operator.
    Operator,
    /// ... admin.
    Admin,
    /// The cluster secret (app id `cluster`).
    Cluster,
}

/// One message type of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Type {
    pub name: &'static str,
    pub auth: Auth,
    /// Runs once on any node: a resend of the same signed request gets the
    /// stored reply.
    pub writes: bool,
    /// Answered by events, then a final reply.
    pub streams: bool,
}

const fn read(name: &'static str, auth: Auth) -> Type {
    Type {
        name,
        auth,
        writes: false,
        streams: false,
    }
}

const fn write(name: &'static str, auth: Auth) -> Type {
    Type {
        name,
        auth,
        writes: true,
        streams: false,
    }
}

/// Every message type of every part.
pub const CATALOGUE: &[Type] = &[
    read("sys.ping", Auth::App),
    read("sys.cancel", Auth::App),
    write("user.register", Auth::App),
    // Not run once: its reply holds a session token, which must not be kept
    // in clear (sessions are stored hashed). A resend makes a second
    // session; the first expires unused.
    read("user.login", Auth::App),
    write("user.logout", Auth::Viewer),
    read("user.me", Auth::Viewer),
    write("user.set_role", Auth::Admin),
    write("blacklist.add", Auth::Operator),
    read("blacklist.get", Auth::Viewer),
    write("blacklist.update", Auth::Operator),
    write("blacklist.remove", Auth::Operator),
    read("blacklist.list", Auth::Viewer),
    // Every check is recorded, but a repeated check is one more record of
    // what the gate would have done anyway: sent again freely, not run once.
    read("gate.check", Auth::App),
    read("gate.history", Auth::Viewer),
    read("lb.resolve", Auth::App),
    read("lb.view", Auth::App),
    read("lb.set_view", Auth::Cluster),
    read("node.heartbeat", Auth::Cluster),
    read("node.leave", Auth::Cluster),
    read("cluster.status", Auth::App),
];

/// The catalogue's entry for `name`.
pub fn get(name: &str) -> Option<&'static Type> {
    CATALOGUE.iter().find(|t| t.name == name)
}

/// Whether `name` is a type that runs once (an unknown type is treated as
/// one: never sent twice on a guess).
pub fn writes(name: &str) -> bool {
    get(name).is_none_or(|t| t.writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_listed_once() {
        for (i, t) in CATALOGUE.iter().enumerate() {
            assert!(
                CATALOGUE[i + 1..].iter().all(|u| u.name != t.name),
                "{} is listed twice",
                t.name
            );
        }
    }

    #[test]
    fn reads_may_be_resent_and_writes_and_unknown_types_run_once() {
        assert!(!writes("blacklist.get"));
        assert!(!writes("lb.resolve"));
        assert!(writes("blacklist.add"));
        assert!(writes("no.such.type"));
    }
}
