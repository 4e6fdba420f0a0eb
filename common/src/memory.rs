//! Memory a server frees goes back to the system.
//!
//! glibc's `malloc` serves a large request (128 KiB and up, at first) with a
//! mapping of its own, unmapped again when it is freed. But each such free
//! raises that threshold to the freed size, up to 32 MiB, so later buffers
//! of that size come from the heap arenas instead, and what is freed there
//! stays resident. A server whose workers allocate in arenas of their own
//! (argon2's 19 MiB for each login, the `mysql` crate's 4 MiB for each new
//! connection) kept each arena's high-water mark: an app server held 1.5 GB
//! after six bursts of 20,000 messages and their logins, where a fixed
//! threshold kept it at 14 to 24 MB (docs/BENCHMARKS.md, "Memory after
//! bursts of messages"). Setting the threshold fixes it and turns the
//! adjustment off (`mallopt(3)`).

/// Requests of this many bytes or more get a mapping of their own, returned
/// when freed: glibc's own starting threshold.
pub const LARGE: usize = 128 * 1024;

/// The environment variable with which glibc reads the threshold; when it is
/// set, the operator's value stands.
pub const THRESHOLD_ENV: &str = "MALLOC_MMAP_THRESHOLD_";

/// Fixes glibc's mmap threshold at [`LARGE`] (unless [`THRESHOLD_ENV`] sets
/// one), so that freed large buffers are unmapped at once. Every server
/// calls it first thing; elsewhere than glibc it does nothing.
pub fn return_large_frees() {
    if std::env::var_os(THRESHOLD_ENV).is_some() {
        return;
    }
    set_mmap_threshold(LARGE);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_mmap_threshold(bytes: usize) {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only sets one of malloc's parameters, under malloc's
    // own lock; it is sound at any time and from any thread.
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) } != 1 {
        log::warn!("mallopt(M_MMAP_THRESHOLD, {bytes}) refused: freed buffers may stay resident");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_mmap_threshold(_bytes: usize) {}
