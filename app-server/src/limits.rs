//! Who may make an account ([`Registration`]), and rate limits on
//! `user.login` and `user.register`: token buckets per user
//! name and per peer address (governor's GCRA, which is a token bucket
//! kept as one timestamp per key).
//!
//! Every attempt counts, good or bad: a password hash costs tens of
//! milliseconds of a worker, so the limit bounds that cost as well as
//! guessing. A name's bucket is shared by every address, so a guesser
//! spread over many addresses is still held to the name's rate; an
//! address's bucket is shared by every name, so one address cannot sweep
//! names. The buckets are this node's: behind N app servers a name gets at
//! most N times its rate.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use dsf_common::{Error, Result};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

/// Default `--auth-rate-name`: 10 attempts, refilled over a minute.
pub const DEFAULT_PER_NAME: &str = "10/1m";
/// Default `--auth-rate-addr`: 60 attempts, refilled over a minute.
pub const DEFAULT_PER_ADDR: &str = "60/1m";
/// Keys held before the buckets that are full again are dropped.
const SWEEP_AT: usize = 100_000;

/// Whether `user.register` makes accounts (`--registration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone with an app key may register a viewer.
    Open,
    /// Only an admin makes accounts (`user.create`).
    #[default]
    Closed,
}

impl FromStr for Registration {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Registration, String> {
        match s {
            "open" => Ok(Registration::Open),
            "closed" => Ok(Registration::Closed),
            _ => Err(format!("{s:?}: registration is open or closed")),
        }
    }
}

/// A bucket's size and refill: `N/DURATION` (N attempts at once, and N more
/// over each DURATION), or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Rate {
    Off,
    Every { burst: NonZeroU32, period: Duration },
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
            .parse::<dsf_common::config::HumanDuration>()
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
                let period = dsf_common::config::HumanDuration(*period);
                write!(f, "{burst}/{period}")
            }
        }
    }
}

/// The buckets of one node.
pub struct AuthLimits {
    by_name: Option<DefaultKeyedRateLimiter<String>>,
    by_addr: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

impl fmt::Debug for AuthLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = |n: Option<usize>| n.map_or("off".to_string(), |n| format!("{n} keys"));
        f.debug_struct("AuthLimits")
            .field("by_name", &held(self.by_name.as_ref().map(|l| l.len())))
            .field("by_addr", &held(self.by_addr.as_ref().map(|l| l.len())))
            .finish()
    }
}

// === impl AuthLimits ===

impl AuthLimits {
    /// Buckets of `per_name` and `per_addr`.
    pub fn new(per_name: Rate, per_addr: Rate) -> AuthLimits {
        AuthLimits {
            by_name: per_name.quota().map(RateLimiter::keyed),
            by_addr: per_addr.quota().map(RateLimiter::keyed),
            clock: DefaultClock::default(),
        }
    }

    /// No limits (tests of other things).
    pub fn off() -> AuthLimits {
        AuthLimits::new(Rate::Off, Rate::Off)
    }

    /// Counts one attempt to `what` (login, registration) for `name` from
    /// `peer`; `overloaded`, saying when to retry, past either bucket. The
    /// address is checked first, so one address sending many names is
    /// refused before it fills the name table.
    pub fn check(&self, what: &str, name: &str, peer: Option<IpAddr>) -> Result<()> {
        if let (Some(limiter), Some(addr)) = (&self.by_addr, peer) {
            Self::sweep(limiter);
            if let Err(until) = limiter.check_key(&addr) {
                let wait = until.wait_time_from(self.clock.now());
                return Err(Error::Overloaded(format!(
                    "too many {what} attempts from {addr}: retry in {}",
                    seconds(wait)
                )));
            }
        }
        if let Some(limiter) = &self.by_name {
            Self::sweep(limiter);
            // Names are unique whatever their case, so are their buckets.
            if let Err(until) = limiter.check_key(&name.to_lowercase()) {
                let wait = until.wait_time_from(self.clock.now());
                return Err(Error::Overloaded(format!(
                    "too many {what} attempts for this name: retry in {}",
                    seconds(wait)
                )));
            }
        }
        Ok(())
    }

    /// Drops the buckets that are full again once there are many: a full
    /// bucket is the same as none.
    fn sweep<K: std::hash::Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>) {
        if limiter.len() >= SWEEP_AT {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
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
    fn a_name_or_an_address_past_its_burst_is_told_when_to_retry() {
        let limits = AuthLimits::new("2/1m".parse().unwrap(), "2/1m".parse().unwrap());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        limits.check("login", "ann", Some(a)).unwrap();
        limits.check("login", "ANN", Some(b)).unwrap();
        // The name's bucket is empty, from any address, in any case.
        let e = limits.check("login", "Ann", Some(b)).unwrap_err();
        assert_eq!(e.code(), dsf_common::ErrorCode::Overloaded);
        let msg = e.to_string();
        assert!(
            msg.contains("for this name") && msg.contains("retry in"),
            "{msg}"
        );
        assert!(!msg.contains("ann") && !msg.contains("Ann"), "{msg}");
        // Another name from a is fine until a's own bucket is empty.
        limits.check("login", "bob", Some(a)).unwrap();
        let e = limits.check("login", "cy", Some(a)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("from 10.0.0.1") && msg.contains("retry in"),
            "{msg}"
        );
        // Off is off.
        let off = AuthLimits::off();
        for _ in 0..100 {
            off.check("login", "ann", Some(a)).unwrap();
        }
    }
}
