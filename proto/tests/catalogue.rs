//! The book's message catalogue (`docs/catalogue.md`) is generated from
//! these types: their names, who may send them, their kinds, their doc
//! comments, and the fields of their bodies, replies and events (with each
//! field's own doc comment). This test fails when the page and the types
//! disagree; `DSF_BLESS=1 cargo test -p dsf-proto --test catalogue` writes
//! the page again.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use dsf_proto::*;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value};

/// One type's page section, made from `M`.
struct Entry {
    ty: Type,
    doc: &'static str,
    body: Value,
    reply: Value,
    event: Value,
}

fn entry<M: Message>() -> Entry
where
    M::Body: JsonSchema,
    M::Reply: JsonSchema,
    M::Event: JsonSchema,
{
    let mut generator = SchemaGenerator::default();
    let body = generator.subschema_for::<M::Body>().to_value();
    let reply = generator.subschema_for::<M::Reply>().to_value();
    let event = generator.subschema_for::<M::Event>().to_value();
    let defs = Value::Object(generator.take_definitions(true).into_iter().collect());
    let wrap = |v: Value| serde_json::json!({ "schema": v, "defs": defs.clone() });
    Entry {
        ty: M::TYPE,
        doc: M::DOC,
        body: wrap(body),
        reply: wrap(reply),
        event: wrap(event),
    }
}

/// Every type dsf ships, in the catalogue's order.
fn entries() -> Vec<Entry> {
    vec![
        entry::<sys::Ping>(),
        entry::<sys::Cancel>(),
        entry::<sys::Wake>(),
        entry::<user::Register>(),
        entry::<user::Create>(),
        entry::<user::Login>(),
        entry::<user::Logout>(),
        entry::<user::Me>(),
        entry::<user::SetRole>(),
        entry::<audit::List>(),
        entry::<blacklist::Add>(),
        entry::<blacklist::Get>(),
        entry::<blacklist::Update>(),
        entry::<blacklist::Remove>(),
        entry::<blacklist::List>(),
        entry::<gate::Check>(),
        entry::<gate::History>(),
        entry::<task::Submit>(),
        entry::<task::Claim>(),
        entry::<task::Heartbeat>(),
        entry::<task::Complete>(),
        entry::<task::Fail>(),
        entry::<task::Finish>(),
        entry::<task::Status>(),
        entry::<task::GetResults>(),
        entry::<task::Cancel>(),
        entry::<task::Watch>(),
        entry::<msg::Send>(),
        entry::<msg::Subscribe>(),
        entry::<msg::Ack>(),
        entry::<msg::GetHistory>(),
        entry::<msg::Join>(),
        entry::<msg::Leave>(),
        entry::<msg::Notify>(),
        entry::<cluster::NodeHeartbeat>(),
        entry::<cluster::NodeLeave>(),
        entry::<cluster::Status>(),
        entry::<lb::Resolve>(),
        entry::<lb::GetView>(),
        entry::<lb::GetStats>(),
        entry::<cluster::SetView>(),
        entry::<lb::Pins>(),
        entry::<lb::Unpin>(),
    ]
}

/// Which server answers a type.
fn server(name: &str) -> &'static str {
    match name.split('.').next().unwrap_or_default() {
        "node" | "cluster" => "collector",
        "lb" => "lb-server",
        _ => "app-server",
    }
}

fn auth(a: Auth) -> &'static str {
    match a {
        Auth::App => "an app key",
        Auth::AppOrUser => "an app key; a session is optional (the handler then knows the user)",
        Auth::Viewer => "a session of a viewer or above",
        Auth::Operator => "a session of an operator or admin",
        Auth::Admin => "an admin's session",
        Auth::Cluster => "the cluster secret",
        Auth::Node => "a node's own key (or the cluster secret)",
        Auth::Peer => "the peer secret (another app server)",
    }
}

fn kind(t: &Type) -> String {
    match t.kind {
        Kind::Read => "read: sent again freely".into(),
        Kind::Write => "write: runs once on any node".into(),
        Kind::Stream { event } => format!("stream: `{event}` events, then the reply"),
    }
}

/// A schema resolved through `$ref` to its definition, with the name it
/// was defined under.
fn resolve<'a>(s: &'a Value, defs: &'a Value) -> (Option<&'a str>, &'a Value) {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap_or(r);
            (Some(name), &defs[name])
        }
        None => (None, s),
    }
}

/// A short name for a schema's type, collecting the named objects it uses
/// (described after the table).
fn type_name(s: &Value, defs: &Value, more: &mut Vec<String>) -> String {
    if s == &Value::Bool(true) || s.as_object().is_some_and(Map::is_empty) {
        return "any JSON".into();
    }
    let (name, d) = resolve(s, defs);
    if let Some(values) = d.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    if let Some(alts) = d
        .get("anyOf")
        .or_else(|| d.get("oneOf"))
        .and_then(Value::as_array)
    {
        let names: Vec<String> = alts
            .iter()
            .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
            .map(|a| match a.get("const") {
                Some(c) => format!("`{c}`"),
                None => type_name(a, defs, more),
            })
            .collect();
        return names.join(" \\| ");
    }
    let ty = match d.get("type") {
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        Some(Value::String(t)) => t.as_str(),
        _ => "",
    };
    match ty {
        "array" => format!("list of {}", type_name(&d["items"], defs, more)),
        "object" if d.get("properties").is_some() => {
            let name = name.unwrap_or("object").to_string();
            if !more.contains(&name) {
                more.push(name.clone());
            }
            format!("[{name}](#{})", anchor_of_def(&name))
        }
        "object" => "object".into(),
        "" => "any JSON".into(),
        t => t.into(),
    }
}

fn anchor_of_def(name: &str) -> String {
    format!("def-{}", name.to_lowercase())
}

/// A one-line description: the first paragraph of a doc comment, on one
/// line, with `|` escaped for a table.
fn one_line(doc: &str) -> String {
    let first = doc.split("\n\n").next().unwrap_or_default();
    plain(&first.split_whitespace().collect::<Vec<_>>().join(" ")).replace('|', "\\|")
}

/// The limits the doc comments name, with their values from the crate.
fn constants() -> Vec<(&'static str, String)> {
    let kib = |n: usize| format!("{} KiB", n / 1024);
    vec![
        ("LIMIT_MAX", LIMIT_MAX.to_string()),
        ("WAKE_TOPICS_MAX", sys::WAKE_TOPICS_MAX.to_string()),
        ("TOPIC_MAX", sys::TOPIC_MAX.to_string()),
        ("DEFAULT_WEIGHT", cluster::DEFAULT_WEIGHT.to_string()),
        ("MAX_WEIGHT", cluster::MAX_WEIGHT.to_string()),
        ("MAX_KEY", lb::MAX_KEY.to_string()),
        ("MAX_EXCLUDE", lb::MAX_EXCLUDE.to_string()),
        ("PINS_MAX", lb::PINS_MAX.to_string()),
        ("SUBMIT_MAX", task::SUBMIT_MAX.to_string()),
        ("PAYLOAD_MAX", kib(task::PAYLOAD_MAX)),
        ("RESULT_MAX", kib(task::RESULT_MAX)),
        ("CLAIM_MAX", task::CLAIM_MAX.to_string()),
        ("LEASE_MIN_MS", task::LEASE_MIN_MS.to_string()),
        ("LEASE_MAX_MS", task::LEASE_MAX_MS.to_string()),
        ("WAIT_MAX_MS", task::WAIT_MAX_MS.to_string()),
        (
            "DEFAULT_MAX_ATTEMPTS",
            task::DEFAULT_MAX_ATTEMPTS.to_string(),
        ),
        ("BODY_MAX", kib(msg::BODY_MAX)),
        ("CREDIT_DEFAULT", msg::CREDIT_DEFAULT.to_string()),
        ("CREDIT_MAX", msg::CREDIT_MAX.to_string()),
        ("ROOM_MEMBERS_MAX", msg::ROOM_MEMBERS_MAX.to_string()),
        ("ROOM_MAX", msg::ROOM_MAX.to_string()),
        ("HISTORY_DEFAULT", msg::HISTORY_DEFAULT.to_string()),
    ]
}

/// A doc comment without rustdoc's links to items (``[`Name`]`` becomes
/// `` `Name` ``), which mean nothing in the book.
fn plain(doc: &str) -> String {
    let mut out = String::with_capacity(doc.len());
    let mut rest = doc;
    while let Some(i) = rest.find("[`") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find("`]") {
            Some(j) if !after[j + 2..].starts_with('(') => {
                out.push_str(&after[..j + 1]);
                rest = &after[j + 2..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    // A limit named by its constant gets its value too.
    for (name, value) in constants() {
        out = out.replace(&format!("`{name}`"), &format!("{value} (`{name}`)"));
    }
    // What brackets remain (`[default: 100]`) are text, not links; inside
    // code they stay as they are.
    let mut escaped = String::with_capacity(out.len());
    for (i, part) in out.split('`').enumerate() {
        if i > 0 {
            escaped.push('`');
        }
        if i % 2 == 0 {
            escaped.push_str(&part.replace('[', "\\[").replace(']', "\\]"));
        } else {
            escaped.push_str(part);
        }
    }
    escaped
}

/// A table of an object's fields, or a sentence for what is not an object.
fn fields(out: &mut String, s: &Value, defs: &Value, more: &mut Vec<String>) {
    let (_, d) = resolve(s, defs);
    let Some(props) = d.get("properties").and_then(Value::as_object) else {
        if d.get("additionalProperties") == Some(&Value::Bool(false)) {
            out.push_str("`{}`\n");
        } else {
            let _ = writeln!(out, "{}", type_name(s, defs, more));
        }
        return;
    };
    if props.is_empty() {
        out.push_str("`{}`\n");
        return;
    }
    let required: BTreeSet<&str> = d
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("\n\n| field | type | | |\n|---|---|---|---|\n");
    for (name, p) in props {
        let doc = p
            .get("description")
            .and_then(Value::as_str)
            .or_else(|| {
                resolve(p, defs)
                    .1
                    .get("description")
                    .and_then(Value::as_str)
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{name}` | {} | {} | {} |",
            type_name(p, defs, more),
            if required.contains(name.as_str()) {
                "required"
            } else {
                "optional"
            },
            one_line(doc)
        );
    }
}

fn render() -> String {
    let entries = entries();
    let mut out = String::new();
    out.push_str(
        "# The message catalogue\n\n\
         <!-- Generated from dsf-proto's types by proto/tests/catalogue.rs; do not edit.\n     \
         DSF_BLESS=1 cargo test -p dsf-proto --test catalogue writes it again. -->\n\n\
         Every message type dsf ships: who may send it, whether it is a read, a write\n\
         that runs once or a stream, and the fields of its body, its reply and (for a\n\
         stream) its events. This page is generated from the types in `dsf-proto`, field\n\
         descriptions included, and a test fails when the two disagree. How a message\n\
         travels (frames, envelopes, signatures, error codes) is in\n\
         [the wire specification](WIRE.md). A server answers only the types of the\n\
         services it runs (`unknown_type`, naming what it serves, for the rest):\n\
         `app-server` runs all of its own; `orders-server` runs `sys.*`, `peer.wake`, the\n\
         accounts and its own `order.*`.\n\n",
    );
    out.push_str("| type | server | who may send it | kind |\n|---|---|---|---|\n");
    for e in &entries {
        let _ = writeln!(
            out,
            "| [`{}`](#{}) | {} | {} | {} |",
            e.ty.name,
            e.ty.name.replace('.', "").to_lowercase(),
            server(e.ty.name),
            e.ty.auth,
            e.ty.kind_str()
        );
    }
    for e in &entries {
        let mut more = Vec::new();
        let _ = writeln!(out, "\n## {}\n", e.ty.name);
        let _ = writeln!(
            out,
            "*{}* · served by `{}` · {}\n",
            kind(&e.ty),
            server(e.ty.name),
            auth(e.ty.auth)
        );
        let doc: Vec<&str> = e.doc.lines().map(str::trim).collect();
        let _ = writeln!(out, "{}\n", plain(doc.join("\n").trim()));
        out.push_str("**Body:** ");
        fields(&mut out, &e.body["schema"], &e.body["defs"], &mut more);
        out.push_str("\n**Reply:** ");
        fields(&mut out, &e.reply["schema"], &e.reply["defs"], &mut more);
        if let Some(event) = e.ty.event() {
            let _ = write!(out, "\n**Event `{event}`:** ");
            fields(&mut out, &e.event["schema"], &e.event["defs"], &mut more);
        }
        let defs = &e.body["defs"];
        let mut i = 0;
        while i < more.len() {
            let name = more[i].clone();
            let _ = write!(out, "\n<a id=\"{}\"></a>**{name}:** ", anchor_of_def(&name));
            let mut nested = Vec::new();
            fields(
                &mut out,
                &serde_json::json!({ "$ref": format!("#/$defs/{name}") }),
                defs,
                &mut nested,
            );
            for n in nested {
                if !more.contains(&n) {
                    more.push(n);
                }
            }
            i += 1;
        }
    }
    out
}

#[test]
fn every_shipped_type_is_on_the_page() {
    let listed: BTreeSet<&str> = entries().iter().map(|e| e.ty.name).collect();
    let shipped: BTreeSet<&str> = CATALOGUE.iter().map(|t| t.name).collect();
    assert_eq!(
        listed, shipped,
        "proto/tests/catalogue.rs lists other types than dsf_proto::CATALOGUE"
    );
}

#[test]
fn every_type_has_a_doc_comment() {
    for e in entries() {
        assert!(!e.doc.trim().is_empty(), "{} has no doc comment", e.ty.name);
    }
}

#[test]
fn the_book_page_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/catalogue.md");
    let page = render();
    if std::env::var_os("DSF_BLESS").is_some() {
        std::fs::write(&path, &page).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stored == page,
        "docs/catalogue.md does not match the types in dsf-proto; run \
         DSF_BLESS=1 cargo test -p dsf-proto --test catalogue and commit the page"
    );
}
