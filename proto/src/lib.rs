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
//!
//! Each client-facing type is a [`Message`]: its [`Type`] entry, its body
//! and its reply, written once here ([`sys`], [`user`], [`blacklist`],
//! [`gate`], [`lb`], [`task`], [`msg`]). The app server parses bodies and renders replies with
//! these types; the SDK's typed calls (`Client::send::<M>`) send and read
//! them. The cluster's own types ([`cluster`]: `node.heartbeat`,
//! `node.leave`, `lb.set_view`) are messages too; the two diagnostic
//! reports, `lb.view` and `cluster.status`, are listed by name.

#![forbid(unsafe_code)]

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One message type with its body and reply.
pub trait Message {
    /// Its catalogue entry.
    const TYPE: Type;
    /// What the request carries.
    type Body: Serialize + DeserializeOwned;
    /// What a successful reply carries.
    type Reply: Serialize + DeserializeOwned;
}

/// Declares a [`Message`]: `Name = "type", auth, writes: Body => Reply`.
macro_rules! message {
    ($(#[$doc:meta])* $name:ident = $kind:literal, $auth:ident, $writes:literal: $body:ty => $reply:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl $crate::Message for $name {
            const TYPE: $crate::Type = $crate::Type {
                name: $kind,
                auth: $crate::Auth::$auth,
                writes: $writes,
                streams: false,
            };
            type Body = $body;
            type Reply = $reply;
        }
    };
}

/// Largest page a listing returns (`blacklist.list`, `gate.history`).
pub const LIMIT_MAX: u32 = 500;

/// A body or reply with nothing in it: `{}` (anything else is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `sys.*`.
pub mod sys {
    use super::*;

    /// `sys.ping`'s reply.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Pong {
        /// The node that answered.
        pub node: String,
    }

    /// `sys.cancel`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CancelBody {
        /// The id of the streaming request to end.
        pub id: u64,
    }

    message!(
        /// `sys.ping`: which node answers.
        Ping = "sys.ping", App, false: Empty => Pong
    );
    message!(
        /// `sys.cancel`: ends a stream of this connection.
        Cancel = "sys.cancel", App, false: CancelBody => Empty
    );
}

/// `user.*`: accounts and sessions.
pub mod user {
    use super::*;

    /// What a user may do; each role includes the ones below it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Role {
        /// Reads the blacklist and the gate history.
        Viewer,
        /// Also changes the blacklist.
        Operator,
        /// Also manages users.
        Admin,
    }

    impl Role {
        /// The name stored and sent on the wire.
        pub fn as_str(self) -> &'static str {
            match self {
                Role::Viewer => "viewer",
                Role::Operator => "operator",
                Role::Admin => "admin",
            }
        }
    }

    impl std::fmt::Display for Role {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    /// A role name that is none of viewer, operator, admin.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct UnknownRole;

    impl std::str::FromStr for Role {
        type Err = UnknownRole;

        fn from_str(s: &str) -> Result<Role, UnknownRole> {
            match s {
                "viewer" => Ok(Role::Viewer),
                "operator" => Ok(Role::Operator),
                "admin" => Ok(Role::Admin),
                _ => Err(UnknownRole),
            }
        }
    }

    /// `user.register` and `user.login`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Credentials {
        pub name: String,
        pub password: String,
    }

    /// A user as replies show it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct User {
        pub id: u64,
        pub name: String,
        pub role: Role,
    }

    /// `user.login`'s reply.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LoggedIn {
        pub token: String,
        /// Unix ms.
        pub expires_at: i64,
        pub user: User,
    }

    /// `user.register`'s reply: the same whether the name was free (it is
    /// now this account's) or taken (nothing changed), so that registering
    /// tells no one which names exist. Log in to know.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Registered {
        pub name: String,
    }

    /// `user.create`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CreateBody {
        pub name: String,
        pub password: String,
        /// viewer (the default), operator or admin.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub role: Option<String>,
    }

    /// `user.set_role`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SetRoleBody {
        pub name: String,
        /// viewer, operator or admin.
        pub role: String,
    }

    message!(
        /// `user.register`: a new viewer, when the server's registration is
        /// open (`forbidden` when closed). The reply is the same for a
        /// taken name, which keeps its account and password: no message
        /// says which names exist.
        Register = "user.register", App, true: Credentials => Registered
    );
    message!(
        /// `user.create`: an admin makes an account (with registration
        /// closed, the only way); `conflict` if the name is taken.
        Create = "user.create", Admin, true: CreateBody => User
    );
    message!(
        /// `user.login`: a session token. Not run once: its reply holds a
        /// token, which must not be kept in clear (sessions are stored
        /// hashed); a resend makes a second session, the first expires.
        Login = "user.login", App, false: Credentials => LoggedIn
    );
    message!(
        /// `user.logout`: ends the session of the token sent.
        Logout = "user.logout", Viewer, true: Empty => Empty
    );
    message!(
        /// `user.me`: who the token belongs to.
        Me = "user.me", Viewer, false: Empty => User
    );
    message!(
        /// `user.set_role`: gives a user a role.
        SetRole = "user.set_role", Admin, true: SetRoleBody => User
    );
}

/// `blacklist.*`: people refused at the gates.
pub mod blacklist {
    use super::*;

    /// A blacklisted person.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Entry {
        /// The id card, unique (case-insensitively).
        pub id_card: String,
        /// The person's name.
        pub name: String,
        /// Why they are listed, if anyone said.
        pub reason: Option<String>,
        /// Name of the user who listed them.
        pub created_by: String,
        /// When they were listed, Unix ms.
        pub created_at: i64,
        /// Name of the user who last changed the entry.
        pub updated_by: String,
        /// When the entry last changed, Unix ms.
        pub updated_at: i64,
    }

    /// A page of [`List`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Page {
        /// Up to `limit` entries, in id card order (or name order with a prefix).
        pub entries: Vec<Entry>,
        /// Pass as `after` to get the next page; `None` on the last page.
        pub next: Option<String>,
    }

    /// `blacklist.add`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AddBody {
        pub id_card: String,
        pub name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
    }

    /// `blacklist.get` and `blacklist.remove`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct IdCard {
        pub id_card: String,
    }

    /// `blacklist.update`'s body: fields left out stay as they are;
    /// `reason: ""` clears the reason.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct UpdateBody {
        pub id_card: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
    }

    /// `blacklist.list`'s body.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ListBody {
        /// The `next` of the previous page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub after: Option<String>,
        /// 1 to [`LIMIT_MAX`] [default: 100].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub limit: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name_prefix: Option<String>,
    }

    message!(
        /// `blacklist.add`: lists a person; `conflict` if already listed.
        Add = "blacklist.add", Operator, true: AddBody => Entry
    );
    message!(
        /// `blacklist.get`: the entry, or `not_found`.
        Get = "blacklist.get", Viewer, false: IdCard => Entry
    );
    message!(
        /// `blacklist.update`: the changed entry, or `not_found`.
        Update = "blacklist.update", Operator, true: UpdateBody => Entry
    );
    message!(
        /// `blacklist.remove`: `{}`, or `not_found`.
        Remove = "blacklist.remove", Operator, true: IdCard => Empty
    );
    message!(
        /// `blacklist.list`: keyset-paginated entries.
        List = "blacklist.list", Viewer, false: ListBody => Page
    );
}

/// `gate.*`: checks at the gates and their history.
pub mod gate {
    use super::*;
    use crate::blacklist::Entry;

    /// `gate.check`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CheckBody {
        pub id_card: String,
        pub name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub gate: Option<String>,
    }

    /// `gate.check`'s reply.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Checked {
        pub hit: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub entry: Option<Entry>,
    }

    /// `gate.history`'s body; filters combine.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HistoryBody {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub id_card: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub gate: Option<String>,
        /// 1 to [`LIMIT_MAX`] [default: 50].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub limit: Option<u32>,
    }

    /// One recorded check.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct GateCheck {
        /// Increasing with insertion: newest has the largest id.
        pub id: u64,
        pub id_card: String,
        pub name: String,
        pub gate: Option<String>,
        /// The app server that answered.
        pub node: String,
        pub hit: bool,
        /// When, Unix ms.
        pub checked_at: i64,
    }

    /// `gate.history`'s reply.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Checks {
        pub checks: Vec<GateCheck>,
    }

    message!(
        /// `gate.check`: whether the id card is listed; every check is
        /// recorded. Not run once: a repeated check is one more record of
        /// what the gate would have done anyway.
        Check = "gate.check", App, false: CheckBody => Checked
    );
    message!(
        /// `gate.history`: checks, newest first.
        History = "gate.history", Viewer, false: HistoryBody => Checks
    );
}

/// The cluster's own types (cluster secret): the view the collector pushes
/// to balancers, and the heartbeats app servers send the collector.
pub mod cluster {
    use super::*;

    /// Default weight of a node.
    pub const DEFAULT_WEIGHT: u32 = 1;

    /// Largest weight a node may claim: a thousand times the share of a
    /// node of weight 1 (each unit of weight is its own virtual nodes).
    pub const MAX_WEIGHT: u32 = 1000;

    /// One version of the cluster's membership and load.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct View {
        /// Only grows; a balancer ignores a view older than the one it holds.
        pub version: u64,
        pub nodes: Vec<NodeView>,
    }

    /// A member as the view describes it.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NodeView {
        /// Stable id (default: the advertised address); a node restarted under
        /// the same id takes back the same ring points.
        pub id: String,
        /// Where clients connect, `host:port`.
        pub addr: String,
        /// Where the balancer's proxy mode splices connections, when it is
        /// not `addr` (an MQTT broker beside an app server, say).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub proxy_addr: Option<String>,
        /// Relative share of keys; 0 takes no new keys.
        #[serde(default = "default_weight")]
        pub weight: u32,
        #[serde(default)]
        pub state: NodeState,
        #[serde(default)]
        pub load: Load,
    }

    fn default_weight() -> u32 {
        DEFAULT_WEIGHT
    }

    /// Whether a node takes new keys.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum NodeState {
        /// Serving and taking new keys.
        #[default]
        Up,
        /// Finishing what it has; gets no new keys.
        Draining,
    }

    /// The load figures a node last reported (smoothed by the collector).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Load {
        #[serde(default)]
        pub conns: u64,
        #[serde(default)]
        pub inflight: u64,
        #[serde(default)]
        pub rps: f64,
        #[serde(default)]
        pub p99_ms: f64,
    }

    /// `node.heartbeat`'s body: an app server saying it is alive, where, and
    /// how loaded. Sent to the collector every second under the cluster secret.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Heartbeat {
        /// Stable node id (default: the advertised address).
        pub id: String,
        /// Where clients connect, `host:port`.
        pub addr: String,
        /// Where proxy mode splices to, when it is not `addr`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub proxy_addr: Option<String>,
        #[serde(default = "default_weight")]
        pub weight: u32,
        #[serde(default)]
        pub state: NodeState,
        #[serde(default)]
        pub stats: Stats,
        /// The view version this node holds (from an earlier reply): the
        /// reply carries the view's nodes when the collector's is another.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub known_view: Option<u64>,
    }

    /// What a node measures about itself, over the last heartbeat interval.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Stats {
        /// Connections open now.
        #[serde(default)]
        pub conns: u64,
        /// Requests being handled now.
        #[serde(default)]
        pub inflight: u64,
        /// Requests waiting for a worker now.
        #[serde(default)]
        pub queue: u64,
        /// Requests per second answered.
        #[serde(default)]
        pub rps: f64,
        /// Error replies per second.
        #[serde(default)]
        pub errors_per_s: f64,
        /// Median latency, milliseconds.
        #[serde(default)]
        pub p50_ms: f64,
        /// 99th percentile latency, milliseconds.
        #[serde(default)]
        pub p99_ms: f64,
    }

    /// `node.leave`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Leave {
        pub id: String,
    }

    /// `node.heartbeat`'s reply: the view version the collector holds,
    /// and its nodes when the heartbeat's `known_view` was another version
    /// (app servers find their peers in it).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct HeartbeatReply {
        pub view: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub nodes: Option<Vec<NodeView>>,
    }

    /// `lb.set_view`'s reply: the version the balancer holds after it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Applied {
        pub applied: u64,
        /// The balancer's counters at the time (absent from balancers
        /// older than proxy mode).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub stats: Option<super::lb::Stats>,
    }

    message!(
        /// `node.heartbeat`: an app server to the collector.
        NodeHeartbeat = "node.heartbeat", Cluster, false: Heartbeat => HeartbeatReply
    );
    message!(
        /// `node.leave`: an app server leaving at the end of a graceful stop.
        NodeLeave = "node.leave", Cluster, false: Leave => Empty
    );
    message!(
        /// `lb.set_view`: the collector to a balancer; older versions are
        /// ignored.
        SetView = "lb.set_view", Cluster, false: View => Applied
    );
}

/// `lb.*`: the balancer's client port.
pub mod lb {
    use super::*;

    /// Longest routing key, in bytes.
    pub const MAX_KEY: usize = 1024;
    /// Most node ids one resolve may exclude.
    pub const MAX_EXCLUDE: usize = 64;

    /// `lb.resolve`'s body.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ResolveBody {
        /// The routing key (at most [`MAX_KEY`] bytes); without one the
        /// peer's IP address is the key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub key: Option<String>,
        /// Node ids to skip (they failed for this client), at most
        /// [`MAX_EXCLUDE`].
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub exclude: Vec<String>,
    }

    /// `lb.resolve`'s reply.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Resolved {
        pub node: String,
        pub addr: String,
        pub view: u64,
    }

    message!(
        /// `lb.resolve`: which node owns the key.
        Resolve = "lb.resolve", App, false: ResolveBody => Resolved
    );

    /// Largest page of pins `lb.pins` returns.
    pub const PINS_MAX: u32 = 1000;

    /// `lb.pins`'s body: a page of the stored routes of proxy mode.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PinsBody {
        /// The `next` of the page before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub after: Option<String>,
        /// At most [`PINS_MAX`] (default 100).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub limit: Option<u32>,
        /// Only the pins to this node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub node: Option<String>,
    }

    /// One stored route.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Pin {
        /// The routing key (lossy UTF-8; a `triple` key's parts are joined
        /// by U+0000).
        pub key: String,
        pub node: String,
        /// Milliseconds since a device last connected with this key.
        pub idle_ms: u64,
        /// When the key was pinned to this node (Unix milliseconds).
        pub pinned_at_ms: u64,
    }

    /// `lb.pins`'s reply.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PinPage {
        pub pins: Vec<Pin>,
        /// Pass as `after` for the next page; absent on the last.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub next: Option<String>,
    }

    /// `lb.unpin`'s body: one key, or every pin to one node.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct UnpinBody {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub node: Option<String>,
    }

    /// `lb.unpin`'s reply.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Unpinned {
        pub dropped: u64,
    }

    /// Proxy mode's counters since start, as `lb.stats` reports them.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ProxyStats {
        /// Connections accepted on proxy listeners.
        pub accepted: u64,
        /// Connections spliced to a backend (a failover counts once more).
        pub piped: u64,
        /// Bytes carried, both ways.
        pub bytes: u64,
        /// First packets refused, by reason (`not_connect`, `too_large`,
        /// `malformed`, `protocol_name`, `protocol_level`, `client_id`).
        pub refused: std::collections::BTreeMap<String, u64>,
        /// Connections closed before their first packet was complete.
        pub incomplete: u64,
        /// Connections turned away because no node takes keys.
        pub unavailable: u64,
        /// Backends that refused or timed out, each followed by a failover.
        pub backend_failures: u64,
        pub pins: PinStats,
    }

    /// Pin events since start.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PinStats {
        /// Keys pinned for the first time.
        pub created: u64,
        /// Keys pinned anew because their node left the view or refused them.
        pub moved: u64,
        /// Pins dropped a TTL after their last use.
        pub expired: u64,
        /// Pins dropped by an operator (`lb.unpin`).
        pub dropped: u64,
        /// New keys routed but not stored: the table was at its cap.
        pub full: u64,
        /// Reads or writes of the shared table (`--pins-db`) that failed;
        /// the key was routed by the ring meanwhile.
        pub db_errors: u64,
        /// Pins held now (with `--pins-db`: the shared table, as last counted).
        pub held: u64,
    }

    /// `lb.stats`'s reply.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Stats {
        /// The view in force.
        pub view: u64,
        /// Connections open now, all ports.
        pub conns: u64,
        /// Absent when no proxy listener is configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub proxy: Option<ProxyStats>,
    }

    message!(
        /// `lb.pins`: a page of proxy mode's stored routes (cluster secret).
        Pins = "lb.pins", Cluster, false: PinsBody => PinPage
    );
    message!(
        /// `lb.unpin`: drops stored routes; the next connection with the key
        /// is routed by the ring again (cluster secret).
        Unpin = "lb.unpin", Cluster, false: UnpinBody => Unpinned
    );
    message!(
        /// `lb.stats`: the balancer's counters, proxy mode's included.
        GetStats = "lb.stats", App, false: Empty => Stats
    );
}

/// `task.*` and `job.*`: the task service. A job belongs to the app (and
/// the user, when a session is given) that submitted it.
pub mod task {
    use super::*;

    /// Most tasks one `task.submit` carries.
    pub const SUBMIT_MAX: usize = 1000;
    /// Largest payload (its JSON), in bytes.
    pub const PAYLOAD_MAX: usize = 64 * 1024;
    /// Largest result or error kept, in bytes.
    pub const RESULT_MAX: usize = 256 * 1024;
    /// Most tasks one `task.claim` takes.
    pub const CLAIM_MAX: u32 = 100;
    /// Shortest and longest lease, in milliseconds.
    pub const LEASE_MIN_MS: u64 = 1_000;
    pub const LEASE_MAX_MS: u64 = 3_600_000;
    /// Longest `wait_ms` of a claim.
    pub const WAIT_MAX_MS: u64 = 20_000;
    /// Attempts a task gets when the submit names none.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

    /// One task of a submit.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NewTask {
        /// Any JSON value, at most [`PAYLOAD_MAX`] bytes as text.
        pub payload: Box<serde_json::value::RawValue>,
        /// Unique per app: a task submitted again with a key the app holds
        /// is not added twice (running the same submit again is harmless).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub key: Option<String>,
        /// Higher runs first (default 0).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub priority: Option<i32>,
    }

    /// `task.submit`'s body.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SubmitBody {
        /// Add to this job (yours, not cancelled); without it a new job.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub job: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        pub tasks: Vec<NewTask>,
        /// For a new job: attempts per task, 1 to 100 (default 3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub max_attempts: Option<u32>,
    }

    /// `task.submit`'s reply.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Submitted {
        pub job: u64,
        /// Tasks added (a key the job already held is not).
        pub accepted: u64,
    }

    /// `task.claim`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ClaimBody {
        /// 1 to [`CLAIM_MAX`].
        pub n: u32,
        pub lease_ms: u64,
        /// Wait up to this long when nothing is ready (default 0).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub wait_ms: Option<u64>,
    }

    /// A claimed task.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Claimed {
        pub task: u64,
        pub job: u64,
        pub payload: Box<serde_json::value::RawValue>,
        /// 1 on the first claim.
        pub attempt: u32,
        /// Give it back with the completion: a completion under an older
        /// fence (the lease expired and another worker took the task) is
        /// refused.
        pub fence: u64,
        /// Unix milliseconds, by the database clock.
        pub lease_until: i64,
    }

    /// `task.claim`'s reply.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ClaimReply {
        pub tasks: Vec<Claimed>,
    }

    /// A lease a worker holds.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Lease {
        pub task: u64,
        pub fence: u64,
    }

    /// `task.heartbeat`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HeartbeatBody {
        pub leases: Vec<Lease>,
        pub lease_ms: u64,
    }

    /// `task.heartbeat`'s reply: tasks whose lease was extended, and those
    /// no longer this worker's.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Extended {
        pub extended: Vec<u64>,
        pub lost: Vec<u64>,
    }

    /// `task.complete`'s body.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CompleteBody {
        pub task: u64,
        pub fence: u64,
        pub result: Box<serde_json::value::RawValue>,
    }

    /// `task.fail`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FailBody {
        pub task: u64,
        pub fence: u64,
        pub error: String,
    }

    /// A job, by id.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct JobRef {
        pub job: u64,
    }

    /// `job.status`'s reply.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct JobStatus {
        pub job: u64,
        /// `running` (some task is ready, running or waiting), `done`
        /// (every task done or dead) or `cancelled`.
        pub state: String,
        pub total: u64,
        pub done: u64,
        /// Failed attempts (each retried, until the last makes a task dead).
        pub failed: u64,
        pub dead: u64,
        pub running: u64,
        /// Ready now, or waiting out a retry's backoff.
        pub ready: u64,
    }

    /// `job.results`' body.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ResultsBody {
        pub job: u64,
        /// The `next` of the page before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub after: Option<u64>,
        /// At most [`LIMIT_MAX`] (default 100).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub limit: Option<u32>,
    }

    /// One task's outcome.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct TaskResult {
        pub task: u64,
        pub seq: u64,
        pub state: String,
        pub attempts: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub result: Option<Box<serde_json::value::RawValue>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
    }

    /// `job.results`' reply.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Results {
        pub results: Vec<TaskResult>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub next: Option<u64>,
    }

    message!(
        /// `task.submit`: a batch of tasks, into a new job or one of yours.
        Submit = "task.submit", App, true: SubmitBody => Submitted
    );
    message!(
        /// `task.claim`: up to `n` ready tasks, leased.
        Claim = "task.claim", App, true: ClaimBody => ClaimReply
    );
    message!(
        /// `task.heartbeat`: extends the leases still held.
        Heartbeat = "task.heartbeat", App, false: HeartbeatBody => Extended
    );
    message!(
        /// `task.complete`: the result, under the lease's fence.
        Complete = "task.complete", App, true: CompleteBody => Empty
    );
    message!(
        /// `task.fail`: a failed attempt, retried with backoff until the last.
        Fail = "task.fail", App, true: FailBody => Empty
    );
    message!(
        /// `job.status`: the job's counts.
        Status = "job.status", App, false: JobRef => JobStatus
    );
    message!(
        /// `job.results`: a page of task outcomes in submit order.
        GetResults = "job.results", App, false: ResultsBody => Results
    );
    message!(
        /// `job.cancel`: ready and waiting tasks are dropped, leases revoked.
        Cancel = "job.cancel", App, true: JobRef => Empty
    );

    /// A `progress` event of `job.watch`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Progress {
        pub done: u64,
        pub failed: u64,
        pub dead: u64,
        pub running: u64,
        pub total: u64,
        /// Tasks finished (done or dead) per second, over the last seconds.
        pub rate: f64,
    }

    /// The name of `job.watch`'s events.
    pub const PROGRESS: &str = "progress";

    /// `job.watch`: `progress` events whenever the counts change (at most
    /// every 100 ms), then the final [`JobStatus`] when the job ends.
    #[derive(Debug, Clone, Copy)]
    pub struct Watch;

    impl Message for Watch {
        const TYPE: Type = Type {
            name: "job.watch",
            auth: Auth::App,
            writes: false,
            streams: true,
        };
        type Body = JobRef;
        type Reply = JobStatus;
    }
}

/// `audit.list`: the audit trail of role changes, users made and blacklist
/// changes.
pub mod audit {
    use super::*;

    /// `audit.list`'s body.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ListBody {
        /// Entries older than this id (the `next` of the page before).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub before: Option<u64>,
        /// Only entries about this user name or id card.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub subject: Option<String>,
        /// At most [`LIMIT_MAX`] (default 50).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub limit: Option<u32>,
    }

    /// One entry.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Entry {
        pub id: u64,
        /// Unix ms.
        pub at: u64,
        /// Who did it; absent for the command line (`app-server create-admin`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub actor: Option<String>,
        /// The node that did it.
        pub node: String,
        /// `user.create`, `user.set_role`, `blacklist.add`, `.update` or `.remove`.
        pub action: String,
        /// The user name or id card acted on.
        pub subject: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub detail: Option<Box<serde_json::value::RawValue>>,
    }

    /// `audit.list`'s reply: newest first.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Page {
        pub entries: Vec<Entry>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub next: Option<u64>,
    }

    message!(
        /// `audit.list`: a page of the audit trail (admins).
        List = "audit.list", Admin, false: ListBody => Page
    );
}

/// `msg.*`: messages between users, on any app server; `peer.notify`
/// between app servers.
pub mod msg {
    use super::*;

    /// Largest message body (its JSON), in bytes.
    pub const BODY_MAX: usize = 64 * 1024;
    /// Unacknowledged messages a subscription holds when it names no credit.
    pub const CREDIT_DEFAULT: u32 = 100;
    /// Largest credit a subscription may ask for.
    pub const CREDIT_MAX: u32 = 1000;
    /// Most members a room may have.
    pub const ROOM_MEMBERS_MAX: u64 = 1000;
    /// Longest room name, in characters.
    pub const ROOM_MAX: usize = 64;
    /// Default page of `msg.history`.
    pub const HISTORY_DEFAULT: u32 = 50;
    /// The name of `msg.subscribe`'s events.
    pub const MESSAGE: &str = "message";

    /// `msg.send`'s body: to one user (`to`) or to a room's members (`room`).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SendBody {
        /// The recipient's user name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub to: Option<String>,
        /// A room the sender is a member of.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub room: Option<String>,
        /// Any JSON value, at most [`BODY_MAX`] bytes as text.
        pub body: Box<serde_json::value::RawValue>,
    }

    /// `msg.send`'s reply.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Sent {
        /// The message's id (one per send, however many inboxes list it).
        pub id: u64,
        /// Its number in the recipient's inbox (a direct message).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub seq: Option<u64>,
        /// How many inboxes it went to (a room's message; the sender's is
        /// not one of them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub recipients: Option<u64>,
    }

    /// `msg.subscribe`'s body.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SubscribeBody {
        /// Messages sent and not yet acknowledged at most, 1 to
        /// [`CREDIT_MAX`] (default [`CREDIT_DEFAULT`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub credit: Option<u32>,
    }

    /// A `message` event of `msg.subscribe`: one message of the inbox, in
    /// `seq` order.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Message {
        pub id: u64,
        /// Its number in this inbox: 1, 2, 3… with no gaps.
        pub seq: u64,
        /// The sender's user name.
        pub from: String,
        /// The room it was sent to, if it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub room: Option<String>,
        pub body: Box<serde_json::value::RawValue>,
        /// When it was stored, Unix ms (the storing app server's clock).
        pub sent_at: u64,
    }

    /// `msg.ack`'s body: every message up to `upto` is handled.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AckBody {
        pub upto: u64,
    }

    /// `msg.history`'s body.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HistoryBody {
        /// Only the direct messages between you and this user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub with: Option<String>,
        /// Messages older than this id (the `next` of the page before).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub before: Option<u64>,
        /// At most [`LIMIT_MAX`] (default [`HISTORY_DEFAULT`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub limit: Option<u32>,
    }

    /// One message of `msg.history`, sent or received.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Entry {
        pub id: u64,
        pub from: String,
        /// The recipient of a direct message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub to: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub room: Option<String>,
        pub body: Box<serde_json::value::RawValue>,
        pub sent_at: u64,
        /// Its number in your inbox, for a message you received.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub seq: Option<u64>,
    }

    /// `msg.history`'s reply: newest first.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct History {
        pub messages: Vec<Entry>,
        /// Pass as `before` for the next (older) page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub next: Option<u64>,
    }

    /// `msg.join`'s and `msg.leave`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RoomBody {
        /// 1 to [`ROOM_MAX`] letters, digits, `.`, `_` or `-`.
        pub room: String,
    }

    /// `msg.join`'s reply.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Joined {
        pub room: String,
        /// Members now, you included.
        pub members: u64,
    }

    /// `peer.notify`'s body: user `user` has message `seq` waiting; the
    /// message itself rides along (the `message` event's body), so the
    /// node holding the subscription can push it without reading it back.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NotifyBody {
        pub user: u64,
        pub seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub message: Option<Box<serde_json::value::RawValue>>,
    }

    message!(
        /// `msg.send`: a message to a user's inbox, or to every member of a room.
        Send = "msg.send", Viewer, true: SendBody => Sent
    );
    message!(
        /// `msg.ack`: the messages up to `upto` are handled; frees credit.
        Ack = "msg.ack", Viewer, false: AckBody => Empty
    );
    message!(
        /// `msg.history`: messages you sent and received, newest first.
        GetHistory = "msg.history", Viewer, false: HistoryBody => History
    );
    message!(
        /// `msg.join`: joins a room, making it if it does not exist.
        Join = "msg.join", Viewer, true: RoomBody => Joined
    );
    message!(
        /// `msg.leave`: leaves a room.
        Leave = "msg.leave", Viewer, true: RoomBody => Empty
    );
    message!(
        /// `peer.notify`: an app server tells the one holding a user's
        /// subscription that a message is waiting.
        Notify = "peer.notify", Cluster, false: NotifyBody => Empty
    );

    /// `msg.subscribe`: the inbox's messages not yet acknowledged, in
    /// order, then new ones as they come, at most `credit` unacknowledged
    /// at a time. One per connection; a newer subscription of the same
    /// user (on any node) ends this one with `conflict`.
    #[derive(Debug, Clone, Copy)]
    pub struct Subscribe;

    impl super::Message for Subscribe {
        const TYPE: Type = Type {
            name: "msg.subscribe",
            auth: Auth::Viewer,
            writes: false,
            streams: true,
        };
        type Body = SubscribeBody;
        type Reply = serde_json::Value;
    }
}

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

/// Every message type of every part.
pub const CATALOGUE: &[Type] = &[
    <sys::Ping as Message>::TYPE,
    <sys::Cancel as Message>::TYPE,
    <user::Register as Message>::TYPE,
    <user::Create as Message>::TYPE,
    <user::Login as Message>::TYPE,
    <user::Logout as Message>::TYPE,
    <user::Me as Message>::TYPE,
    <user::SetRole as Message>::TYPE,
    <blacklist::Add as Message>::TYPE,
    <blacklist::Get as Message>::TYPE,
    <blacklist::Update as Message>::TYPE,
    <blacklist::Remove as Message>::TYPE,
    <blacklist::List as Message>::TYPE,
    <gate::Check as Message>::TYPE,
    <gate::History as Message>::TYPE,
    <lb::Resolve as Message>::TYPE,
    <lb::Pins as Message>::TYPE,
    <lb::Unpin as Message>::TYPE,
    <lb::GetStats as Message>::TYPE,
    <task::Submit as Message>::TYPE,
    <task::Claim as Message>::TYPE,
    <task::Heartbeat as Message>::TYPE,
    <task::Complete as Message>::TYPE,
    <task::Fail as Message>::TYPE,
    <task::Status as Message>::TYPE,
    <task::GetResults as Message>::TYPE,
    <task::Cancel as Message>::TYPE,
    <task::Watch as Message>::TYPE,
    <audit::List as Message>::TYPE,
    <msg::Send as Message>::TYPE,
    <msg::Subscribe as Message>::TYPE,
    <msg::Ack as Message>::TYPE,
    <msg::GetHistory as Message>::TYPE,
    <msg::Join as Message>::TYPE,
    <msg::Leave as Message>::TYPE,
    <msg::Notify as Message>::TYPE,
    <cluster::NodeHeartbeat as Message>::TYPE,
    <cluster::NodeLeave as Message>::TYPE,
    <cluster::SetView as Message>::TYPE,
    // Diagnostic reports whose shape belongs to the server that makes them
    // (the ring's shares, the collector's member table; see the README);
    // listed by name, their replies read as JSON.
    read("lb.view", Auth::App),
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
    fn bodies_leave_out_what_is_not_given_and_refuse_unknown_fields() {
        let add = blacklist::AddBody {
            id_card: "1101".into(),
            name: "Li".into(),
            reason: None,
        };
        assert_eq!(
            serde_json::to_string(&add).unwrap(),
            r#"{"id_card":"1101","name":"Li"}"#
        );
        let e = serde_json::from_str::<blacklist::IdCard>(r#"{"id_card":"1","x":1}"#);
        assert!(e.unwrap_err().to_string().contains("unknown field `x`"));
        assert_eq!(
            serde_json::to_string(&lb::ResolveBody::default()).unwrap(),
            "{}"
        );
    }

    #[test]
    fn every_message_is_in_the_catalogue_under_its_name() {
        fn listed<M: Message>() {
            assert_eq!(get(M::TYPE.name), Some(&M::TYPE), "{}", M::TYPE.name);
        }
        listed::<sys::Ping>();
        listed::<sys::Cancel>();
        listed::<user::Register>();
        listed::<user::Create>();
        listed::<user::Login>();
        listed::<user::Logout>();
        listed::<user::Me>();
        listed::<user::SetRole>();
        listed::<blacklist::Add>();
        listed::<blacklist::Get>();
        listed::<blacklist::Update>();
        listed::<blacklist::Remove>();
        listed::<blacklist::List>();
        listed::<gate::Check>();
        listed::<gate::History>();
        listed::<lb::Resolve>();
        listed::<cluster::NodeHeartbeat>();
        listed::<cluster::NodeLeave>();
        listed::<cluster::SetView>();
        listed::<audit::List>();
        listed::<msg::Send>();
        listed::<msg::Subscribe>();
        listed::<msg::Ack>();
        listed::<msg::GetHistory>();
        listed::<msg::Join>();
        listed::<msg::Leave>();
        listed::<msg::Notify>();
    }

    #[test]
    fn reads_may_be_resent_and_writes_and_unknown_types_run_once() {
        assert!(!writes("blacklist.get"));
        assert!(!writes("lb.resolve"));
        assert!(writes("blacklist.add"));
        assert!(writes("no.such.type"));
    }
}
