//! `Request::parse` on arbitrary bytes. When it accepts, the request must
//! satisfy the envelope's rules and survive a round trip: re-encoded and
//! signed with the known key, it parses to the same fields and verifies.

#![no_main]

use dsf_common::wire::envelope::{encode_request_at, OutgoingRequest};
use dsf_common::wire::frame::HEADER_LEN;
use dsf_common::wire::Request;
use dsf_fuzz::key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let req = match Request::parse(data) {
        Ok(req) => req,
        Err(rejection) => {
            // A refusal always says why.
            assert!(!rejection.error.to_string().is_empty());
            return;
        }
    };
    assert_eq!(req.v, 2);
    assert!((1..=64).contains(&req.kind.len()));
    assert!((16..=64).contains(&req.nonce.len()));
    assert!(req.nonce.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(req.body.get().starts_with('{'));
    let _ = req.body::<serde_json_value::Any>();

    let key = key();
    let mut out = Vec::new();
    let outgoing = OutgoingRequest {
        id: req.id,
        kind: &req.kind,
        app: &req.app,
        token: req.token.as_deref(),
        body: req.body.get(),
    };
    encode_request_at(&key, &outgoing, req.ts, &req.nonce, &mut out);
    let again = Request::parse(&out[HEADER_LEN..]).expect("a re-encoded request parses");
    assert_eq!(
        (
            again.id,
            &again.kind,
            again.ts,
            &again.nonce,
            &again.app,
            &again.token,
            again.body.get()
        ),
        (
            req.id,
            &req.kind,
            req.ts,
            &req.nonce,
            &req.app,
            &req.token,
            req.body.get()
        )
    );
    key.verify_request(&again.signed_fields(), &again.sig)
        .expect("our own signature verifies");
});

mod serde_json_value {
    /// Accepts any JSON value, to drive `Request::body` without naming a
    /// serde_json dependency here.
    pub struct Any;
    impl<'de> serde::Deserialize<'de> for Any {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Any, D::Error> {
            serde::de::IgnoredAny::deserialize(d).map(|_| Any)
        }
    }
}
