//! The secrets requests are signed with, each under its own app id:
//!
//! - app keys, from a TOML file (mode 0600), under the ids the file names;
//! - the cluster secret, under `cluster`: collectors and balancers
//!   (`lb.set_view`, the pins admin), and heartbeats where no node keys are
//!   used;
//! - a node key, under `node:<id>`: one app server's heartbeats, which may
//!   then speak only for node `<id>` (the collector holds every node's, in
//!   its `--node-keys` file);
//! - the peer secret, under `peer`: `peer.notify` between app servers.
//!
//! An app server given its node key and the peer secret holds nothing that
//! signs `lb.set_view`.
//!
//! An entry `app_id = "secret"` may send every message type. A table
//! scopes the key to the types it lists, every other type being
//! `forbidden`:
//!
//! ```toml
//! [gate-north]
//! secret = "…"
//! allow = ["gate.check", "sys.ping"]
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::config::Secret;
use crate::wire::sign::Key;

/// The app id cluster-internal traffic is signed under.
pub const CLUSTER_APP: &str = "cluster";

/// Environment variable holding the cluster secret.
pub const CLUSTER_SECRET_ENV: &str = "DSF_CLUSTER_SECRET";

/// The app id app servers sign `peer.notify` under.
pub const PEER_APP: &str = "peer";

/// Environment variable holding the peer secret.
pub const PEER_SECRET_ENV: &str = "DSF_PEER_SECRET";

/// Environment variable holding an app server's node key.
pub const NODE_KEY_ENV: &str = "DSF_NODE_KEY";

/// What a node key's app id starts with: `node:<id>`.
pub const NODE_APP_PREFIX: &str = "node:";

/// The app id node `id`'s heartbeats are signed under.
pub fn node_app(id: &str) -> String {
    format!("{NODE_APP_PREFIX}{id}")
}

/// Environment variable holding a client's app secret.
pub const APP_SECRET_ENV: &str = "DSF_APP_SECRET";

/// Why keys could not be loaded; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("{path} is not a TOML table of app_id = \"secret\": {reason}")]
    Format { path: String, reason: String },
    #[error("{path}: app {app:?} has an empty secret")]
    EmptySecret { path: String, app: String },
    #[error("{path}: app id {app:?} is {len} characters; at most {MAX_APP_ID} (it is stored with every write)")]
    AppIdTooLong {
        path: String,
        app: String,
        len: usize,
    },
    #[error("{path}: app id {app:?} is reserved (\"cluster\" for the cluster secret, \"peer\" for the peer secret, \"node:…\" for node keys)")]
    ReservedApp { path: String, app: String },
    #[error("no cluster secret: set DSF_CLUSTER_SECRET or pass --cluster-secret-file FILE (a file of mode 0600 holding the secret)")]
    NoClusterSecret,
}

/// Longest app id: the column writes that run once are recorded under.
pub const MAX_APP_ID: usize = 64;

/// The message types a scoped key may send.
type Allow = Arc<BTreeSet<String>>;

/// Keys by app id, each with the message types it may send (`None`: all).
#[derive(Debug, Clone, Default)]
pub struct AppKeys {
    keys: HashMap<String, (Key, Option<Allow>), foldhash::fast::RandomState>,
}

// === impl AppKeys ===

impl AppKeys {
    /// An empty set.
    pub fn new() -> AppKeys {
        AppKeys::default()
    }

    /// Adds or replaces one app's secret, for every message type.
    pub fn insert(&mut self, app: &str, secret: &[u8]) {
        self.keys.insert(app.to_string(), (Key::new(secret), None));
    }

    /// Adds or replaces one app's secret, scoped to the types in `allow`.
    pub fn insert_scoped(&mut self, app: &str, secret: &[u8], allow: &[&str]) {
        let allow = allow.iter().map(|s| s.to_string()).collect();
        self.keys
            .insert(app.to_string(), (Key::new(secret), Some(Arc::new(allow))));
    }

    /// Whether `app`'s key may send `kind`, and if not, the types it may.
    pub fn scope(&self, app: &str, kind: &str) -> Result<(), String> {
        match self.keys.get(app).and_then(|(_, allow)| allow.as_ref()) {
            Some(allow) if !allow.contains(kind) => Err(allow
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")),
            _ => Ok(()),
        }
    }

    /// Every scoped key, with the types it may send.
    pub fn scoped(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &str>)> + '_ {
        self.keys.iter().filter_map(|(app, (_, allow))| {
            let allow = allow.as_ref()?;
            Some((app.as_str(), allow.iter().map(String::as_str)))
        })
    }

    /// Checks that every type a scoped key allows is one `serves`: a
    /// server's assembled catalogue. The error names the key and the type.
    pub fn check_scopes(&self, serves: impl Fn(&str) -> bool) -> Result<(), String> {
        let mut unknown: Vec<String> = Vec::new();
        for (app, allow) in self.scoped() {
            for kind in allow {
                if !serves(kind) {
                    unknown.push(format!("[{app}] allows {kind:?}"));
                }
            }
        }
        unknown.sort();
        match unknown.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "--app-keys: {}, which no service of this server declares (a typo, or a service this server does not run)",
                unknown.join(", ")
            )),
        }
    }

    /// Adds the cluster secret under [`CLUSTER_APP`].
    pub fn with_cluster_secret(mut self, secret: &[u8]) -> AppKeys {
        self.insert(CLUSTER_APP, secret);
        self
    }

    /// The key of `app`, if known.
    pub fn get(&self, app: &str) -> Option<&Key> {
        self.keys.get(app).map(|(k, _)| k)
    }

    /// Number of apps known.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no app is known.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Loads `app_id = "secret"` pairs from a TOML file that only its owner
    /// may read.
    pub fn load(path: &Path) -> Result<AppKeys, KeyError> {
        let shown = path.display().to_string();
        let table = read_table(path)?;
        let mut keys = AppKeys::new();
        for (app, value) in table {
            let format = |reason: String| KeyError::Format {
                path: shown.clone(),
                reason,
            };
            let (secret, allow) = match &value {
                toml::Value::String(s) => (s.as_str(), None),
                toml::Value::Table(t) => scoped(&app, t).map_err(format)?,
                _ => {
                    return Err(format(format!(
                        "the value of {app:?} must be a string (the secret), or a table of `secret` and `allow`"
                    )))
                }
            };
            if secret.is_empty() {
                return Err(KeyError::EmptySecret { path: shown, app });
            }
            if app == CLUSTER_APP || app == PEER_APP || app.starts_with(NODE_APP_PREFIX) {
                return Err(KeyError::ReservedApp { path: shown, app });
            }
            let len = app.chars().count();
            if len > MAX_APP_ID {
                return Err(KeyError::AppIdTooLong {
                    path: shown,
                    app,
                    len,
                });
            }
            match allow {
                Some(allow) => keys.insert_scoped(&app, secret.as_bytes(), &allow),
                None => keys.insert(&app, secret.as_bytes()),
            }
        }
        Ok(keys)
    }

    /// Loads a collector's node keys, `node_id = "secret"` (mode 0600),
    /// each under the app id `node:<node_id>`.
    pub fn load_node_keys(path: &Path) -> Result<AppKeys, KeyError> {
        let shown = path.display().to_string();
        let table = read_table(path)?;
        let mut keys = AppKeys::new();
        for (id, value) in table {
            let Some(secret) = value.as_str() else {
                return Err(KeyError::Format {
                    path: shown,
                    reason: format!("the value of {id:?} must be a string, that node's key"),
                });
            };
            if secret.is_empty() {
                return Err(KeyError::EmptySecret {
                    path: shown,
                    app: id,
                });
            }
            let app = node_app(&id);
            let len = app.chars().count();
            if len > MAX_APP_ID {
                return Err(KeyError::AppIdTooLong {
                    path: shown,
                    app,
                    len,
                });
            }
            keys.insert(&app, secret.as_bytes());
        }
        Ok(keys)
    }

    /// Adds every key of `other`.
    pub fn extend(&mut self, other: AppKeys) {
        self.keys.extend(other.keys);
    }
}

/// A private TOML file's table.
fn read_table(path: &Path) -> Result<toml::Table, KeyError> {
    read_private(path)?
        .parse()
        .map_err(|e: toml::de::Error| KeyError::Format {
            path: path.display().to_string(),
            reason: e.message().to_string(),
        })
}

/// A secret from `file` (mode 0600, trailing newline dropped) if given,
/// else from the variable `env`; `None` when neither holds one. Never from
/// a flag's value: flags show in `ps`.
pub fn secret_from(file: Option<&Path>, env: &str) -> Result<Option<Secret>, KeyError> {
    let secret = match file {
        Some(path) => read_private(path)?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        None => std::env::var(env).unwrap_or_default(),
    };
    Ok((!secret.is_empty()).then(|| Secret::new(secret)))
}

/// The `secret` and `allow` of a scoped key's table.
fn scoped<'t>(app: &str, t: &'t toml::Table) -> Result<(&'t str, Option<Vec<&'t str>>), String> {
    for k in t.keys() {
        if k != "secret" && k != "allow" {
            return Err(format!(
                "[{app}]: unexpected key `{k}`; a scoped key has `secret` and `allow`"
            ));
        }
    }
    let secret = t
        .get("secret")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| format!("[{app}]: `secret` must be a string"))?;
    let list = t
        .get("allow")
        .and_then(toml::Value::as_array)
        .ok_or_else(|| {
            format!("[{app}]: `allow` must list the message types the key may send, e.g. [\"gate.check\"]")
        })?;
    let mut allow = Vec::with_capacity(list.len());
    for v in list {
        let kind = v
            .as_str()
            .ok_or_else(|| format!("[{app}]: `allow` holds message type names (strings)"))?;
        // Whether the type exists is the server's to say, once its
        // catalogue is assembled from its services (`check_scopes`).
        if !is_type_name(kind) {
            return Err(format!(
                "[{app}]: `allow` names {kind:?}, which is no message type name (group.verb, like gate.check)"
            ));
        }
        allow.push(kind);
    }
    if allow.is_empty() {
        return Err(format!(
            "[{app}]: `allow` is empty, so the key could send nothing"
        ));
    }
    Ok((secret, Some(allow)))
}

/// Whether `s` has the shape of a message type's name: `group.verb`, of
/// lower-case letters, digits and `_`.
fn is_type_name(s: &str) -> bool {
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    s.len() <= 64 && s.split('.').count() >= 2 && s.split('.').all(word)
}

/// Reads a secrets file, refusing one that group or others may read.
pub fn read_private(path: &Path) -> Result<String, KeyError> {
    let shown = path.display().to_string();
    let read_err = |source| KeyError::Read {
        path: shown.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: shown, mode });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    std::fs::read_to_string(path).map_err(read_err)
}

/// The cluster secret from `file` if given, else from `DSF_CLUSTER_SECRET`.
/// Never from a flag value: flags show up in `ps`.
pub fn cluster_secret(file: Option<&Path>) -> Result<Secret, KeyError> {
    secret_from(file, CLUSTER_SECRET_ENV)?.ok_or(KeyError::NoClusterSecret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dsf-keys-{}", crate::wire::new_nonce()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn loads_a_private_table_of_secrets() {
        let d = tempdir();
        let p = write(&d, "keys.toml", "cli = \"s1\"\ngate = \"s2\"\n", 0o600);
        let keys = AppKeys::load(&p).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.get("cli").is_some() && keys.get("nope").is_none());
    }

    #[test]
    fn a_table_scopes_a_key_to_the_types_it_allows() {
        let d = tempdir();
        let text =
            "cli = \"s1\"\n[gate-north]\nsecret = \"s2\"\nallow = [\"gate.check\", \"sys.ping\"]\n";
        let keys = AppKeys::load(&write(&d, "keys.toml", text, 0o600)).unwrap();
        assert!(keys.get("gate-north").is_some());
        assert_eq!(keys.scope("gate-north", "gate.check"), Ok(()));
        assert_eq!(
            keys.scope("gate-north", "blacklist.list"),
            Err("gate.check, sys.ping".to_string())
        );
        assert_eq!(
            keys.scope("cli", "blacklist.list"),
            Ok(()),
            "a string entry may send anything"
        );
        for (text, want) in [
            ("[g]\nsecret = \"s\"", "`allow` must list"),
            ("[g]\nsecret = \"s\"\nallow = []", "`allow` is empty"),
            (
                "[g]\nsecret = \"s\"\nallow = [\"gate check\"]",
                "\"gate check\", which is no message type name",
            ),
            ("[g]\nallow = [\"sys.ping\"]", "`secret` must be a string"),
            (
                "[g]\nsecret = \"s\"\nallow = [\"sys.ping\"]\nalow = 1",
                "unexpected key `alow`",
            ),
        ] {
            let msg = AppKeys::load(&write(&d, "k.toml", text, 0o600))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(want), "{text}: {msg}");
        }
    }

    #[test]
    fn a_scope_naming_a_type_no_service_declares_is_refused_by_the_server() {
        let d = tempdir();
        let text = "[g]\nsecret = \"s\"\nallow = [\"gate.chek\", \"sys.ping\"]\n";
        let keys = AppKeys::load(&write(&d, "keys.toml", text, 0o600)).unwrap();
        let serves = |k: &str| k == "sys.ping" || k == "gate.check";
        let e = keys.check_scopes(serves).unwrap_err();
        assert!(e.contains("[g] allows \"gate.chek\""), "{e}");
        assert!(!e.contains("sys.ping"), "{e}");
        let mut fine = AppKeys::new();
        fine.insert_scoped("g", b"s", &["sys.ping"]);
        fine.insert("cli", b"t");
        assert_eq!(fine.check_scopes(serves), Ok(()));
    }

    #[test]
    fn refuses_files_others_can_read_and_says_how_to_fix() {
        let d = tempdir();
        let p = write(&d, "keys.toml", "cli = \"s1\"\n", 0o644);
        let msg = AppKeys::load(&p).unwrap_err().to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
    }

    #[test]
    fn refuses_malformed_tables() {
        let d = tempdir();
        let long = format!("{} = \"s\"", "a".repeat(65));
        for (text, want) in [
            (long.as_str(), "at most 64"),
            ("cli = 3", "must be a string"),
            ("cli = \"\"", "empty secret"),
            ("cluster = \"x\"", "reserved"),
            ("= broken", "TOML"),
        ] {
            let p = write(&d, "k.toml", text, 0o600);
            let msg = AppKeys::load(&p).unwrap_err().to_string();
            assert!(msg.contains(want), "{text}: {msg}");
        }
    }

    #[test]
    fn cluster_secret_comes_from_a_private_file() {
        let d = tempdir();
        let p = write(&d, "secret", "hunter2\n", 0o600);
        assert_eq!(cluster_secret(Some(&p)).unwrap().expose(), b"hunter2");
        let empty = write(&d, "empty", "", 0o600);
        assert!(matches!(
            cluster_secret(Some(&empty)),
            Err(KeyError::NoClusterSecret)
        ));
    }
}
