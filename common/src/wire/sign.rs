//! HMAC-MD5 signatures over the envelope's fields joined by `\n`.
//!
//! A [`Key`] holds an HMAC state already keyed with the secret, so signing a
//! message clones that state instead of hashing the key again. Verification
//! decodes the hex signature and compares in constant time
//! (`Mac::verify_slice`).

use std::sync::Arc;

use hmac::{Hmac, Mac};
use md5::Md5;

use crate::error::{Error, Result};

type HmacMd5 = Hmac<Md5>;

/// Bytes of an HMAC-MD5 tag.
pub const TAG_LEN: usize = 16;

/// A signing secret, pre-keyed. Cloning shares the keyed state.
#[derive(Clone)]
pub struct Key {
    mac: Arc<HmacMd5>,
}

/// The fields of a request that its signature covers, in order.
#[derive(Debug, Clone, Copy)]
pub struct RequestFields<'a> {
    pub v: u64,
    pub id: u64,
    pub kind: &'a str,
    pub ts: u64,
    pub nonce: &'a str,
    /// Empty when the request has no token.
    pub token: &'a str,
    /// The exact bytes of `body` as sent.
    pub body: &'a str,
}

/// The fields of a reply that its signature covers, in order.
#[derive(Debug, Clone, Copy)]
pub struct ReplyFields<'a> {
    pub v: u64,
    pub id: u64,
    /// The nonce of the request it answers: a recorded reply cannot answer
    /// a later request that reuses its id.
    pub nonce: &'a str,
    pub ok: bool,
    /// The exact bytes of `body` (or of `error` when `ok` is false).
    pub payload: &'a str,
}

/// The fields of a stream's event that its signature covers, in order.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    pub v: u64,
    pub id: u64,
    /// The nonce of the request whose stream it belongs to.
    pub nonce: &'a str,
    /// 1 for the first event of a stream, then one more each.
    pub seq: u64,
    pub event: &'a str,
    /// The exact bytes of `body`.
    pub body: &'a str,
}

/// A signature as sent: 32 lower-case hex characters, kept on the stack
/// (every reply is signed, so a `String` each would be an allocation per
/// request). Derefs to `str`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sig([u8; 2 * TAG_LEN]);

// === impl Sig ===

impl Sig {
    fn of(mac: HmacMd5) -> Sig {
        let mut hex = [0u8; 2 * TAG_LEN];
        hex::encode_to_slice(mac.finalize().into_bytes(), &mut hex)
            .expect("32 hex characters hold a 16-byte tag");
        Sig(hex)
    }

    /// The signature's characters.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex is ASCII")
    }
}

impl std::ops::Deref for Sig {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<String> for Sig {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Sig {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

// === impl Key ===

impl Key {
    /// A key from a secret of any length.
    pub fn new(secret: &[u8]) -> Key {
        Key {
            mac: Arc::new(HmacMd5::new_from_slice(secret).expect("HMAC takes keys of any length")),
        }
    }

    /// The raw HMAC-MD5 tag of `msg`.
    pub fn tag(&self, msg: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = HmacMd5::clone(&self.mac);
        mac.update(msg);
        mac.finalize().into_bytes().into()
    }

    /// Lower-case hex signature of a request.
    pub fn sign_request(&self, f: &RequestFields<'_>) -> Sig {
        Sig::of(self.request_mac(f))
    }

    /// Checks `sig` (32 lower-case hex characters) against a request.
    pub fn verify_request(&self, f: &RequestFields<'_>, sig: &str) -> Result<()> {
        let tag = decode_sig(sig)?;
        self.request_mac(f)
            .verify_slice(&tag)
            .map_err(|_| bad_signature())
    }

    /// Lower-case hex signature of a reply.
    pub fn sign_reply(&self, f: &ReplyFields<'_>) -> Sig {
        Sig::of(self.reply_mac(f))
    }

    /// Checks `sig` against a reply.
    pub fn verify_reply(&self, f: &ReplyFields<'_>, sig: &str) -> Result<()> {
        let tag = decode_sig(sig)?;
        self.reply_mac(f)
            .verify_slice(&tag)
            .map_err(|_| Error::BadSignature("reply signature does not match: the server holds a different secret for this app, or the reply was altered".into()))
    }

    /// Lower-case hex signature of an event.
    pub fn sign_event(&self, f: &EventFields<'_>) -> Sig {
        Sig::of(self.event_mac(f))
    }

    /// Checks `sig` against an event.
    pub fn verify_event(&self, f: &EventFields<'_>, sig: &str) -> Result<()> {
        let tag = decode_sig(sig)?;
        self.event_mac(f)
            .verify_slice(&tag)
            .map_err(|_| Error::BadSignature("event signature does not match: the server holds a different secret for this app, or the event was altered".into()))
    }

    /// The keyed MAC over `fields` joined by `\n`: every frame's rule.
    fn mac_over(&self, fields: &[&[u8]]) -> HmacMd5 {
        let mut mac = HmacMd5::clone(&self.mac);
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                mac.update(b"\n");
            }
            mac.update(f);
        }
        mac
    }

    fn event_mac(&self, f: &EventFields<'_>) -> HmacMd5 {
        let (mut v, mut id, mut seq) = (
            itoa::Buffer::new(),
            itoa::Buffer::new(),
            itoa::Buffer::new(),
        );
        self.mac_over(&[
            v.format(f.v).as_bytes(),
            id.format(f.id).as_bytes(),
            f.nonce.as_bytes(),
            seq.format(f.seq).as_bytes(),
            f.event.as_bytes(),
            f.body.as_bytes(),
        ])
    }

    fn request_mac(&self, f: &RequestFields<'_>) -> HmacMd5 {
        let (mut v, mut id, mut ts) = (
            itoa::Buffer::new(),
            itoa::Buffer::new(),
            itoa::Buffer::new(),
        );
        self.mac_over(&[
            v.format(f.v).as_bytes(),
            id.format(f.id).as_bytes(),
            f.kind.as_bytes(),
            ts.format(f.ts).as_bytes(),
            f.nonce.as_bytes(),
            f.token.as_bytes(),
            f.body.as_bytes(),
        ])
    }

    fn reply_mac(&self, f: &ReplyFields<'_>) -> HmacMd5 {
        let (mut v, mut id) = (itoa::Buffer::new(), itoa::Buffer::new());
        self.mac_over(&[
            v.format(f.v).as_bytes(),
            id.format(f.id).as_bytes(),
            f.nonce.as_bytes(),
            if f.ok { b"true" } else { b"false" },
            f.payload.as_bytes(),
        ])
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

fn bad_signature() -> Error {
    Error::BadSignature(
        "signature does not match: sign v, id, type, ts, nonce, token and the exact body bytes, joined by \\n, with HMAC-MD5 and this app's secret".into(),
    )
}

/// Each byte's value as a lower-case hex digit, or 0xff.
const NIBBLE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut c = 0;
    while c < 10 {
        t[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        t[b'a' as usize + c] = 10 + c as u8;
        c += 1;
    }
    t
};

fn decode_sig(sig: &str) -> Result<[u8; TAG_LEN]> {
    // One pass over the 32 characters; only lower-case hex is a signature.
    let bad = || {
        Error::BadSignature(format!(
            "sig: must be {} lower-case hex characters, got {} characters",
            2 * TAG_LEN,
            sig.chars().count()
        ))
    };
    let bytes = sig.as_bytes();
    if bytes.len() != 2 * TAG_LEN {
        return Err(bad());
    }
    let mut tag = [0u8; TAG_LEN];
    let mut invalid = 0u8;
    for (t, pair) in tag.iter_mut().zip(bytes.chunks_exact(2)) {
        let (hi, lo) = (NIBBLE[pair[0] as usize], NIBBLE[pair[1] as usize]);
        invalid |= (hi | lo) & 0xf0;
        *t = hi << 4 | (lo & 0x0f);
    }
    if invalid != 0 {
        return Err(bad());
    }
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use proptest::prelude::*;

    /// RFC 2202, section 2: the seven HMAC-MD5 test cases.
    #[test]
    fn rfc2202_hmac_md5_vectors() {
        let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
            (
                vec![0x0b; 16],
                b"Hi There".to_vec(),
                "9294727a3638bb1c13f48ef8158bfc9d",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "750c783e6ab0b503eaa86e310a5db738",
            ),
            (
                vec![0xaa; 16],
                vec![0xdd; 50],
                "56be34521d144c88dbb8c733f0e8b3f6",
            ),
            (
                (1..=25).collect(),
                vec![0xcd; 50],
                "697eaf0aca3a3aea3a75164746ffaa79",
            ),
            (
                vec![0x0c; 16],
                b"Test With Truncation".to_vec(),
                "56461ef2342edc00f9bab995690efd4c",
            ),
            (
                vec![0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd",
            ),
            (
                vec![0xaa; 80],
                b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data"
                    .to_vec(),
                "6f630fad67cda0ee1fb1f562db3aa53e",
            ),
        ];
        for (key, data, want) in cases {
            assert_eq!(hex::encode(Key::new(&key).tag(&data)), want);
        }
    }

    fn fields<'a>(body: &'a str, token: &'a str) -> RequestFields<'a> {
        RequestFields {
            v: 2,
            id: 42,
            kind: "blacklist.add",
            ts: 1_763_700_000_000,
            nonce: "9f2c0011",
            token,
            body,
        }
    }

    #[test]
    fn request_signature_covers_the_joined_fields() {
        let key = Key::new(b"secret");
        let f = fields("{\"id_card\":\"1\"}", "");
        let joined = "2\n42\nblacklist.add\n1763700000000\n9f2c0011\n\n{\"id_card\":\"1\"}";
        assert_eq!(
            key.sign_request(&f),
            hex::encode(key.tag(joined.as_bytes()))
        );
    }

    #[test]
    fn reply_signature_covers_the_joined_fields_with_the_requests_nonce() {
        let key = Key::new(b"secret");
        let f = ReplyFields {
            v: 2,
            id: 7,
            nonce: "00112233445566ff",
            ok: false,
            payload: "{\"code\":\"x\"}",
        };
        assert_eq!(
            key.sign_reply(&f),
            hex::encode(key.tag(b"2\n7\n00112233445566ff\nfalse\n{\"code\":\"x\"}"))
        );
        key.verify_reply(&f, &key.sign_reply(&f)).unwrap();
        // The same reply to another request with the same id does not verify.
        let other = ReplyFields {
            nonce: "00112233445566fe",
            ..f
        };
        assert!(key.verify_reply(&other, &key.sign_reply(&f)).is_err());
    }

    /// The golden vectors of the wire specification (docs/WIRE.md), computed with
    /// Python's `hmac` module (an implementation independent of ours):
    /// `hmac.new(b"gate-north-secret", msg, hashlib.md5).hexdigest()`.
    #[test]
    fn golden_vectors_for_request_reply_error_and_event() {
        let key = Key::new(b"gate-north-secret");
        let nonce = "9f2c00112233aabb";
        let request = RequestFields {
            v: 2,
            id: 42,
            kind: "blacklist.add",
            ts: 1_763_700_000_000,
            nonce,
            token: "",
            body: "{\"id_card\":\"1101\",\"name\":\"Li\"}",
        };
        assert_eq!(
            key.sign_request(&request),
            "946c563c103b2583b7f88ccabe9de257"
        );
        let reply = ReplyFields {
            v: 2,
            id: 42,
            nonce,
            ok: true,
            payload: "{\"id_card\":\"1101\"}",
        };
        assert_eq!(key.sign_reply(&reply), "6ac1d3f2b5386ab543c0606237d2814b");
        let error = ReplyFields {
            ok: false,
            payload: "{\"code\":\"not_found\",\"message\":\"no entry for id card 1101\"}",
            ..reply
        };
        assert_eq!(key.sign_reply(&error), "e64d2b2e665c564e662d8f5bcd5a2325");
        let event = EventFields {
            v: 2,
            id: 42,
            nonce,
            seq: 1,
            event: "progress",
            body: "{\"done\":3,\"total\":10}",
        };
        assert_eq!(key.sign_event(&event), "2097fe9c84bfb9c8a77922e451a16197");
        key.verify_event(&event, "2097fe9c84bfb9c8a77922e451a16197")
            .unwrap();
    }

    #[test]
    fn malformed_signatures_are_refused_with_the_rule() {
        let key = Key::new(b"secret");
        let f = fields("{}", "");
        let good = key.sign_request(&f);
        for bad in [
            String::new(),
            "zz".repeat(16),
            good.to_uppercase(),
            format!("{good}00"),
        ] {
            let e = key.verify_request(&f, &bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::BadSignature);
        }
        assert!(key
            .verify_request(&f, "abc")
            .unwrap_err()
            .to_string()
            .contains("32 lower-case hex"));
    }

    proptest! {
        /// The table decoder takes exactly the lower-case hex `hex` takes,
        /// whatever the 32 bytes.
        #[test]
        fn decode_sig_takes_only_lower_case_hex(chars in prop::collection::vec(
            prop::sample::select(b"0123456789abcdefABCDEFgz/:@`G\x00\xff".to_vec()), 32)) {
            let text: String = chars.iter().map(|&b| b as char).collect();
            let lower = text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            match decode_sig(&text) {
                Ok(tag) => {
                    prop_assert!(lower, "{text:?} was taken");
                    prop_assert_eq!(hex::encode(tag), text);
                }
                Err(_) => prop_assert!(!lower, "{text:?} was refused"),
            }
        }

        #[test]
        fn signing_round_trips(secret in prop::collection::vec(any::<u8>(), 0..100),
                               body in "\\{[ -~]{0,80}\\}", token in "[a-f0-9]{0,40}") {
            let key = Key::new(&secret);
            let f = fields(&body, &token);
            prop_assert!(key.verify_request(&f, &key.sign_request(&f)).is_ok());
        }

        #[test]
        fn any_changed_byte_fails_verification(body in "\\{[ -~]{1,80}\\}",
                                               at in any::<prop::sample::Index>(),
                                               flip in 1u8..=255) {
            let key = Key::new(b"k");
            let f = fields(&body, "tok");
            let sig = key.sign_request(&f);
            // Change one byte of the body...
            let mut bytes = body.clone().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            if let Ok(changed) = String::from_utf8(bytes) {
                prop_assert!(key.verify_request(&fields(&changed, "tok"), &sig).is_err());
            }
            // ...or one character of the signature.
            let mut s = sig.as_bytes().to_vec();
            let j = at.index(s.len());
            s[j] = if s[j] == b'0' { b'1' } else { b'0' };
            prop_assert!(key.verify_request(&f, std::str::from_utf8(&s).unwrap()).is_err());
        }
    }
}
