//! The session `client login` saves and later commands attach: a small
//! JSON file readable only by its owner, at `DSF_SESSION_FILE` or
//! `$XDG_CONFIG_HOME/dsf/session` (`~/.config/dsf/session`).

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

/// Where the session lives: `DSF_SESSION_FILE`, else the user's config dir.
pub fn default_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(SESSION_FILE_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    dirs::config_dir()
        .map(|d| d.join("dsf").join("session"))
        .ok_or_else(|| {
            Error::Config(format!(
                "cannot find a config directory for the session: set {SESSION_FILE_ENV}=FILE"
            ))
        })
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
    /// (mode 0700). The file is written beside and renamed into place, so a
    /// reader never sees half a token, and its mode is set before the token
    /// is in it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let ctx = |what: &str| format!("cannot {what} session {}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut b = fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir)
                .map_err(|e| Error::io(ctx("create the directory of"), e))?;
        }
        let tmp = path.with_extension("tmp");
        let mut o = fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(&tmp).map_err(|e| Error::io(ctx("write"), e))?;
        #[cfg(unix)]
        {
            // A leftover file keeps its old mode through `open`.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(ctx("protect"), e))?;
        }
        let text = serde_json::to_string(self).expect("session serialises");
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(ctx("write"), e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(ctx("write"), e))
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
