//! `dsf-proto`: message types, written once and used by the servers (each
//! route is declared from its type) and by the SDK (how it may send one
//! again).
//!
//! A message type is a [`Message`]: its [`Type`] (name, who may send it
//! ([`Auth`]), and its [`Kind`]: a read, a write that runs once, or a
//! stream of events), its body, its reply, and a stream's event. Declare
//! one with [`message!`]; a user's crate declares its own the same way:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! pub struct PlaceBody { pub item: String, pub qty: u32 }
//! #[derive(Debug, Serialize, Deserialize)]
//! pub struct Placed { pub id: u64 }
//!
//! dsf_proto::message! {
//!     /// `order.place`: a new order of the caller's.
//!     pub Place = "order.place", Viewer, write: PlaceBody => Placed
//! }
//!
//! use dsf_proto::Message;
//! assert_eq!(Place::TYPE.name, "order.place");
//! assert!(Place::TYPE.writes());
//! ```
//!
//! A server's catalogue is not a fixed list: it is assembled at start from
//! the services it runs ([`Catalogue`]), and two services declaring one
//! name refuse to start. [`CATALOGUE`] lists dsf's own types (modules
//! [`sys`], [`user`], [`blacklist`], [`gate`], [`lb`], [`cluster`],
//! [`task`], [`audit`], [`msg`]), which the SDK uses for a type it is
//! given only by name.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One message type with its body, its reply and (for a stream) its event.
pub trait Message: 'static {
    /// Its catalogue entry.
    const TYPE: Type;
    /// What the request carries.
    type Body: Serialize + DeserializeOwned + Send + 'static;
    /// What a successful reply carries (a stream's final reply).
    type Reply: Serialize + DeserializeOwned + Send + 'static;
    /// The body of a stream's events ([`Empty`] for a type that does not
    /// stream).
    type Event: Serialize + DeserializeOwned + Send + 'static;
    /// Its doc comment (what [`message!`] was given), for generated
    /// references such as the book's catalogue.
    const DOC: &'static str = "";
}

/// Declares a [`Message`]: a unit struct named `Name` whose [`Type`] is
/// `"type"` with the given [`Auth`] and kind.
///
/// ```text
/// message! { /// docs
///     pub Name = "group.verb", Auth, read: Body => Reply }
/// message! { pub Name = "group.verb", Auth, write: Body => Reply }
/// message! { pub Name = "group.verb", Auth, stream: Body => Reply, event "name": Event }
/// ```
///
/// `Auth` is one of [`Auth`]'s variants (`App`, `AppOrUser`, `Viewer`,
/// `Operator`, `Admin`, `Cluster`, `Node`, `Peer`). A *write* runs once on
/// any node: its reply is stored with its effects, and the same signed
/// request sent again gets the stored reply. A *stream* is answered by
/// events named `"name"` carrying `Event`, then one final `Reply`. Doc
/// comments (and only they) may come first; they are the type's
/// [`Message::DOC`].
///
/// ```
/// use dsf_proto::{Empty, Kind, Message};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] pub struct WatchBody { pub id: u64 }
/// # #[derive(Serialize, Deserialize)] pub struct Status { pub status: String }
/// dsf_proto::message! {
///     /// `order.watch`: the order's status now, then each change.
///     pub Watch = "order.watch", Viewer, stream: WatchBody => Status, event "status": Status
/// }
/// assert_eq!(Watch::TYPE.kind, Kind::Stream { event: "status" });
/// assert_eq!(Watch::DOC.trim(), "`order.watch`: the order's status now, then each change.");
/// ```
#[macro_export]
macro_rules! message {
    ($(#[doc = $doc:literal])* $vis:vis $name:ident = $kind:literal, $auth:ident, read: $body:ty => $reply:ty $(,)?) => {
        $crate::message!(@def [$($doc)*] $vis $name, $kind, $auth, $crate::Kind::Read, $body, $reply, $crate::Empty);
    };
    ($(#[doc = $doc:literal])* $vis:vis $name:ident = $kind:literal, $auth:ident, write: $body:ty => $reply:ty $(,)?) => {
        $crate::message!(@def [$($doc)*] $vis $name, $kind, $auth, $crate::Kind::Write, $body, $reply, $crate::Empty);
    };
    ($(#[doc = $doc:literal])* $vis:vis $name:ident = $kind:literal, $auth:ident, stream: $body:ty => $reply:ty, event $event:literal: $ev:ty $(,)?) => {
        $crate::message!(@def [$($doc)*] $vis $name, $kind, $auth, $crate::Kind::Stream { event: $event }, $body, $reply, $ev);
    };
    (@def [$($doc:literal)*] $vis:vis $name:ident, $kind:literal, $auth:ident, $k:expr, $body:ty, $reply:ty, $ev:ty) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy)]
        $vis struct $name;

        impl $crate::Message for $name {
            const TYPE: $crate::Type = $crate::Type {
                name: $kind,
                auth: $crate::Auth::$auth,
                kind: $k,
            };
            type Body = $body;
            type Reply = $reply;
            type Event = $ev;
            const DOC: &'static str = concat!($($doc, "\n"),*);
        }
    };
}

/// Largest page a listing returns (`blacklist.list`, `gate.history`).
pub const LIMIT_MAX: u32 = 500;

/// A body or reply with nothing in it: `{}` (anything else is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `sys.*`.
pub mod sys {
    use super::*;

    /// `sys.ping`'s reply.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Pong {
        /// The node that answered.
        pub node: String,
    }

    /// `sys.cancel`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct CancelBody {
        /// The id of the streaming request to end.
        pub id: u64,
    }

    message!(
        /// `sys.ping`: which node answers.
        pub Ping = "sys.ping", App, read: Empty => Pong
    );
    message!(
        /// `sys.cancel`: ends a stream of this connection.
        pub Cancel = "sys.cancel", App, read: CancelBody => Empty
    );

    /// `peer.wake`'s body: topics whose state changed on the sender.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct WakeBody {
        /// At most [`WAKE_TOPICS_MAX`] topics, each at most
        /// [`TOPIC_MAX`] bytes.
        pub topics: Vec<String>,
        /// Of the long polls parked on each topic, wake only this many,
        /// those that waited longest (streams that follow a topic are all
        /// woken); absent, every one. A submit of `n` tasks wakes `n`
        /// claims.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub limit: Option<u32>,
    }

    /// Most topics one `peer.wake` carries.
    pub const WAKE_TOPICS_MAX: usize = 1000;
    /// Longest topic, in bytes.
    pub const TOPIC_MAX: usize = 256;

    message!(
        /// `peer.wake`: an app server tells the others that a write
        /// committed on `topics`, so their long polls and streams waiting
        /// on those topics look again now.
        pub Wake = "peer.wake", Peer, read: WakeBody => Empty
    );
}

/// `user.*`: accounts and sessions.
pub mod user {
    use super::*;

    /// What a user may do; each role includes the ones below it.
    #[derive(
        Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
    )]
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
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Credentials {
        pub name: String,
        pub password: String,
    }

    /// A user as replies show it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct User {
        pub id: u64,
        pub name: String,
        pub role: Role,
    }

    /// `user.login`'s reply.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct LoggedIn {
        pub token: String,
        /// Unix ms.
        pub expires_at: i64,
        pub user: User,
    }

    /// `user.register`'s reply: the same whether the name was free (it is
    /// now this account's) or taken (nothing changed), so that registering
    /// tells no one which names exist. Log in to know.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Registered {
        pub name: String,
    }

    /// `user.create`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct CreateBody {
        pub name: String,
        pub password: String,
        /// viewer (the default), operator or admin.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub role: Option<String>,
    }

    /// `user.set_role`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
        pub Register = "user.register", App, write: Credentials => Registered
    );
    message!(
        /// `user.create`: an admin makes an account (with registration
        /// closed, the only way); `conflict` if the name is taken.
        pub Create = "user.create", Admin, write: CreateBody => User
    );
    message!(
        /// `user.login`: a session token. Not run once: its reply holds a
        /// token, which must not be kept in clear (sessions are stored
        /// hashed); a resend makes a second session, the first expires.
        pub Login = "user.login", App, read: Credentials => LoggedIn
    );
    message!(
        /// `user.logout`: ends the session of the token sent.
        pub Logout = "user.logout", Viewer, write: Empty => Empty
    );
    message!(
        /// `user.me`: who the token belongs to.
        pub Me = "user.me", Viewer, read: Empty => User
    );
    message!(
        /// `user.set_role`: gives a user a role.
        pub SetRole = "user.set_role", Admin, write: SetRoleBody => User
    );
}

/// `blacklist.*`: people refused at the gates.
pub mod blacklist {
    use super::*;

    /// A blacklisted person.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Page {
        /// Up to `limit` entries, in id card order (or name order with a prefix).
        pub entries: Vec<Entry>,
        /// Pass as `after` to get the next page; `None` on the last page.
        pub next: Option<String>,
    }

    /// `blacklist.add`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AddBody {
        pub id_card: String,
        pub name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
    }

    /// `blacklist.get` and `blacklist.remove`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct IdCard {
        pub id_card: String,
    }

    /// `blacklist.update`'s body: fields left out stay as they are;
    /// `reason: ""` clears the reason.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct UpdateBody {
        pub id_card: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
    }

    /// `blacklist.list`'s body.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
        pub Add = "blacklist.add", Operator, write: AddBody => Entry
    );
    message!(
        /// `blacklist.get`: the entry, or `not_found`.
        pub Get = "blacklist.get", Viewer, read: IdCard => Entry
    );
    message!(
        /// `blacklist.update`: the changed entry, or `not_found`.
        pub Update = "blacklist.update", Operator, write: UpdateBody => Entry
    );
    message!(
        /// `blacklist.remove`: `{}`, or `not_found`.
        pub Remove = "blacklist.remove", Operator, write: IdCard => Empty
    );
    message!(
        /// `blacklist.list`: keyset-paginated entries.
        pub List = "blacklist.list", Viewer, read: ListBody => Page
    );
}

/// `gate.*`: checks at the gates and their history.
pub mod gate {
    use super::*;
    use crate::blacklist::Entry;

    /// `gate.check`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct CheckBody {
        pub id_card: String,
        pub name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub gate: Option<String>,
    }

    /// `gate.check`'s reply.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Checked {
        pub hit: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub entry: Option<Entry>,
    }

    /// `gate.history`'s body; filters combine.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Checks {
        pub checks: Vec<GateCheck>,
    }

    message!(
        /// `gate.check`: whether the id card is listed; every check is
        /// recorded. Not run once: a repeated check is one more record of
        /// what the gate would have done anyway.
        pub Check = "gate.check", AppOrUser, read: CheckBody => Checked
    );
    message!(
        /// `gate.history`: checks, newest first.
        pub History = "gate.history", Viewer, read: HistoryBody => Checks
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
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct View {
        /// Only grows; a balancer ignores a view older than the one it holds.
        pub version: u64,
        pub nodes: Vec<NodeView>,
    }

    /// A member as the view describes it.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(
        Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema,
    )]
    #[serde(rename_all = "lowercase")]
    pub enum NodeState {
        /// Serving and taking new keys.
        #[default]
        Up,
        /// Finishing what it has; gets no new keys.
        Draining,
        /// Cannot reach its database: it answers `unavailable` to what
        /// needs it, and gets no keys while another node is up (when none
        /// is, the collector sends it as `up`: a degraded node is then as
        /// good as any).
        Degraded,
    }

    /// The load figures a node last reported (smoothed by the collector).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Leave {
        pub id: String,
    }

    /// `node.heartbeat`'s reply: the view version the collector holds,
    /// and its nodes when the heartbeat's `known_view` was another version
    /// (app servers find their peers in it).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct HeartbeatReply {
        pub view: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub nodes: Option<Vec<NodeView>>,
    }

    /// `lb.set_view`'s reply: the version the balancer holds after it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Applied {
        pub applied: u64,
        /// When the balancer holds a newer view than the one pushed (fed
        /// by another collector): whether its membership (ids, addresses,
        /// weights, states) is the pushed view's. The collector then takes
        /// that version for its own instead of minting a newer one, so
        /// that two collectors feeding at once do not outbid each other.
        /// Absent from older balancers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub same_membership: Option<bool>,
        /// The balancer's counters at the time (absent from balancers
        /// older than proxy mode).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub stats: Option<super::lb::Stats>,
    }

    message!(
        /// `node.heartbeat`: an app server to the collector.
        pub NodeHeartbeat = "node.heartbeat", Node, read: Heartbeat => HeartbeatReply
    );
    message!(
        /// `node.leave`: an app server leaving at the end of a graceful stop.
        pub NodeLeave = "node.leave", Node, read: Leave => Empty
    );
    message!(
        /// `lb.set_view`: the collector to a balancer; older versions are
        /// ignored.
        pub SetView = "lb.set_view", Cluster, read: View => Applied
    );
    message!(
        /// `cluster.status`: the collector's member table, balancers and
        /// role; the shape is the collector's (any body is accepted).
        pub Status = "cluster.status", App, read: serde_json::Value => serde_json::Value
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
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Resolved {
        pub node: String,
        pub addr: String,
        pub view: u64,
    }

    message!(
        /// `lb.resolve`: which node owns the key.
        pub Resolve = "lb.resolve", App, read: ResolveBody => Resolved
    );
    message!(
        /// `lb.view`: the view in force with each node's exact share of the
        /// hash space and the policy; the shape is the balancer's (any body
        /// is accepted).
        pub GetView = "lb.view", App, read: serde_json::Value => serde_json::Value
    );

    /// Largest page of pins `lb.pins` returns.
    pub const PINS_MAX: u32 = 1000;

    /// `lb.pins`'s body: a page of the stored routes of proxy mode.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct PinPage {
        pub pins: Vec<Pin>,
        /// Pass as `after` for the next page; absent on the last.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub next: Option<String>,
    }

    /// `lb.unpin`'s body: one key, or every pin to one node.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct UnpinBody {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub node: Option<String>,
    }

    /// `lb.unpin`'s reply.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Unpinned {
        pub dropped: u64,
    }

    /// Proxy mode's counters since start, as `lb.stats` reports them.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
        pub Pins = "lb.pins", Cluster, read: PinsBody => PinPage
    );
    message!(
        /// `lb.unpin`: drops stored routes; the next connection with the key
        /// is routed by the ring again (cluster secret).
        pub Unpin = "lb.unpin", Cluster, read: UnpinBody => Unpinned
    );
    message!(
        /// `lb.stats`: the balancer's counters, proxy mode's included.
        pub GetStats = "lb.stats", App, read: Empty => Stats
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
    /// Largest result kept, in bytes.
    pub const RESULT_MAX: usize = 256 * 1024;
    /// Largest error of a failed attempt kept, in bytes (a `TEXT` column).
    pub const ERROR_MAX: usize = 65_535;
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
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct NewTask {
        /// Any JSON value, at most [`PAYLOAD_MAX`] bytes as text.
        #[schemars(with = "serde_json::Value")]
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
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Submitted {
        pub job: u64,
        /// Tasks added (a key the job already held is not).
        pub accepted: u64,
    }

    /// `task.claim`'s body.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ClaimBody {
        /// 1 to [`CLAIM_MAX`].
        pub n: u32,
        pub lease_ms: u64,
        /// Wait up to this long when nothing is ready (default 0). A claim
        /// that carries outcomes does not wait: it answers at once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub wait_ms: Option<u64>,
        /// The previous batch's outcomes, kept as `task.finish` keeps them
        /// and in the same transaction as the claim (up to
        /// [`CLAIM_MAX`]); the reply's `finished` says which were kept.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub finish: Vec<Outcome>,
    }

    /// A claimed task.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Claimed {
        pub task: u64,
        pub job: u64,
        #[schemars(with = "serde_json::Value")]
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
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct ClaimReply {
        pub tasks: Vec<Claimed>,
        /// What became of the outcomes the claim carried (absent when it
        /// carried none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub finished: Option<Finished>,
    }

    /// A lease a worker holds.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Lease {
        pub task: u64,
        pub fence: u64,
    }

    /// `task.heartbeat`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct HeartbeatBody {
        pub leases: Vec<Lease>,
        pub lease_ms: u64,
    }

    /// `task.heartbeat`'s reply: tasks whose lease was extended, and those
    /// no longer this worker's.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Extended {
        pub extended: Vec<u64>,
        pub lost: Vec<u64>,
    }

    /// `task.complete`'s body.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct CompleteBody {
        pub task: u64,
        pub fence: u64,
        #[schemars(with = "serde_json::Value")]
        pub result: Box<serde_json::value::RawValue>,
    }

    /// One task's outcome in `task.finish`: its `result` (done) or its
    /// `error` (a failed attempt), exactly one of them, under its fence.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Outcome {
        pub task: u64,
        pub fence: u64,
        /// The result, when the task is done (`null` is a result: the
        /// field's presence says done).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        #[schemars(with = "Option<serde_json::Value>")]
        pub result: Option<Box<serde_json::value::RawValue>>,
        /// The error, when the attempt failed (retried until the last).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
    }

    /// A field that is there, even as `null`, is `Some` (serde reads a
    /// `null` as `None` otherwise); one that is not there is `None`.
    fn present<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Box<serde_json::value::RawValue>>, D::Error> {
        Box::<serde_json::value::RawValue>::deserialize(d).map(Some)
    }

    /// `task.finish`'s body: 1 to [`CLAIM_MAX`] outcomes, each task once.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct FinishBody {
        pub outcomes: Vec<Outcome>,
    }

    /// A task of `task.finish` whose outcome was not kept.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Refused {
        pub task: u64,
        /// Why: its fence is not the current lease's (the lease expired
        /// and the task went to another worker), or it holds no lease.
        pub message: String,
    }

    /// `task.finish`'s reply: the outcomes kept, and those refused.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Finished {
        pub kept: u32,
        pub refused: Vec<Refused>,
    }

    /// `task.fail`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct FailBody {
        pub task: u64,
        pub fence: u64,
        pub error: String,
    }

    /// A job, by id.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct JobRef {
        pub job: u64,
    }

    /// `job.status`'s reply.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct TaskResult {
        pub task: u64,
        pub seq: u64,
        pub state: String,
        pub attempts: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<serde_json::Value>")]
        pub result: Option<Box<serde_json::value::RawValue>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
    }

    /// `job.results`' reply.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Results {
        pub results: Vec<TaskResult>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub next: Option<u64>,
    }

    message!(
        /// `task.submit`: a batch of tasks, into a new job or one of yours.
        pub Submit = "task.submit", AppOrUser, write: SubmitBody => Submitted
    );
    message!(
        /// `task.claim`: up to `n` ready tasks, leased.
        pub Claim = "task.claim", AppOrUser, write: ClaimBody => ClaimReply
    );
    message!(
        /// `task.heartbeat`: extends the leases still held.
        pub Heartbeat = "task.heartbeat", AppOrUser, read: HeartbeatBody => Extended
    );
    message!(
        /// `task.complete`: the result, under the lease's fence.
        pub Complete = "task.complete", AppOrUser, write: CompleteBody => Empty
    );
    message!(
        /// `task.fail`: a failed attempt, retried with backoff until the last.
        pub Fail = "task.fail", AppOrUser, write: FailBody => Empty
    );
    message!(
        /// `task.finish`: many tasks' outcomes (results or failed attempts)
        /// in one transaction, each under its own fence; a task whose
        /// lease was lost is refused alone, the others kept.
        pub Finish = "task.finish", AppOrUser, write: FinishBody => Finished
    );
    message!(
        /// `job.status`: the job's counts.
        pub Status = "job.status", AppOrUser, read: JobRef => JobStatus
    );
    message!(
        /// `job.results`: a page of task outcomes in submit order.
        pub GetResults = "job.results", AppOrUser, read: ResultsBody => Results
    );
    message!(
        /// `job.cancel`: ready and waiting tasks are dropped, leases revoked.
        pub Cancel = "job.cancel", AppOrUser, write: JobRef => Empty
    );

    /// A `progress` event of `job.watch`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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

    message!(
        /// `job.watch`: `progress` events whenever the counts change (at most
        /// every 100 ms), then the final [`JobStatus`] when the job ends.
        pub Watch = "job.watch", AppOrUser, stream: JobRef => JobStatus, event "progress": Progress
    );
}

/// `audit.list`: the audit trail of role changes, users made and blacklist
/// changes.
pub mod audit {
    use super::*;

    /// `audit.list`'s body.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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
        #[schemars(with = "Option<serde_json::Value>")]
        pub detail: Option<Box<serde_json::value::RawValue>>,
    }

    /// `audit.list`'s reply: newest first.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Page {
        pub entries: Vec<Entry>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub next: Option<u64>,
    }

    message!(
        /// `audit.list`: a page of the audit trail (admins).
        pub List = "audit.list", Admin, read: ListBody => Page
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
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct SendBody {
        /// The recipient's user name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub to: Option<String>,
        /// A room the sender is a member of.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub room: Option<String>,
        /// Any JSON value, at most [`BODY_MAX`] bytes as text.
        #[schemars(with = "serde_json::Value")]
        pub body: Box<serde_json::value::RawValue>,
    }

    /// `msg.send`'s reply.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct SubscribeBody {
        /// Messages sent and not yet acknowledged at most, 1 to
        /// [`CREDIT_MAX`] (default [`CREDIT_DEFAULT`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub credit: Option<u32>,
    }

    /// A `message` event of `msg.subscribe`: one message of the inbox, in
    /// `seq` order.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Message {
        pub id: u64,
        /// Its number in this inbox: 1, 2, 3… with no gaps.
        pub seq: u64,
        /// The sender's user name.
        pub from: String,
        /// The room it was sent to, if it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub room: Option<String>,
        #[schemars(with = "serde_json::Value")]
        pub body: Box<serde_json::value::RawValue>,
        /// When it was stored, Unix ms (the storing app server's clock).
        pub sent_at: u64,
    }

    /// `msg.ack`'s body: every message up to `upto` is handled.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AckBody {
        pub upto: u64,
    }

    /// `msg.history`'s body.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Entry {
        pub id: u64,
        pub from: String,
        /// The recipient of a direct message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub to: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub room: Option<String>,
        #[schemars(with = "serde_json::Value")]
        pub body: Box<serde_json::value::RawValue>,
        pub sent_at: u64,
        /// Its number in your inbox, for a message you received.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub seq: Option<u64>,
    }

    /// `msg.history`'s reply: newest first.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct History {
        pub messages: Vec<Entry>,
        /// Pass as `before` for the next (older) page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub next: Option<u64>,
    }

    /// `msg.join`'s and `msg.leave`'s body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct RoomBody {
        /// 1 to [`ROOM_MAX`] letters, digits, `.`, `_` or `-`.
        pub room: String,
    }

    /// `msg.join`'s reply.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct Joined {
        pub room: String,
        /// Members now, you included.
        pub members: u64,
    }

    /// `peer.notify`'s body: user `user` has message `seq` waiting; the
    /// message itself rides along (the `message` event's body), so the
    /// node holding the subscription can push it without reading it back.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct NotifyBody {
        pub user: u64,
        pub seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<serde_json::Value>")]
        pub message: Option<Box<serde_json::value::RawValue>>,
    }

    message!(
        /// `msg.send`: a message to a user's inbox, or to every member of a room.
        pub Send = "msg.send", Viewer, write: SendBody => Sent
    );
    message!(
        /// `msg.ack`: the messages up to `upto` are handled; frees credit.
        pub Ack = "msg.ack", Viewer, read: AckBody => Empty
    );
    message!(
        /// `msg.history`: messages you sent and received, newest first.
        pub GetHistory = "msg.history", Viewer, read: HistoryBody => History
    );
    message!(
        /// `msg.join`: joins a room, making it if it does not exist.
        pub Join = "msg.join", Viewer, write: RoomBody => Joined
    );
    message!(
        /// `msg.leave`: leaves a room.
        pub Leave = "msg.leave", Viewer, write: RoomBody => Empty
    );
    message!(
        /// `peer.notify`: an app server tells the one holding a user's
        /// subscription that a message is waiting.
        pub Notify = "peer.notify", Peer, read: NotifyBody => Empty
    );

    message!(
        /// `msg.subscribe`: the inbox's messages not yet acknowledged, in
        /// order, then new ones as they come, at most `credit`
        /// unacknowledged at a time. One per connection; a newer
        /// subscription of the same user (on any node) ends this one with
        /// `conflict`. Its final reply is `{"cancelled":true}` after a
        /// `sys.cancel`, or an error.
        pub Subscribe = "msg.subscribe", Viewer, stream: SubscribeBody => serde_json::Value, event "message": Message
    );
}

/// Who may send a message type: the one rule set every dsf server checks
/// (the pipeline's auth layer), declared with the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Auth {
    /// A valid signature with an app key is enough (an app key may be
    /// scoped to fewer types). Node keys and the peer secret sign only
    /// their own types.
    App,
    /// An app key; a session token, when one is sent, must be valid, and
    /// the handler then knows the user (a job is then the user's too).
    AppOrUser,
    /// A session token of a user with at least the viewer role.
    Viewer,
    /// ... at least operator.
    Operator,
    /// ... admin.
    Admin,
    /// The cluster secret (app id `cluster`).
    Cluster,
    /// A node speaking for itself: its own key (app `node:<id>`, where
    /// `<id>` is the body's `id`), or the cluster secret on a server that
    /// takes no node keys.
    Node,
    /// Another app server, under the peer secret (app id `peer`).
    Peer,
}

// === impl Auth ===

impl Auth {
    /// The least role a session must have, for the types that need one.
    pub const fn role(self) -> Option<user::Role> {
        match self {
            Auth::Viewer => Some(user::Role::Viewer),
            Auth::Operator => Some(user::Role::Operator),
            Auth::Admin => Some(user::Role::Admin),
            _ => None,
        }
    }

    /// Whether a session token is read (needed or optional).
    pub const fn reads_session(self) -> bool {
        matches!(
            self,
            Auth::AppOrUser | Auth::Viewer | Auth::Operator | Auth::Admin
        )
    }

    /// How the book's tables name it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Auth::App => "app",
            Auth::AppOrUser => "app (user optional)",
            Auth::Viewer => "viewer",
            Auth::Operator => "operator",
            Auth::Admin => "admin",
            Auth::Cluster => "cluster",
            Auth::Node => "node",
            Auth::Peer => "peer",
        }
    }
}

impl std::fmt::Display for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request of a type does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Changes nothing that a second run would change again: the SDK sends
    /// it again freely, freshly signed.
    Read,
    /// Runs once on any node: its reply is stored with its write, and the
    /// same signed request sent again gets the stored reply. The SDK sends
    /// it again only with its first nonce.
    Write,
    /// Answered by events of this name, then one final reply.
    Stream {
        /// The events' name (`"progress"`, `"message"`).
        event: &'static str,
    },
}

/// One message type of a catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Type {
    /// `group.verb`, e.g. `blacklist.add`.
    pub name: &'static str,
    /// Who may send it.
    pub auth: Auth,
    /// Read, write (runs once) or stream.
    pub kind: Kind,
}

// === impl Type ===

impl Type {
    /// Whether it runs once (a [`Kind::Write`]).
    pub const fn writes(&self) -> bool {
        matches!(self.kind, Kind::Write)
    }

    /// Whether it is answered by events, then a final reply.
    pub const fn streams(&self) -> bool {
        matches!(self.kind, Kind::Stream { .. })
    }

    /// A stream's event name.
    pub const fn event(&self) -> Option<&'static str> {
        match self.kind {
            Kind::Stream { event } => Some(event),
            _ => None,
        }
    }

    /// `read`, `write` or `stream`.
    pub const fn kind_str(&self) -> &'static str {
        match self.kind {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Stream { .. } => "stream",
        }
    }
}

/// dsf's own message types, of every part. A server serves those of the
/// services it runs ([`Catalogue`]); this list is for the SDK, which may be
/// handed a type by name alone ([`get`], [`writes`]).
pub const CATALOGUE: &[Type] = &[
    <sys::Ping as Message>::TYPE,
    <sys::Cancel as Message>::TYPE,
    <sys::Wake as Message>::TYPE,
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
    <lb::GetView as Message>::TYPE,
    <lb::Pins as Message>::TYPE,
    <lb::Unpin as Message>::TYPE,
    <lb::GetStats as Message>::TYPE,
    <task::Submit as Message>::TYPE,
    <task::Claim as Message>::TYPE,
    <task::Heartbeat as Message>::TYPE,
    <task::Complete as Message>::TYPE,
    <task::Fail as Message>::TYPE,
    <task::Finish as Message>::TYPE,
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
    <cluster::Status as Message>::TYPE,
    <cluster::SetView as Message>::TYPE,
];

/// dsf's own type named `name` ([`CATALOGUE`]).
pub fn get(name: &str) -> Option<&'static Type> {
    CATALOGUE.iter().find(|t| t.name == name)
}

/// Whether `name`, one of dsf's own types, runs once; a type not among
/// them is treated as one (never sent twice on a guess).
pub fn writes(name: &str) -> bool {
    get(name).is_none_or(|t| t.writes())
}

/// A server's catalogue: the types of the services it runs, each with the
/// service that declared it. Assembled at start; a name declared twice is
/// refused with both owners named.
///
/// ```
/// use dsf_proto::{Catalogue, Message};
/// let mut c = Catalogue::new();
/// c.add("sys", dsf_proto::sys::Ping::TYPE).unwrap();
/// let e = c.add("mine", dsf_proto::sys::Ping::TYPE).unwrap_err();
/// assert_eq!(e.to_string(), "message type \"sys.ping\" is declared by service \"sys\" and by service \"mine\": each type belongs to one service (rename one of them)");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    types: BTreeMap<&'static str, (Type, String)>,
}

/// Two services declared the same message type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The type.
    pub name: &'static str,
    /// The service that declared it first.
    pub first: String,
    /// The one that declared it again.
    pub second: String,
}

impl std::fmt::Display for Duplicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "message type {:?} is declared by service {:?} and by service {:?}: each type belongs to one service (rename one of them)",
            self.name, self.first, self.second
        )
    }
}

impl std::error::Error for Duplicate {}

// === impl Catalogue ===

impl Catalogue {
    /// An empty catalogue.
    pub fn new() -> Catalogue {
        Catalogue::default()
    }

    /// Adds `ty`, declared by service `owner`.
    pub fn add(&mut self, owner: &str, ty: Type) -> Result<(), Duplicate> {
        if let Some((_, first)) = self.types.get(ty.name) {
            return Err(Duplicate {
                name: ty.name,
                first: first.clone(),
                second: owner.to_string(),
            });
        }
        self.types.insert(ty.name, (ty, owner.to_string()));
        Ok(())
    }

    /// The type named `name`.
    pub fn get(&self, name: &str) -> Option<&Type> {
        self.types.get(name).map(|(t, _)| t)
    }

    /// The service that declared `name`.
    pub fn owner(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(|(_, o)| o.as_str())
    }

    /// Every type, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&Type, &str)> + '_ {
        self.types.values().map(|(t, o)| (t, o.as_str()))
    }

    /// How many types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_result_is_a_result_and_a_missing_one_is_not() {
        let done: task::Outcome =
            serde_json::from_str(r#"{"task":1,"fence":2,"result":null}"#).unwrap();
        assert_eq!(done.result.as_ref().map(|r| r.get()), Some("null"));
        let failed: task::Outcome =
            serde_json::from_str(r#"{"task":1,"fence":2,"error":"x"}"#).unwrap();
        assert!(failed.result.is_none());
        // What the SDK sends for a null result reads back the same.
        let sent = serde_json::to_string(&done).unwrap();
        let back: task::Outcome = serde_json::from_str(&sent).unwrap();
        assert_eq!(
            back.result.map(|r| r.get().to_string()),
            Some("null".into())
        );
    }

    #[test]
    fn every_name_is_listed_once() {
        let mut c = Catalogue::new();
        for t in CATALOGUE {
            c.add("dsf", *t).unwrap();
        }
        assert_eq!(c.len(), CATALOGUE.len());
    }

    #[test]
    fn a_name_declared_twice_names_both_services() {
        let mut c = Catalogue::new();
        c.add("orders", <sys::Ping as Message>::TYPE).unwrap();
        let e = c.add("billing", <sys::Ping as Message>::TYPE).unwrap_err();
        assert_eq!((e.first.as_str(), e.second.as_str()), ("orders", "billing"));
        assert!(e.to_string().contains("\"orders\""), "{e}");
        assert!(e.to_string().contains("\"billing\""), "{e}");
        assert_eq!(c.owner("sys.ping"), Some("orders"));
    }

    #[test]
    fn the_macro_declares_each_kind() {
        crate::message!(
            /// A read.
            R = "t.r", App, read: Empty => Empty
        );
        crate::message!(W = "t.w", Viewer, write: Empty => Empty);
        crate::message!(S = "t.s", AppOrUser, stream: Empty => Empty, event "tick": Empty);
        assert_eq!(R::TYPE.kind, Kind::Read);
        assert!(W::TYPE.writes() && !W::TYPE.streams());
        assert_eq!(W::TYPE.auth.role(), Some(user::Role::Viewer));
        assert_eq!(S::TYPE.event(), Some("tick"));
        assert!(S::TYPE.auth.reads_session() && S::TYPE.auth.role().is_none());
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
        listed::<sys::Wake>();
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
        listed::<lb::GetView>();
        listed::<lb::Pins>();
        listed::<lb::Unpin>();
        listed::<lb::GetStats>();
        listed::<cluster::Status>();
        listed::<task::Submit>();
        listed::<task::Claim>();
        listed::<task::Heartbeat>();
        listed::<task::Complete>();
        listed::<task::Fail>();
        listed::<task::Finish>();
        listed::<task::Status>();
        listed::<task::GetResults>();
        listed::<task::Cancel>();
        listed::<task::Watch>();
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
