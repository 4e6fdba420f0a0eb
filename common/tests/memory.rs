//! After `memory::return_large_frees`, a large buffer that was freed and is
//! asked for again gets a mapping of its own again, unmapped when freed,
//! instead of coming from a heap arena where it would stay resident (what
//! glibc's adjusting threshold does after the first free).
//! One test in its own process: malloc's parameters are process-wide.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::hint::black_box;

/// Chunks malloc has mapped on their own, now.
fn mapped_chunks() -> usize {
    // SAFETY: mallinfo2 only reads malloc's counters.
    unsafe { libc::mallinfo2() }.hblks
}

#[test]
fn a_large_buffer_freed_is_mapped_again_not_kept_in_an_arena() {
    assert!(
        std::env::var_os(dsf_common::memory::THRESHOLD_ENV).is_none(),
        "unset {} for this test: it checks the threshold the servers set",
        dsf_common::memory::THRESHOLD_ENV
    );
    dsf_common::memory::return_large_frees();
    // Above the threshold, and below the 32 MiB glibc would raise it to.
    let size = 4 << 20;
    drop(black_box(vec![1u8; size]));
    let before = mapped_chunks();
    let again = black_box(vec![1u8; size]);
    let held = mapped_chunks();
    drop(again);
    assert_eq!(
        held,
        before + 1,
        "a {size}-byte buffer asked for after one was freed came from a heap arena, \
         where freed memory stays resident"
    );
    assert_eq!(
        mapped_chunks(),
        before,
        "the buffer's mapping was not returned when freed"
    );
}
