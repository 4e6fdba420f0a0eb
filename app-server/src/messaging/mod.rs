//! Messaging: a user connected to one app server sends to a user connected
//! to another, delivered once and in order, also when the recipient is
//! offline.
//!
//! | type | auth | where |
//! |---|---|---|
//! | `msg.send`, `.ack`, `.history`, `.join`, `.leave` | viewer | [`handlers`] |
//! | `msg.subscribe` | viewer | [`handlers`], [`mailroom`] |
//! | `peer.notify` | peer | [`handlers`] |
//!
//! `msg.send` stores the message in the recipient's inbox, then tells the
//! node holding the recipient's subscription: this node's [`mailroom`], or
//! another's with `peer.notify` over the peer links. The mailroom also
//! polls its subscribers' inboxes slowly, so a lost notification delays a
//! message, never loses it.

pub mod handlers;
pub mod mailroom;

use std::collections::HashMap;
use std::sync::Mutex;

use dsf_common::pipeline::Route;
use dsf_common::Result;
use dsf_proto::msg;
use dsf_sql::Db;

use crate::service::Service;
use mailroom::Mailroom;

/// What messaging's handlers share besides the mailroom.
#[derive(Debug, Default)]
pub struct Messaging {
    /// User ids by name, for `msg.send` (users are never deleted, so an
    /// entry stays right); cleared when full.
    user_ids: Mutex<HashMap<String, u64>>,
}

// === impl Messaging ===

impl Messaging {
    /// The id of the user named `name` (`not_found` if none), cached.
    pub fn user_id(&self, db: &Db, name: &str) -> Result<u64> {
        const MAX: usize = 100_000;
        let cached = self
            .user_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied();
        if let Some(id) = cached {
            return Ok(id);
        }
        let id = db.messages().user_id(name)?;
        let mut ids = self.user_ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.len() >= MAX {
            ids.clear();
        }
        ids.insert(name.to_string(), id);
        Ok(id)
    }
}

/// The messaging service (namespace `messaging`).
pub fn service() -> Service {
    Service::new("messaging")
        .requires("accounts")
        .migrations(dsf_sql::migrate::MESSAGING)
        .state(|node| {
            // A group records its direct sends before it numbers them; a
            // resend's reply gets its number when read
            // (`dsf_sql::messages::sent_reply`).
            let kind = <msg::Send as dsf_proto::Message>::TYPE.name;
            node.db()
                .writes()
                .complete_replies(kind, dsf_sql::messages::sent_reply);
            Ok(Messaging::default())
        })
        .state(|node| Ok(Mailroom::start(node.db().clone(), node.settings().msg_poll)))
        // A client's sends in flight run in its order and commit together.
        .route(Route::unary::<msg::Send>(handlers::send).batched())
        .stream::<msg::Subscribe>(handlers::subscribe)
        .unary::<msg::Ack>(handlers::ack)
        .unary::<msg::GetHistory>(handlers::history)
        .unary::<msg::Join>(handlers::join)
        .unary::<msg::Leave>(handlers::leave)
        .route(Route::unary::<msg::Notify>(handlers::notify).inline())
        .on_start(|node| {
            let mail = node.state::<Mailroom>();
            mail.set_node(node.id());
            // Subscriptions this node held before a restart are gone with it.
            match node.db().messages().clear_node(node.id()) {
                Ok(0) => {}
                Ok(n) => log::info!(
                    "{}: cleared {n} subscriptions left from before a restart",
                    node.id()
                ),
                Err(e) => log::warn!(
                    "{}: cannot clear old subscriptions' presence: {e} (they go stale)",
                    node.id()
                ),
            }
            Ok(())
        })
        // Subscriptions end with `unavailable`: their clients subscribe
        // again elsewhere now, not when the connection drops.
        .on_drain(|node| node.state::<Mailroom>().close())
        .on_close(|node, conn| node.state::<Mailroom>().on_close(conn))
}
