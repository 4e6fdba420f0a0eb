//! Request and reply envelopes, exactly as the design gives them.
//!
//! `body` (and a reply's `error`) is kept as the raw bytes received
//! ([`RawValue`]) so signatures are verified over what was sent, never over a
//! re-serialisation.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Error, ErrorCode, Result};
use crate::wire::frame;
use crate::wire::sign::{EventFields, Key, ReplyFields, RequestFields};

/// The envelope version this code speaks.
pub const VERSION: u64 = 2;

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
/// and nonce to send it under (the nonce is empty when none could be read;
/// such a reply is unsigned anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub id: u64,
    pub nonce: String,
    pub error: Error,
}

// === impl Request ===

impl Request {
    /// Parses and checks the shape of one frame's payload. Does not verify the
    /// signature (see [`crate::wire::Admission`]).
    pub fn parse(payload: &[u8]) -> std::result::Result<Request, Rejection> {
        let reject = |id, error| Rejection {
            id,
            nonce: String::new(),
            error,
        };
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
        req.check().map_err(|error| Rejection {
            id: req.id,
            nonce: req.nonce.clone(),
            error,
        })?;
        Ok(req)
    }

    fn check(&self) -> Result<()> {
        if self.v != VERSION {
            return Err(Error::bad_request(format!(
                "v: this server speaks wire version {VERSION}, got {}; update the client (replies are bound to the request's nonce since version 2)",
                self.v
            )));
        }
        if self.kind.is_empty() || self.kind.len() > 64 {
            return Err(Error::bad_request("type: 1 to 64 characters"));
        }
        let n = self.nonce.len();
        if !(16..=64).contains(&n) || !self.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::bad_request(format!(
                "nonce: 16 to 64 hex characters, got {:?}",
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
            nonce: String::new(),
            error: Error::BadJson(format!("frame is not valid JSON: {e}")),
        },
        Category::Data => {
            let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            let Some(obj) = value.as_object() else {
                return Rejection {
                    id: UNKNOWN_ID,
                    nonce: String::new(),
                    error: Error::bad_request(format!(
                        "frame must hold a JSON object, got {}",
                        json_kind(&value)
                    )),
                };
            };
            Rejection {
                id: obj.get("id").and_then(|v| v.as_u64()).unwrap_or(UNKNOWN_ID),
                nonce: String::new(),
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

/// Milliseconds since the Unix epoch, as `ts` carries them, by the
/// corrected clock ([`crate::clock`]).
pub fn now_ms() -> u64 {
    crate::clock::now_ms().max(0) as u64
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
/// one frame; returns the nonce, which its reply's signature covers.
pub fn encode_request(key: &Key, req: &OutgoingRequest<'_>, out: &mut Vec<u8>) -> String {
    let nonce = new_nonce();
    encode_request_at(key, req, now_ms(), &nonce, out);
    nonce
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
    let frame = frame::InPlace::start(out, 128 + req.body.len());
    let json = &mut *frame.buf;
    json.extend_from_slice(b"{\"v\":2,\"id\":");
    json.extend_from_slice(itoa::Buffer::new().format(req.id).as_bytes());
    json.extend_from_slice(b",\"type\":");
    write_json_str(json, req.kind);
    json.extend_from_slice(b",\"ts\":");
    json.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
    json.extend_from_slice(b",\"nonce\":");
    write_json_str(json, nonce);
    json.extend_from_slice(b",\"app\":");
    write_json_str(json, req.app);
    if let Some(token) = req.token {
        json.extend_from_slice(b",\"token\":");
        write_json_str(json, token);
    }
    json.extend_from_slice(b",\"body\":");
    json.extend_from_slice(req.body.as_bytes());
    json.extend_from_slice(b",\"sig\":\"");
    json.extend_from_slice(sig.as_bytes());
    json.extend_from_slice(b"\"}");
    frame.finish();
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec cannot fail");
}

/// Appends a successful reply to `out` as one frame, signed over the
/// request's `nonce`. `body` is a serialised JSON object.
pub fn encode_ok(key: Option<&Key>, id: u64, nonce: &str, body: &str, out: &mut Vec<u8>) {
    encode_reply(key, id, nonce, true, body, out)
}

/// Appends an error reply to `out` as one frame. `key` is `None` when the
/// request could not be parsed or its app is unknown: such replies are
/// unsigned.
pub fn encode_error(key: Option<&Key>, id: u64, nonce: &str, error: &Error, out: &mut Vec<u8>) {
    encode_reply(key, id, nonce, false, &error_payload(error), out)
}

/// The `error` object of a reply.
pub fn error_payload(error: &Error) -> String {
    serde_json::json!({
        "code": error.code().as_str(),
        "message": error.to_string(),
    })
    .to_string()
}

/// Appends a reply whose payload is already rendered: `body` when `ok`,
/// the `error` object otherwise (a stored reply sent again).
pub fn encode_reply(
    key: Option<&Key>,
    id: u64,
    nonce: &str,
    ok: bool,
    payload: &str,
    out: &mut Vec<u8>,
) {
    let frame = frame::InPlace::start(out, 64 + payload.len());
    let json = &mut *frame.buf;
    json.extend_from_slice(b"{\"v\":2,\"id\":");
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
            nonce,
            ok,
            payload,
        });
        json.extend_from_slice(b",\"sig\":\"");
        json.extend_from_slice(sig.as_bytes());
        json.push(b'"');
    }
    json.push(b'}');
    frame.finish();
}

/// Appends one event of a stream: `seq` from 1, `event` its name, `body` a
/// serialised JSON object; signed over the request's `nonce`.
pub fn encode_event(
    key: &Key,
    id: u64,
    nonce: &str,
    seq: u64,
    event: &str,
    body: &str,
    out: &mut Vec<u8>,
) {
    let sig = key.sign_event(&EventFields {
        v: VERSION,
        id,
        nonce,
        seq,
        event,
        body,
    });
    let frame = frame::InPlace::start(out, 96 + body.len());
    let json = &mut *frame.buf;
    json.extend_from_slice(b"{\"v\":2,\"id\":");
    json.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    json.extend_from_slice(b",\"seq\":");
    json.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    json.extend_from_slice(b",\"event\":");
    write_json_str(json, event);
    json.extend_from_slice(b",\"body\":");
    json.extend_from_slice(body.as_bytes());
    json.extend_from_slice(b",\"sig\":\"");
    json.extend_from_slice(sig.as_bytes());
    json.extend_from_slice(b"\"}");
    frame.finish();
}

/// A reply (or an event of a stream) as received by a client.
#[derive(Debug, Deserialize)]
pub struct Reply {
    pub v: u64,
    pub id: u64,
    /// Absent on events.
    #[serde(default)]
    pub ok: bool,
    /// An event's place in its stream, from 1.
    #[serde(default)]
    pub seq: Option<u64>,
    /// An event's name; `None` on the final reply.
    #[serde(default)]
    pub event: Option<String>,
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

    /// Whether this is an event of a stream rather than a final reply.
    pub fn is_event(&self) -> bool {
        self.event.is_some()
    }

    /// Verifies the signature against the key and the nonce of the request
    /// it claims to answer. An unsigned frame never verifies: a client acts
    /// on it only by dropping the connection (see [`Reply::unsigned_error`]).
    pub fn verify(&self, key: &Key, nonce: &str) -> Result<()> {
        let Some(sig) = &self.sig else {
            return Err(Error::BadSignature(match self.unsigned_error() {
                Some(e) => format!("unsigned reply (it claims {}: {e})", e.code()),
                None => "reply claims success but carries no signature".into(),
            }));
        };
        if let (Some(event), Some(seq)) = (&self.event, self.seq) {
            return key.verify_event(
                &EventFields {
                    v: self.v,
                    id: self.id,
                    nonce,
                    seq,
                    event,
                    body: self.body.as_deref().map(RawValue::get).unwrap_or(""),
                },
                sig,
            );
        }
        key.verify_reply(
            &ReplyFields {
                v: self.v,
                id: self.id,
                nonce,
                ok: self.ok,
                payload: self.payload(),
            },
            sig,
        )
    }

    /// What an unsigned error reply claims (a server that could not read
    /// the request, or not tell who sent it, cannot sign). Never a reason
    /// to act beyond dropping the connection.
    pub fn unsigned_error(&self) -> Option<Error> {
        if self.sig.is_some() || self.ok || self.is_event() {
            return None;
        }
        let raw = self.error.as_ref()?;
        let e: ErrorBody = serde_json::from_str(raw.get()).ok()?;
        let code = ErrorCode::parse(&e.code).unwrap_or(ErrorCode::Internal);
        Some(Error::new(code, e.message))
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

    const NONCE: &str = "00112233445566ff";

    #[test]
    fn replies_round_trip_signed_and_unsigned() {
        let key = Key::new(b"s");
        let mut out = Vec::new();
        encode_ok(Some(&key), 5, NONCE, "{\"node\":\"a\"}", &mut out);
        let r = Reply::parse(&one_frame(&out)).unwrap();
        r.verify(&key, NONCE).unwrap();
        assert_eq!(r.into_result().unwrap().get(), "{\"node\":\"a\"}");

        let mut out = Vec::new();
        encode_error(None, 0, "", &Error::BadJson("nope \"x\"".into()), &mut out);
        let r = Reply::parse(&one_frame(&out)).unwrap();
        assert!(r.sig.is_none());
        // Unsigned: never verified, but what it claims can be read.
        let e = r.verify(&key, NONCE).unwrap_err();
        assert!(
            e.to_string().contains("unsigned reply (it claims bad_json"),
            "{e}"
        );
        assert_eq!(r.unsigned_error().unwrap().code(), ErrorCode::BadJson);
        let e = r.into_result().unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadJson);
        assert_eq!(e.to_string(), "nope \"x\"");
    }

    #[test]
    fn a_reply_does_not_verify_for_another_request_with_the_same_id() {
        let key = Key::new(b"s");
        let mut out = Vec::new();
        encode_ok(Some(&key), 5, NONCE, "{\"hit\":false}", &mut out);
        let r = Reply::parse(&one_frame(&out)).unwrap();
        let e = r.verify(&key, "00112233445566fe").unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadSignature);
    }

    #[test]
    fn events_round_trip_and_are_bound_to_their_sequence() {
        let key = Key::new(b"s");
        let mut out = Vec::new();
        encode_event(&key, 9, NONCE, 3, "progress", "{\"done\":1}", &mut out);
        let payload = one_frame(&out);
        let r = Reply::parse(&payload).unwrap();
        assert!(r.is_event());
        assert_eq!(
            (r.id, r.seq, r.event.as_deref()),
            (9, Some(3), Some("progress"))
        );
        r.verify(&key, NONCE).unwrap();
        // The same bytes claiming another place in the stream do not verify.
        let moved = String::from_utf8(payload)
            .unwrap()
            .replace("\"seq\":3", "\"seq\":4");
        let r = Reply::parse(moved.as_bytes()).unwrap();
        assert!(r.verify(&key, NONCE).is_err());
    }

    #[test]
    fn a_request_of_another_version_is_refused_naming_version_2() {
        let v1 = br#"{"v":1,"id":3,"type":"sys.ping","ts":1,"nonce":"00112233445566ff","app":"x","body":{},"sig":"00"}"#;
        let r = Request::parse(v1).unwrap_err();
        assert_eq!(r.error.code(), ErrorCode::BadRequest);
        assert!(
            r.error.to_string().contains("wire version 2, got 1"),
            "{}",
            r.error
        );
    }

    #[test]
    fn forged_reply_is_refused() {
        let key = Key::new(b"s");
        let mut out = Vec::new();
        encode_ok(Some(&Key::new(b"other")), 5, NONCE, "{}", &mut out);
        let r = Reply::parse(&one_frame(&out)).unwrap();
        assert_eq!(
            r.verify(&key, NONCE).unwrap_err().code(),
            ErrorCode::BadSignature
        );

        let unsigned_ok = br#"{"v":2,"id":5,"ok":true,"body":{}}"#;
        let r = Reply::parse(unsigned_ok).unwrap();
        assert_eq!(
            r.verify(&key, NONCE).unwrap_err().code(),
            ErrorCode::BadSignature
        );
    }
}
