//! The blacklist service: people refused at the gates, and the gates'
//! checks.
//!
//! | type | auth | file |
//! |---|---|---|
//! | `blacklist.add`, `.update`, `.remove` | operator | [`entries`] |
//! | `blacklist.get`, `.list` | viewer | [`entries`] |
//! | `gate.check` | app (user optional) | [`gate`] |
//! | `gate.history` | viewer | [`gate`] |
//!
//! Changes are recorded in the accounts' audit trail, so it needs the
//! accounts service.

pub mod entries;
pub mod gate;

use dsf_proto::{blacklist, gate as msg};

use crate::service::Service;

/// The blacklist service (namespace `blacklist`).
pub fn service() -> Service {
    Service::new("blacklist")
        .requires("accounts")
        .migrations(dsf_sql::migrate::BLACKLIST)
        .unary::<blacklist::Add>(entries::add)
        .unary::<blacklist::Get>(entries::get)
        .unary::<blacklist::Update>(entries::update)
        .unary::<blacklist::Remove>(entries::remove)
        .unary::<blacklist::List>(entries::list)
        .unary::<msg::Check>(gate::check)
        .unary::<msg::History>(gate::history)
}
