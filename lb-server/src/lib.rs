//! `lb-server`: the consistent-hash balancer (MD5 virtual nodes, weights,
//! bounded load), usable standalone.
//!
//! - [`ring`], [`policy`]: the ring and the `--policy` choices, from the
//!   `dsf-ring` crate (re-exported here).
//! - [`service`]: `lb.resolve`, `lb.view` and `lb.set_view` on the reactor,
//!   with the view builder that swaps new rings in.
//! - [`server`]: starting and stopping a balancer; static `--backend`s.
//! - [`config`]: the settings of the `lb-server` binary.

#![forbid(unsafe_code)]

pub mod config;
pub mod proxy;
pub mod server;
pub mod service;

pub use dsf_ring as ring;
pub use dsf_ring::policy;

/// The wire error a ring error is answered with: `unavailable` when no node
/// can take the key, `bad_request` for a view that cannot make a ring.
pub fn ring_error(e: ring::RingError) -> dsf_common::Error {
    let code = if e.is_unavailable() {
        dsf_common::ErrorCode::Unavailable
    } else {
        dsf_common::ErrorCode::BadRequest
    };
    dsf_common::Error::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsf_common::view::View;
    use dsf_common::ErrorCode;

    #[test]
    fn ring_errors_map_to_the_codes_clients_act_on() {
        let empty = ring::Ring::from_view(&View::default(), ring::RingConfig::default()).unwrap();
        let none = empty.route(b"k", ring::NO_EXCLUDE).unwrap_err();
        assert_eq!(ring_error(none).code(), ErrorCode::Unavailable);
        let bad = ring::RingError::BadVnodes(0);
        assert_eq!(ring_error(bad).code(), ErrorCode::BadRequest);
    }
}
