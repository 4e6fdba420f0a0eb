//! Writes the seed corpus under `fuzz/seeds/<target>/`: valid signed
//! requests (framed, in a few splits) and a few near misses.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin make_seeds`

use std::path::Path;

use dsf_common::wire::envelope::{encode_ok, encode_request_at, OutgoingRequest};
use dsf_common::wire::frame::HEADER_LEN;
use dsf_common::wire::{encode_error, Admission, Key, ReplayGuard};
use dsf_common::Error;
use dsf_fuzz::{key, keys, APP, NOW_MS};

fn request(
    key: &Key,
    id: u64,
    kind: &str,
    app: &str,
    token: Option<&str>,
    body: &str,
    ts: u64,
    nonce: &str,
) -> Vec<u8> {
    let mut out = Vec::new();
    let req = OutgoingRequest {
        id,
        kind,
        app,
        token,
        body,
    };
    encode_request_at(key, &req, ts, nonce, &mut out);
    out
}

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let k = key();
    let good = [
        request(&k, 1, "sys.ping", APP, None, "{}", NOW_MS, "0011223344556677"),
        request(&k, 42, "blacklist.add", APP, Some("tok3n"), "{\"id_card\":\"110101199003077777\",\"name\":\"Li Lei\",\"reason\":\"fraud\"}", NOW_MS - 1_000, "9f2c0011aabbccdd"),
        request(&k, 7, "lb.resolve", APP, None, "{ \"key\" : \"user-42\", \"exclude\": [\"n1\"] }", NOW_MS + 5, "deadbeefdeadbeef"),
        request(&Key::new(b"fuzz-cluster"), 9, "node.heartbeat", "cluster", None, "{\"id\":\"n1\",\"addr\":\"127.0.0.1:7000\",\"weight\":1,\"state\":\"up\",\"stats\":{}}", NOW_MS, "0123456789abcdef0123456789abcdef"),
    ];
    let near = [
        request(
            &Key::new(b"wrong"),
            2,
            "sys.ping",
            APP,
            None,
            "{}",
            NOW_MS,
            "0011223344556677",
        ),
        request(
            &k,
            3,
            "sys.ping",
            APP,
            None,
            "{}",
            NOW_MS - 120_000,
            "0011223344556678",
        ),
        request(
            &k,
            4,
            "sys.ping",
            "nobody",
            None,
            "{}",
            NOW_MS,
            "0011223344556679",
        ),
        request(&k, 5, "sys.ping", APP, None, "[]", NOW_MS, "short"),
    ];
    // The seeds are only useful if the valid ones get all the way through.
    let admission = Admission::new(keys(), ReplayGuard::default());
    for f in &good {
        if let Err(r) = admission.admit_at(&f[HEADER_LEN..], NOW_MS) {
            panic!("seed refused: {:?}", r.rejection);
        }
    }
    for f in &near {
        assert!(admission.admit_at(&f[HEADER_LEN..], NOW_MS).is_err());
    }

    let mut replies = Vec::new();
    encode_ok(Some(&k), 1, "00112233445566ff", "{\"node\":\"n1\"}", &mut replies);
    encode_error(
        Some(&k),
        2,
        "00112233445566fe",
        &Error::bad_request("body: missing field `name`"),
        &mut replies,
    );
    encode_error(
        None,
        0,
        "",
        &Error::BadJson("frame is not valid JSON".into()),
        &mut replies,
    );

    // frames_admission: byte 0 = number of chunk-size bytes, then sizes, then the stream.
    let dir = root.join("frames_admission");
    std::fs::create_dir_all(&dir)?;
    let mut n = 0;
    let mut write = |dir: &Path, bytes: Vec<u8>| -> std::io::Result<()> {
        n += 1;
        std::fs::write(dir.join(format!("seed-{n:02}")), bytes)
    };
    for (i, f) in good.iter().chain(near.iter()).enumerate() {
        let mut s = if i % 2 == 0 {
            vec![0]
        } else {
            vec![3, 1, 5, 0]
        };
        s.extend_from_slice(f);
        write(&dir, s)?;
    }
    // A replayed request: the same frame twice in one stream.
    let mut s = vec![2, 3, 17];
    s.extend_from_slice(&good[0]);
    s.extend_from_slice(&good[0]);
    write(&dir, s)?;
    // Everything back to back, then a frame above the cap.
    let mut s = vec![1, 64];
    for f in good.iter().chain(near.iter()) {
        s.extend_from_slice(f);
    }
    s.extend_from_slice(&replies);
    s.extend_from_slice(&[0, 1, 0, 0]);
    write(&dir, s)?;

    // request_parse: one frame's payload, no header.
    let dir = root.join("request_parse");
    std::fs::create_dir_all(&dir)?;
    for f in good.iter().chain(near.iter()) {
        write(&dir, f[HEADER_LEN..].to_vec())?;
    }
    write(&dir, b"{\"v\":1,\"id\":9}".to_vec())?;
    write(&dir, b"[1,2]".to_vec())?;
    println!("wrote {} seeds under {}", n, root.display());
    Ok(())
}
