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
//! | [`tasks`] | `task.submit`, `.claim`, `.heartbeat`, `.complete`, `.fail`; `job.status`, `.results`, `.cancel` |
//! | [`audit`] | `audit.list` |
//! | [`messages`] | `msg.send`, `.subscribe`, `.ack`, `.history`, `.join`, `.leave` |

use crate::controller::Route;

pub mod audit;
pub mod blacklist;
pub mod gate;
pub mod messages;
pub mod sys;
pub mod tasks;
pub mod user;

/// Every route of every group.
pub fn routes() -> impl Iterator<Item = &'static Route> {
    sys::ROUTES
        .iter()
        .chain(user::ROUTES)
        .chain(blacklist::ROUTES)
        .chain(gate::ROUTES)
        .chain(tasks::ROUTES)
        .chain(messages::ROUTES)
        .chain(audit::ROUTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Auth;
    use dsf_sql::Role;

    #[test]
    fn every_app_server_type_of_the_catalogue_is_routed_with_its_auth() {
        let want = [
            ("sys.ping", Auth::App),
            ("user.register", Auth::App),
            ("user.login", Auth::App),
            ("user.logout", Auth::Role(Role::Viewer)),
            ("user.me", Auth::Role(Role::Viewer)),
            ("user.set_role", Auth::Role(Role::Admin)),
            ("blacklist.add", Auth::Role(Role::Operator)),
            ("blacklist.get", Auth::Role(Role::Viewer)),
            ("blacklist.update", Auth::Role(Role::Operator)),
            ("blacklist.remove", Auth::Role(Role::Operator)),
            ("blacklist.list", Auth::Role(Role::Viewer)),
            ("gate.check", Auth::AppMaybeUser),
            ("gate.history", Auth::Role(Role::Viewer)),
            ("task.submit", Auth::AppMaybeUser),
            ("task.claim", Auth::AppMaybeUser),
            ("task.heartbeat", Auth::AppMaybeUser),
            ("task.complete", Auth::AppMaybeUser),
            ("task.fail", Auth::AppMaybeUser),
            ("job.status", Auth::AppMaybeUser),
            ("job.results", Auth::AppMaybeUser),
            ("job.cancel", Auth::AppMaybeUser),
            ("msg.send", Auth::Role(Role::Viewer)),
            ("msg.subscribe", Auth::Role(Role::Viewer)),
            ("msg.ack", Auth::Role(Role::Viewer)),
            ("msg.history", Auth::Role(Role::Viewer)),
            ("msg.join", Auth::Role(Role::Viewer)),
            ("msg.leave", Auth::Role(Role::Viewer)),
            ("audit.list", Auth::Role(Role::Admin)),
            ("user.create", Auth::Role(Role::Admin)),
        ];
        let got: Vec<(&str, Auth)> = routes().map(|r| (r.kind, r.auth)).collect();
        assert_eq!(got.len(), want.len(), "{got:?}");
        for w in want {
            assert!(got.contains(&w), "{w:?} missing from {got:?}");
        }
    }
}
