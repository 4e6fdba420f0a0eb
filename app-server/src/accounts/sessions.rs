//! A short-lived in-memory cache of token checks, so a client sending many
//! requests does not cost one session lookup each.
//!
//! An entry lives at most the configured time (never more than 2 s): a
//! logout deletes the session in MySQL and evicts the entry here at once,
//! and every other app server stops accepting the token within 2 s, when its
//! entry ages out. Only successful checks are cached, so a session created
//! on another server is accepted here immediately.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dsf_common::pipeline::Session;
use dsf_sql::now_ms;

/// Entries kept at most; beyond it the expired ones go, then everything
/// (a flood of distinct tokens must not grow memory without bound).
pub const MAX_ENTRIES: usize = 65_536;

/// Token → session, each entry valid for `ttl` after it was read from MySQL.
#[derive(Debug)]
pub struct SessionCache {
    ttl: Duration,
    map: Mutex<HashMap<String, (Session, Instant)>>,
}

// === impl SessionCache ===

impl SessionCache {
    /// A cache whose entries live `ttl` (zero turns caching off).
    pub fn new(ttl: Duration) -> SessionCache {
        SessionCache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Session, Instant)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached session of `token`, if checked less than `ttl` ago and
    /// not expired since.
    pub fn get(&self, token: &str) -> Option<Session> {
        if self.ttl.is_zero() {
            return None;
        }
        let mut map = self.lock();
        match map.get(token) {
            Some((s, at)) if at.elapsed() < self.ttl && s.expires_at > now_ms() => Some(s.clone()),
            Some(_) => {
                map.remove(token);
                None
            }
            None => None,
        }
    }

    /// Remembers a session just read from (or written to) MySQL.
    pub fn put(&self, token: &str, session: Session) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(token.to_string(), (session, Instant::now()));
    }

    /// Forgets `token` (its session was ended here).
    pub fn evict(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Forgets every session of `user_id` (its role changed).
    pub fn evict_user(&self, user_id: u64) {
        self.lock().retain(|_, (s, _)| s.user.id != user_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsf_proto::user::{Role, User};

    fn session(id: u64) -> Session {
        Session {
            user: User {
                id,
                name: format!("u{id}"),
                role: Role::Viewer,
            },
            app: Some("cli".into()),
            expires_at: now_ms() + 60_000,
        }
    }

    #[test]
    fn entries_age_out_and_evict() {
        let c = SessionCache::new(Duration::from_millis(50));
        c.put("a", session(1));
        c.put("b", session(2));
        assert!(c.get("a").is_some());
        c.evict("a");
        assert!(c.get("a").is_none());
        c.evict_user(2);
        assert!(c.get("b").is_none());
        c.put("c", session(3));
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.get("c").is_some() {
            assert!(Instant::now() < deadline, "entry never aged out");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let c = SessionCache::new(Duration::ZERO);
        c.put("a", session(1));
        assert!(c.get("a").is_none());
    }
}
