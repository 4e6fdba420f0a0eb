//! The wire bench's paths as a plain program, for instruction counts under
//! callgrind, which a machine shared with other work cannot skew:
//!
//! ```text
//! cargo bench -p dsf-common --bench wire_profile --no-run
//! valgrind --tool=callgrind --toggle-collect='wire_profile::run_*' \
//!     target/release/deps/wire_profile-* admit 20000
//! ```
//!
//! Divide the collected instructions by the count. Paths: `admit` (frame
//! decode + verify + parse + replay guard), `parse`, `parse_verify`, `guard`,
//! `json_value` and `hmac` (the peers).

use std::hint::black_box;
use std::time::Duration;

use dsf_common::wire::frame::HEADER_LEN;
use dsf_common::wire::{Admission, AppKeys, FrameDecoder, Key, ReplayGuard, Request};
use hmac::{Hmac, Mac};
use support::{framed_request, NOW, SECRET};

mod support;

#[inline(never)]
fn run_admit(adm: &Admission, frames: &[Vec<u8>]) {
    let mut dec = FrameDecoder::new(dsf_common::wire::DEFAULT_MAX_FRAME);
    for f in frames {
        dec.push(f);
        let payload = dec.next_frame().unwrap().unwrap();
        black_box(adm.admit_at(payload, NOW).unwrap());
    }
}

#[inline(never)]
fn run_parse(payloads: &[&[u8]]) {
    for p in payloads {
        black_box(Request::parse(p).unwrap());
    }
}

#[inline(never)]
fn run_parse_verify(key: &Key, payloads: &[&[u8]]) {
    for p in payloads {
        let req = Request::parse(p).unwrap();
        key.verify_request(&req.signed_fields(), &req.sig).unwrap();
        black_box(req);
    }
}

#[inline(never)]
fn run_guard(guard: &mut ReplayGuard, nonces: &[String]) {
    for n in nonces {
        guard.admit("gate", n, NOW, NOW).unwrap();
    }
}

#[inline(never)]
fn run_json_value(payloads: &[&[u8]]) {
    for p in payloads {
        black_box(serde_json::from_slice::<serde_json::Value>(p).unwrap());
    }
}

#[inline(never)]
fn run_hmac(mac: &Hmac<md5::Md5>, payloads: &[&[u8]]) {
    for p in payloads {
        let mut m = mac.clone();
        m.update(p);
        black_box(m.finalize().into_bytes());
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let what = args.next().unwrap_or_else(|| "admit".into());
    let count: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let key = Key::new(SECRET);
    let frames: Vec<Vec<u8>> = (0..count).map(|n| framed_request(&key, n, 200)).collect();
    let payloads: Vec<&[u8]> = frames.iter().map(|f| &f[HEADER_LEN..]).collect();
    match what.as_str() {
        "admit" => {
            let mut keys = AppKeys::new();
            keys.insert("gate", SECRET);
            let adm = Admission::new(keys, ReplayGuard::new(Duration::from_secs(60), 1 << 20));
            run_admit(&adm, &frames);
        }
        "parse" => run_parse(&payloads),
        "parse_verify" => run_parse_verify(&key, &payloads),
        "guard" => {
            let nonces: Vec<String> = (0..count).map(|n| format!("{n:016x}")).collect();
            let mut guard = ReplayGuard::new(Duration::from_secs(60), 1 << 20);
            run_guard(&mut guard, &nonces);
        }
        "json_value" => run_json_value(&payloads),
        "hmac" => run_hmac(&Hmac::new_from_slice(SECRET).unwrap(), &payloads),
        other => panic!("unknown path {other:?}"),
    }
}
