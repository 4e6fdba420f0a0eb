//! The clock the repositories stamp rows with.

/// Milliseconds since the Unix epoch, as stored in every `*_at` column:
/// the database's clock, as far as the app server measured it
/// ([`dsf_common::clock`]).
pub fn now_ms() -> i64 {
    dsf_common::clock::now_ms()
}
