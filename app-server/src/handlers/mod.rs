//! The handlers, one file per group. Each file holds its message types'
//! body types, their validation and the handlers, and lists its routes in a
//! `ROUTES` table that the [`crate::controller`] merges.
//!
//! | group | types |
//! |---|---|
//! | [`sys`] | `sys.ping` |
//! | [`user`] | `user.register`, `user.login`, `user.logout`, `user.me`, `user.set_role` |
//! | [`blacklist`] | `blacklist.add`, `.get`, `.update`, `.remove`, `.list` |
//! | [`gate`] | `gate.check`, `gate.history` |

use crate::controller::Route;

pub mod blacklist;
pub mod gate;
pub mod sys;
pub mod user;

/// Every route of every group.
pub fn routes() -> impl Iterator<Item = &'static Route> {
    sys::ROUTES
        .iter()
        .chain(user::ROUTES)
        .chain(blacklist::ROUTES)
        .chain(gate::ROUTES)
}
