//! The rate-limit layer: limits declared per route ([`super::Route::limit`]),
//! each a token bucket per key (governor's GCRA, one timestamp per key).
//!
//! A [`Limit`] has a name, what it counts by ([`Per`]: the caller's address,
//! its app, its user, or a field of the body) and a default [`Rate`]; the
//! server may set another rate for a name (the app server's
//! `--auth-rate-addr` is the limit `auth-addr`). Routes that name the same
//! limit share its buckets: logins and registrations from one address draw
//! on one bucket. Every request counts, good or bad; past the bucket it is
//! refused `overloaded`, saying when to retry, and never runs. The buckets
//! are one node's: behind N servers a key gets at most N times its rate.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use super::{Call, Layer, Next, Outcome};
use crate::error::{Error, Result};

/// Keys held before the buckets that are full again are dropped.
const SWEEP_AT: usize = 100_000;

/// A bucket's size and refill: `N/DURATION` (N requests at once, and N more
/// over each DURATION), or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Rate {
    /// No limit.
    Off,
    /// `burst` at once, and `burst` more over each `period`.
    Every {
        /// Requests at once.
        burst: NonZeroU32,
        /// Over which `burst` more are allowed.
        period: Duration,
    },
}

// === impl Rate ===

impl Rate {
    fn quota(self) -> Option<Quota> {
        match self {
            Rate::Off => None,
            Rate::Every { burst, period } => {
                Quota::with_period(period / burst.get()).map(|q| q.allow_burst(burst))
            }
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Rate, String> {
        if s == "off" {
            return Ok(Rate::Off);
        }
        let bad = || format!("{s:?}: write N/DURATION, like 10/1m (N attempts a minute), or off");
        let (n, per) = s.split_once('/').ok_or_else(bad)?;
        let burst = n.trim().parse::<NonZeroU32>().map_err(|_| bad())?;
        let period = per
            .trim()
            .parse::<crate::config::HumanDuration>()
            .map_err(|_| bad())?
            .get();
        if period / burst.get() == Duration::ZERO {
            return Err(format!(
                "{s:?}: the period is too short for {burst} attempts"
            ));
        }
        Ok(Rate::Every { burst, period })
    }
}

impl TryFrom<String> for Rate {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Rate, String> {
        s.parse()
    }
}

impl From<Rate> for String {
    fn from(r: Rate) -> String {
        r.to_string()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Off => f.write_str("off"),
            Rate::Every { burst, period } => {
                let period = crate::config::HumanDuration(*period);
                write!(f, "{burst}/{period}")
            }
        }
    }
}

/// What a limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    /// The caller's IP address.
    Peer,
    /// The app id that signed.
    App,
    /// The logged-in user (the app, for a request without a session).
    User,
    /// A string field of the body, case folded (a user name at login). A
    /// body without it is not counted here; its handler refuses it.
    Field(&'static str),
}

/// A limit a route declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Routes naming the same limit share its buckets; the server may set
    /// its rate by this name.
    pub name: &'static str,
    /// Whose requests share a bucket.
    pub per: Per,
    /// Its rate when the server sets none.
    pub default: Rate,
    /// How refusals name what was counted (`login`: "too many login
    /// attempts from 10.0.0.1"); the message type when empty.
    pub what: &'static str,
}

// === impl Limit ===

impl Limit {
    /// A limit named `name`, counting by `per`, at `default` unless the
    /// server says otherwise.
    pub const fn new(name: &'static str, per: Per, default: Rate) -> Limit {
        Limit {
            name,
            per,
            default,
            what: "",
        }
    }

    /// Names what it counts in refusals.
    pub const fn counting(mut self, what: &'static str) -> Limit {
        self.what = what;
        self
    }
}

/// The buckets of one limit.
struct Buckets {
    limiter: DefaultKeyedRateLimiter<String>,
}

/// The rate-limit layer: every limit of every route, by name.
pub struct RateLayer {
    buckets: HashMap<&'static str, Arc<Buckets>>,
    clock: DefaultClock,
}

// === impl RateLayer ===

impl RateLayer {
    /// Buckets for `limits`, each at `rate(name)` or its default.
    pub(super) fn new<'a>(
        limits: impl Iterator<Item = &'a Limit>,
        rate: &dyn Fn(&str) -> Option<Rate>,
    ) -> RateLayer {
        let mut buckets = HashMap::new();
        for l in limits {
            if buckets.contains_key(l.name) {
                continue;
            }
            let r = rate(l.name).unwrap_or(l.default);
            if let Some(q) = r.quota() {
                buckets.insert(
                    l.name,
                    Arc::new(Buckets {
                        limiter: RateLimiter::keyed(q),
                    }),
                );
            }
        }
        RateLayer {
            buckets,
            clock: DefaultClock::default(),
        }
    }

    /// Whether any limit is on (else the layer is left out).
    pub(super) fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Counts `call` against each of its route's limits.
    pub fn check<S: Send + Sync + 'static>(&self, call: &Call<S>) -> Result<()> {
        for limit in &call.route().limits {
            let Some(b) = self.buckets.get(limit.name) else {
                continue;
            };
            let (key, whose) = match limit.per {
                Per::Peer => {
                    let ip = call.peer().ip().to_string();
                    (ip.clone(), format!("from {ip}"))
                }
                Per::App => (call.app().to_string(), format!("of app {:?}", call.app())),
                Per::User => match call.session() {
                    Some(s) => (format!("user:{}", s.user.id), "of this user".into()),
                    None => (
                        format!("app:{}", call.app()),
                        format!("of app {:?}", call.app()),
                    ),
                },
                Per::Field(field) => {
                    let Some(v) = field_of(call.request().body.get(), field) else {
                        continue;
                    };
                    (v.to_lowercase(), format!("for this {field}"))
                }
            };
            if b.limiter.len() >= SWEEP_AT {
                b.limiter.retain_recent();
                b.limiter.shrink_to_fit();
            }
            if let Err(until) = b.limiter.check_key(&key) {
                let wait = until.wait_time_from(self.clock.now());
                let what = if limit.what.is_empty() {
                    format!("{} requests", call.kind())
                } else {
                    format!("{} attempts", limit.what)
                };
                return Err(Error::Overloaded(format!(
                    "too many {what} {whose}: retry in {}",
                    seconds(wait)
                )));
            }
        }
        Ok(())
    }
}

impl<S: Send + Sync + 'static> Layer<S> for RateLayer {
    fn call(&self, call: &mut Call<S>, next: Next<'_, S>) -> Outcome {
        if !call.woken && !call.route().limits.is_empty() {
            if let Err(e) = self.check(call) {
                return Outcome::Reply(Err(e));
            }
        }
        next.run(call)
    }
}

/// The string field `field` of a JSON object body.
fn field_of(body: &str, field: &str) -> Option<String> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(body).ok()?;
    map.get(field)?.as_str().map(str::to_string)
}

/// A wait as a person reads it, rounded up to the second.
fn seconds(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    format!("{}s", s.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_and_print() {
        for s in ["10/1m", "1/1s", "off", "600/1h"] {
            let r: Rate = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        for bad in ["", "10", "0/1m", "x/1m", "10/soon", "5/0s"] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn fields_are_read_from_objects_only() {
        assert_eq!(
            field_of(r#"{"name":"Ann"}"#, "name").as_deref(),
            Some("Ann")
        );
        assert_eq!(field_of(r#"{"name":5}"#, "name"), None);
        assert_eq!(field_of(r#"[1]"#, "name"), None);
    }
}
