//! Request and reply envelopes, exactly as the design gives them.
//!
//! `body` (and a reply's `error`) is kept as the raw bytes received
//! ([`RawValue`]) so signatures are verified over what was sent, never over a
//! re-serialisation.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Error, ErrorCode, Result};
use crate::wire::frame;
use crate::wire::sign::{Key, ReplyFields, RequestFields};

/// The envelope version this code speaks.
pub const VERSION: u64 = 1;

/// The `id` used in a reply to a frame whose own `id` could not be read.
/// Clients number their requests from 1.
pub const UNKNOWN_ID: u64 = 0;

/// A signed request as received.
#[derive(Debug, Deserialize)]
pub struct Request {
    pub v: u64,
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub ts: u64,
    pub nonce: String,
    pub app: String,
    #[serde(default)]
    pub token: Option<String>,
    pub body: Box<RawValue>,
    pub sig: String,
}

/// Why a frame was not accepted as a request: the error to send, and the id
/// to send it under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub id: u64,
    pub error: Error,
}

// === impl Request ===

impl Request {
    /// Parses and checks the shape of one frame's payload. Does not verify the
    /// signature (see [`crate::wire::Admission`]).
    pub fn parse(payload: &[u8]) -> std::result::Result<Request, Rejection> {
        let reject = |id, error| Rejection { id, error };
        let text = std::str::from_utf8(payload).map_err(|e| {
            reject(
                UNKNOWN_ID,
                Error::BadJson(format!(
                    "frame is not valid UTF-8 (first bad byte at offset {})",
                    e.valid_up_to()
                )),
            )
        })?;
        let req: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => return Err(reject_shape(text, e)),
        };
        req.check().map_err(|e| reject(req.id, e))?;
        Ok(req)
    }

    fn check(&self) -> Result<()> {
        if self.v != VERSION {
            return Err(Error::bad_request(format!(
                "v: must be {VERSION}, got {}",
                self.v
            )));
        }
        if self.kind.is_empty() || self.kind.len() > 64 {
            return Err(Error::bad_request("type: 1 to 64 characters"));
        }
        let n = self.nonce.len();
        if !(8..=64).contains(&n) || !self.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::bad_request(format!(
                "nonce: 8 to 64 hex characters, got {:?}",
                truncate(&self.nonce, 80)
            )));
        }
        if !self.body.get().starts_with('{') {
            return Err(Error::bad_request("body: must be a JSON object"));
        }
        Ok(())
    }

    /// The fields its signature covers.
    pub fn signed_fields(&self) -> RequestFields<'_> {
        RequestFields {
            v: self.v,
            id: self.id,
            kind: &self.kind,
            ts: self.ts,
            nonce: &self.nonce,
            token: self.token.as_deref().unwrap_or(""),
            body: self.body.get(),
        }
    }

    /// Deserialises the body into a handler's type; a mismatch is a
    /// `bad_request` naming the field.
    pub fn body<'a, T: Deserialize<'a>>(&'a self) -> Result<T> {
        serde_json::from_str(self.body.get())
            .map_err(|e| Error::bad_request(format!("body: {}", strip_position(&e))))
    }
}

/// A JSON error while reading an envelope: syntax means the stream is lost
/// (`bad_json`, the connection closes); a well-formed value of the wrong
/// shape is a `bad_request`, answered under its id when one can be read.
fn reject_shape(text: &str, e: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => Rejection {
            id: UNKNOWN_ID,
            error: Error::BadJson(format!("frame is not valid JSON: {e}")),
        },
        Category::Data => {
            let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            let Some(obj) = value.as_object() else {
                return Rejection {
                    id: UNKNOWN_ID,
                    error: Error::bad_request(format!(
                        "frame must hold a JSON object, got {}",
                        json_kind(&value)
                    )),
                };
            };
            Rejection {
                id: obj.get("id").and_then(|v| v.as_u64()).unwrap_or(UNKNOWN_ID),
                error: Error::bad_request(format!("envelope: {}", strip_position(&e))),
            }
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// serde's message without the " at line 1 column 17" suffix, which means
/// nothing to a sender that never saw our re-parse.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Milliseconds since the Unix epoch, as `ts` carries them.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh random nonce: 16 lower-case hex characters.
pub fn new_nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Everything a sender chooses for one request.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingRequest<'a> {
    pub id: u64,
    pub kind: &'a str,
    pub app: &'a str,
    pub token: Option<&'a str>,
    /// The body, already serialised as a JSON object.
    pub body: &'a str,
}

/// Signs `req` with a fresh timestamp and nonce and appends it to `out` as
/// one frame.
pub fn encode_request(key: &Key, req: &OutgoingRequest<'_>, out: &mut Vec<u8>) {
    encode_request_at(key, req, now_ms(), &new_nonce(), out)
}

/// [`encode_request`] with the timestamp and nonce given, for tests that
/// need stale or repeated ones.
pub fn encode_request_at(
    key: &Key,
    req: &OutgoingRequest<'_>,
    ts: u64,
    nonce: &str,
    out: &mut Vec<u8>,
) {
    let sig = key.sign_request(&RequestFields {
        v: VERSION,
        id: req.id,
        kind: req.kind,
        ts,
        nonce,
        token: req.token.unwrap_or(""),
        body: req.body,
    });
    let mut json = Vec::with_capacity(128 + req.body.len());
    json.extend_from_slice(b"{\"v\":1,\"id\":");
    json.extend_from_slice(itoa::Buffer::new().format(req.id).as_bytes());
    json.extend_from_slice(b",\"type\":");
    write_json_str(&mut json, req.kind);
    json.extend_from_slice(b",\"ts\":");
    json.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
    json.extend_from_slice(b",\"nonce\":");
    write_json_str(&mut json, nonce);
    json.extend_from_slice(b",\"app\":");
    write_json_str(&mut json, req.app);
    if let Some(token) = req.token {
        json.extend_from_slice(b",\"token\":");
        write_json_str(&mut json, token);
    }
    json.extend_from_slice(b",\"body\":");
    json.extend_from_slice(req.body.as_bytes());
    json.extend_from_slice(b",\"sig\":\"");
    json.extend_from_slice(sig.as_bytes());
    json.extend_from_slice(b"\"}");
    frame::encode(&json, out);
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec cannot fail");
}

/// Appends a successful reply to `out` as one frame. `body` is a serialised
/// JSON object.
pub fn encode_ok(key: Option<&Key>, id: u64, body: &str, out: &mut Vec<u8>) {
    encode_reply(key, id, true, body, out)
}

/// Appends an error reply to `out` as one frame. `key` is `None` when the
/// request could not be parsed or its app is unknown: such replies are
/// unsigned.
pub fn encode_error(key: Option<&Key>, id: u64, error: &Error, out: &mut Vec<u8>) {
    let payload = serde_json::json!({
        "code": error.code().as_str(),
        "message": error.to_string(),
    })
    .to_string();
    encode_reply(key, id, false, &payload, out)
}

fn encode_reply(key: Option<&Key>, id: u64, ok: bool, payload: &str, out: &mut Vec<u8>) {
    let mut json = Vec::with_capacity(64 + payload.len());
    json.extend_from_slice(b"{\"v\":1,\"id\":");
    json.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    json.extend_from_slice(if ok {
        b",\"ok\":true,\"body\":"
    } else {
        b",\"ok\":false,\"error\":"
    });
    json.extend_from_slice(payload.as_bytes());
    if let Some(key) = key {
        let sig = key.sign_reply(&ReplyFields {
            v: VERSION,
            id,
            ok,
            payload,
        });
        json.extend_from_slice(b",\"sig\":\"");
        json.extend_from_slice(sig.as_bytes());
        json.push(b'"');
    }
    json.push(b'}');
    frame::encode(&json, out);
}

/// A reply as received by a client.
#[derive(Debug, Deserialize)]
pub struct Reply {
    pub v: u64,
    pub id: u64,
    pub ok: bool,
    #[serde(default)]
    pub body: Option<Box<RawValue>>,
    #[serde(default)]
    pub error: Option<Box<RawValue>>,
    #[serde(default)]
    pub sig: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

// === impl Reply ===

impl Reply {
    /// Parses one frame's payload as a reply.
    pub fn parse(payload: &[u8]) -> Result<Reply> {
        serde_json::from_slice(payload)
            .map_err(|e| Error::BadJson(format!("reply is not a valid envelope: {e}")))
    }

    fn payload(&self) -> &str {
        let raw = if self.ok { &self.body } else { &self.error };
        raw.as_deref().map(RawValue::get).unwrap_or("")
    }

    /// Verifies the signature. An unsigned reply is accepted only when it is
    /// an error (the server could not tell who we are), and is then returned
    /// as that error by [`Reply::into_result`].
    pub fn verify(&self, key: &Key) -> Result<()> {
        match &self.sig {
            Some(sig) => key.verify_reply(
                &ReplyFields {
                    v: self.v,
                    id: self.id,
                    ok: self.ok,
                    payload: self.payload(),
                },
                sig,
            ),
            None if !self.ok => Ok(()),
            None => Err(Error::BadSignature(
                "reply claims success but carries no signature".into(),
            )),
        }
    }

    /// The body on success, or the server's error with its code and message.
    /// A code this version does not know becomes `internal`, keeping the
    /// server's message.
    pub fn into_result(self) -> Result<Box<RawValue>> {
        if self.ok {
            return self
                .body
                .ok_or_else(|| Error::BadJson("reply has ok:true but no body".into()));
        }
        let raw = self
            .error
            .ok_or_else(|| Error::BadJson("reply has ok:false but no error".into()))?;
        let e: ErrorBody = serde_json::from_str(raw.get())
            .map_err(|e| Error::BadJson(format!("reply error is malformed: {e}")))?;
        let code = ErrorCode::parse(&e.code).unwrap_or(ErrorCode::Internal);
        Err(Error::new(code, e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::FrameDecoder;

    fn one_frame(bytes: &[u8]) -> Vec<u8> {
        let mut dec = FrameDecoder::new(frame::DEFAULT_MAX_FRAME);
        dec.push(bytes);
        dec.next_frame().unwrap().unwrap().to_vec()
    }

    #[test]
    fn encoded_request_parses_and_verifies() {
        let key = Key::new(b"s");
        let mut out = Vec::new();
        let body = "{ \"id_card\" : \"1101\",\"name\":\"Li\" }";
        let req = OutgoingRequest {
            id: 42,
            kind: "blacklist.add",
            app: "cli",
            token: Some("tok"),
            body,
        };
        encode_request(&key, &req, &mut out);
        let parsed = Request::parse(&one_frame(&out)).unwrap();
        assert_eq!(parsed.id, 42);
        assert_eq!(parsed.kind, "blacklist.add");
        assert_eq!(parsed.token.as_deref(), Some("tok"));
        // The body is kept byte for byte, spaces included.
        assert_eq!(parsed.body.get(), body);
        key.verify_request(&parsed.signed_fields(), &parsed.sig)
            .unwrap();
    }

    #[test]
    fn shapes_that_are_not_requests_are_rejected_with_their_code() {
        let cases: &[(&[u8], ErrorCode, u64)] = &[
            (b"\xff\xfe{}", ErrorCode::BadJson, 0),
            (b"{\"v\":1,", ErrorCode::BadJson, 0),
            (b"[1,2]", ErrorCode::BadRequest, 0),
            (b"{\"v\":1,\"id\":9}", ErrorCode::BadRequest, 9),
            (b"{\"v\":2,\"id\":3,\"type\":\"a\",\"ts\":1,\"nonce\":\"0123456789\",\"app\":\"x\",\"body\":{},\"sig\":\"\"}", ErrorCode::BadRequest, 3),
            (b"{\"v\":1,\"id\":3,\"type\":\"a\",\"ts\":1,\"nonce\":\"short\",\"app\":\"x\",\"body\":{},\"sig\":\"\"}", ErrorCode::BadRequest, 3),
            (b"{\"v\":1,\"id\":3,\"type\":\"a\",\"ts\":1,\"nonce\":\"0123456789\",\"app\":\"x\",\"body\":[],\"sig\":\"\"}", ErrorCode::BadRequest, 3),
            (b"{\"v\":1,\"id\":\"3\",\"type\":\"a\",\"ts\":1,\"nonce\":\"0123456789\",\"app\":\"x\",\"body\":{},\"sig\":\"\"}", ErrorCode::BadRequest, 0),
        ];
        for (payload, code, id) in cases {
            let r = Request::parse(payload).unwrap_err();
            assert_eq!(
                r.error.code(),
                *code,
                "{}",
                String::from_utf8_lossy(payload)
            );
            assert_eq!(r.id, *id, "{}", String::from_utf8_lossy(payload));
        }
    }

    #[test]
    fn replies_round_trip_signed_and_unsigned() {
        let key = Key::new(b"s");
        let mut out = Vec::new();
        encode_ok(Some(&key), 5, "{\"node\":\"a\"}", &mut out);
        let r = Reply::parse(&one_frame(&out)).unwrap();
        r.verify(&key).unwrap();
        assert_eq!(r.into_result().unwrap().get(), "{\"node\":\"a\"}");

        let mut out = Vec::new();
        encode_error(None, 0, &Error::BadJson("nope \"x\"".into()), &mut out);
        let r = Reply::parse(&one_frame(&out)).unwrap();
        assert!(r.sig.is_none());
        r.verify(&key).unwrap();
        let e = r.into_result().unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadJson);
        assert_eq!(e.to_string(), "nope \"x\"");
    }

    #[test]
    fn forged_reply_is_refused() {
        let key = Key::new(b"s");
        let mut out = Vec::new();
        encode_ok(Some(&Key::new(b"other")), 5, "{}", &mut out);
        let r = Reply::parse(&one_frame(&out)).unwrap();
        assert_eq!(r.verify(&key).unwrap_err().code(), ErrorCode::BadSignature);

        let unsigned_ok = br#"{"v":1,"id":5,"ok":true,"body":{}}"#;
        let r = Reply::parse(unsigned_ok).unwrap();
        assert_eq!(r.verify(&key).unwrap_err().code(), ErrorCode::BadSignature);
    }
}
