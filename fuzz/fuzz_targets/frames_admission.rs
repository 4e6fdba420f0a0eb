//! Arbitrary bytes, pushed into a `FrameDecoder` in arbitrary splits; every
//! decoded frame goes through `Admission::admit_at` (with a known key, so
//! valid seeds verify and reach the replay guard) and `Reply::parse` /
//! `verify`.
//!
//! Properties checked beyond "does not panic":
//! - any split decodes the same frames, and fails at the same point, as
//!   pushing the whole stream at once;
//! - every refusal encodes to one frame that parses as a reply, is signed
//!   exactly when a key is known, and verifies with that key;
//! - an admitted request's nonce is refused the second time.

#![no_main]

use dsf_common::wire::{Admission, FrameDecoder, ReplayGuard, Reply};
use dsf_common::ErrorCode;
use dsf_fuzz::{key, keys, split_input, MAX_FRAME, NOW_MS};
use libfuzzer_sys::fuzz_target;

/// Frames decoded, then the error code that stopped decoding, if any.
type Decoded = (Vec<Vec<u8>>, Option<ErrorCode>);

fn decode_whole(stream: &[u8]) -> Decoded {
    let mut dec = FrameDecoder::new(MAX_FRAME);
    dec.push(stream);
    let mut frames = Vec::new();
    loop {
        match dec.next_frame() {
            Ok(Some(f)) => frames.push(f.to_vec()),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e.code())),
        }
    }
}

fn decode_split(sizes: &[u8], stream: &[u8]) -> Decoded {
    // Only zero sizes would never advance: push everything at once instead.
    let sizes = if sizes.iter().all(|&s| s == 0) {
        &[][..]
    } else {
        sizes
    };
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut frames = Vec::new();
    let mut at = 0;
    for turn in 0.. {
        let n = match sizes.get(turn % sizes.len().max(1)) {
            Some(&s) => usize::from(s),
            None => stream.len(),
        };
        let end = (at + n).min(stream.len());
        // A size of 0 is an empty read: push nothing, then try to decode.
        dec.push(&stream[at..end]);
        at = end;
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => frames.push(f.to_vec()),
                Ok(None) => break,
                Err(e) => return (frames, Some(e.code())),
            }
        }
        assert!(dec.buffered() <= stream.len());
        if at == stream.len() {
            break;
        }
    }
    (frames, None)
}

fn check_reply_frame(bytes: &[u8], signed: bool) -> Reply {
    let mut dec = FrameDecoder::new(usize::MAX);
    dec.push(bytes);
    let payload = dec
        .next_frame()
        .expect("a reply we encoded must frame")
        .expect("whole");
    let reply = Reply::parse(payload).expect("a reply we encoded must parse");
    assert_eq!(reply.sig.is_some(), signed, "signed iff a key is known");
    reply
}

fuzz_target!(|data: &[u8]| {
    let (sizes, stream) = split_input(data);
    let whole = decode_whole(stream);
    let split = decode_split(sizes, stream);
    assert_eq!(whole, split, "a split changed what was decoded");

    let admission = Admission::new(keys(), ReplayGuard::default());
    let key = key();
    for payload in &whole.0 {
        match admission.admit_at(payload, NOW_MS) {
            Ok(admitted) => {
                // A second copy is a replay, refused under the same id.
                let again = admission.admit_at(payload, NOW_MS).unwrap_err();
                assert_eq!(again.rejection.error.code(), ErrorCode::ReplayedNonce);
                assert_eq!(again.rejection.id, admitted.request.id);
                let mut out = Vec::new();
                admitted.ok("{}", &mut out);
                let reply = check_reply_frame(&out, true);
                reply
                    .verify(&admitted.key, &admitted.request.nonce)
                    .expect("our own signed reply verifies");
            }
            Err(refused) => {
                let mut out = Vec::new();
                refused.encode(&mut out);
                let reply = check_reply_frame(&out, refused.key.is_some());
                assert!(!reply.ok);
                assert_eq!(reply.id, refused.rejection.id);
                if let Some(k) = &refused.key {
                    reply
                        .verify(k, &refused.rejection.nonce)
                        .expect("our own signed refusal verifies");
                }
                let e = reply.into_result().unwrap_err();
                assert_eq!(e.code(), refused.rejection.error.code());
            }
        }
        // The same bytes read as a reply, as a client would.
        if let Ok(reply) = Reply::parse(payload) {
            let _ = reply.verify(&key, "00112233445566ff");
            let _ = reply.into_result();
        }
    }
});
