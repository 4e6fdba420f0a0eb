//! The session `client login` saves and later commands attach: a small
//! JSON file readable only by its owner, kept per cluster so that a token
//! made on one cluster is never sent to another: at `DSF_SESSION_FILE`
//! when set, else `$XDG_CONFIG_HOME/dsf/sessions/<cluster>`
//! (`~/.config/dsf/sessions/…`), the cluster named by the balancers the
//! client asks (or the node it talks to with `--node`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Environment variable overriding where the session is kept.
pub const SESSION_FILE_ENV: &str = "DSF_SESSION_FILE";

/// What is saved after a login.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The token attached to calls.
    pub token: String,
    /// The user name (also the default routing key).
    pub user: String,
    /// When the token expires, as the server gave it.
    #[serde(default)]
    pub expires_at: serde_json::Value,
}

/// Where the session of `cluster` lives ([`cluster_key`]):
/// `DSF_SESSION_FILE`, else a file of its own in the user's config dir.
pub fn path_for(cluster: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(SESSION_FILE_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    dirs::config_dir()
        .map(|d| d.join("dsf").join("sessions").join(file_name(cluster)))
        .ok_or_else(|| {
            Error::Config(format!(
                "cannot find a config directory for the session: set {SESSION_FILE_ENV}=FILE"
            ))
        })
}

/// What names a cluster for its sessions: the node the client talks to
/// (`--node`), else its balancers, in any order.
pub fn cluster_key(balancers: &[String], node: Option<&str>) -> String {
    if let Some(node) = node {
        return format!("node {node}");
    }
    let mut lbs: Vec<&str> = balancers.iter().map(String::as_str).collect();
    lbs.sort_unstable();
    lbs.dedup();
    lbs.join(",")
}

/// `key` as a file name: letters, digits, `.` and `-` kept, the rest `_`.
fn file_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

// === impl Session ===

impl Session {
    /// Reads the session at `path`; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Session>> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::io(
                    format!("cannot read session {}", path.display()),
                    e,
                ))
            }
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            Error::Config(format!(
                "session file {} is damaged ({e}); delete it and run `client login NAME`",
                path.display()
            ))
        })
    }

    /// Writes the session to `path` with mode 0600, creating its directory
    /// (mode 0700). The file is written beside, under a name of its own,
    /// and renamed into place: a reader never sees half a token, and two
    /// clients saving at once each finish (the last rename wins).
    pub fn save(&self, path: &Path) -> Result<()> {
        let ctx = |what: &str| format!("cannot {what} session {}", path.display());
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => {
                let mut b = fs::DirBuilder::new();
                b.recursive(true);
                #[cfg(unix)]
                std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
                b.create(dir)
                    .map_err(|e| Error::io(ctx("create the directory of"), e))?;
                dir
            }
            None => Path::new("."),
        };
        // Made with mode 0600 before the token is in it.
        let mut f = tempfile::Builder::new()
            .prefix(".session-")
            .tempfile_in(dir)
            .map_err(|e| Error::io(ctx("write"), e))?;
        let text = serde_json::to_string(self).expect("session serialises");
        f.write_all(text.as_bytes())
            .and_then(|_| f.as_file().sync_all())
            .map_err(|e| Error::io(ctx("write"), e))?;
        f.persist(path)
            .map(drop)
            .map_err(|e| Error::io(ctx("write"), e.error))
    }

    /// Deletes the session at `path`; no error if there is none.
    pub fn remove(path: &Path) -> Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(
                format!("cannot delete session {}", path.display()),
                e,
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cluster_has_its_own_file() {
        let a = cluster_key(&["127.0.0.1:6300".into(), "10.0.0.2:6300".into()], None);
        let b = cluster_key(&["10.0.0.2:6300".into(), "127.0.0.1:6300".into()], None);
        assert_eq!(a, b, "the balancers' order does not matter");
        assert_ne!(a, cluster_key(&["127.0.0.1:7300".into()], None));
        assert_ne!(a, cluster_key(&[], Some("127.0.0.1:7000")));
        assert_eq!(file_name(&a), "10.0.0.2_6300_127.0.0.1_6300");
        assert_eq!(file_name("node [::1]:7000"), "node____1__7000");
    }

    #[test]
    fn sessions_saved_at_once_all_succeed() {
        let dir = std::env::temp_dir().join(format!("dsf-sessions-{}", std::process::id()));
        let path = dir.join("session");
        let savers: Vec<_> = (0..16)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let s = Session {
                        token: format!("token-{i}"),
                        user: format!("user-{i}"),
                        expires_at: serde_json::json!(i),
                    };
                    s.save(&path)
                })
            })
            .collect();
        for s in savers {
            s.join().unwrap().unwrap();
        }
        let last = Session::load(&path).unwrap().expect("one of them");
        assert!(last.token.starts_with("token-"));
        // Nothing left beside it.
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("session")]);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_saved_session_is_private_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("dsf-session-{}", std::process::id()));
        let path = dir.join("sub").join("session");
        let s = Session {
            token: "t0k".into(),
            user: "ann".into(),
            expires_at: serde_json::json!(123),
        };
        s.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(Session::load(&path).unwrap(), Some(s));
        Session::remove(&path).unwrap();
        assert_eq!(Session::load(&path).unwrap(), None);
        Session::remove(&path).unwrap();
        let _ = fs::remove_dir_all(dir);
    }
}
