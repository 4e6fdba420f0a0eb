//! Shared pieces of the dsf fuzz targets: the known key, the fixed clock,
//! and how an input is split into chunks for the frame decoder.

use dsf_common::wire::{AppKeys, Key};

/// The app every seed is signed as.
pub const APP: &str = "cli";

/// Its secret: known to the targets, so seeds derived from valid requests get
/// past signature verification and reach the replay guard.
pub const SECRET: &[u8] = b"fuzz-secret";

/// The receiver's clock during fuzzing: fixed, so runs are reproducible and
/// seeds stamped with it are fresh.
pub const NOW_MS: u64 = 1_763_700_000_000;

/// The largest frame the targets accept: small, so length checks are hit.
pub const MAX_FRAME: usize = 4096;

/// The keys the targets admit: [`APP`] and the cluster secret.
pub fn keys() -> AppKeys {
    let mut keys = AppKeys::new();
    keys.insert(APP, SECRET);
    keys.with_cluster_secret(b"fuzz-cluster")
}

/// The key of [`APP`].
pub fn key() -> Key {
    Key::new(SECRET)
}

/// Splits a fuzz input into (chunk sizes, wire bytes).
///
/// Byte 0 says how many of the following bytes (0 to 15) are chunk sizes;
/// the rest is the byte stream. Sizes are used in turn, cycling, and a size
/// of 0 means "push nothing, then try to decode" (an empty read). With no
/// sizes the whole stream is pushed at once.
pub fn split_input(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    let n = usize::from(first % 16).min(rest.len());
    rest.split_at(n)
}
