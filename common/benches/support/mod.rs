//! The request both wire benches measure, built in one place so the
//! criterion figures and the callgrind counts are of the same bytes.

use dsf_common::wire::envelope::{encode_request_at, OutgoingRequest};
use dsf_common::wire::frame::HEADER_LEN;
use dsf_common::wire::Key;

/// The secret the benches sign with.
pub const SECRET: &[u8] = b"bench-secret";
/// The benches' fixed clock, so every request is fresh to the guard.
pub const NOW: u64 = 1_763_700_000_000;

/// A signed `gate.check` request of exactly `want` bytes of payload, with
/// nonce `n`, framed.
pub fn framed_request(key: &Key, n: u64, want: usize) -> Vec<u8> {
    let encode = |pad: usize| {
        let body = format!(
            "{{\"id_card\":\"110101199003077777\",\"name\":\"L{}\"}}",
            "x".repeat(pad)
        );
        let req = OutgoingRequest {
            id: n + 1,
            kind: "gate.check",
            app: "gate",
            token: None,
            body: &body,
        };
        let mut out = Vec::new();
        encode_request_at(key, &req, NOW, &format!("{n:016x}"), &mut out);
        out
    };
    let base = encode(0).len() - HEADER_LEN;
    assert!(base <= want, "the smallest request is {base} bytes");
    let out = encode(want - base);
    assert_eq!(out.len() - HEADER_LEN, want);
    out
}
