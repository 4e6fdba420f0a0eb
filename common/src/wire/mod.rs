//! The wire every port speaks: length frames ([`frame`]) holding JSON
//! envelopes ([`envelope`]) signed with HMAC-MD5 ([`sign`]) under per-app
//! secrets ([`keys`]), guarded against replays ([`replay`]), checked in one
//! place ([`admission`]); streamed replies ([`streams`]).

pub mod admission;
pub mod envelope;
pub mod frame;
pub mod keys;
pub mod replay;
pub mod sign;
pub mod streams;

pub use admission::{Admission, Admitted, Refused};
pub use envelope::{
    encode_error, encode_ok, encode_request, new_nonce, now_ms, OutgoingRequest, Reply, Request,
};
pub use frame::{FrameDecoder, DEFAULT_MAX_FRAME};
pub use keys::{AppKeys, KeyError};
pub use replay::ReplayGuard;
pub use sign::Key;
