//! Configuration: one struct per binary, layered file < environment < flag.
//!
//! A binary writes its settings once, as a struct that is both a
//! [`clap::Args`] and a serde type, with every field an `Option`:
//!
//! ```
//! use clap::Parser;
//! use dsf_common::config::{self, Config, ConfigArgs, ConfigError, HumanDuration};
//! use serde::{Deserialize, Serialize};
//!
//! /// Default `--vnodes`.
//! pub const DEFAULT_VNODES: u32 = 160;
//!
//! #[derive(Debug, Default, clap::Args, Serialize, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct LbConfig {
//!     /// Address clients resolve on.
//!     #[arg(long, value_name = "HOST:PORT")]
//!     pub listen: Option<std::net::SocketAddr>,
//!     /// Static member `ID=HOST:PORT[,WEIGHT]`; repeat the flag for more.
//!     #[arg(long, value_name = "ID=HOST:PORT[,WEIGHT]")]
//!     pub backend: Option<Vec<String>>,
//!     /// Virtual nodes per unit of weight [default: 160].
//!     #[arg(long)]
//!     pub vnodes: Option<u32>,
//!     /// How long a silent node lives [default: 3s].
//!     #[arg(long)]
//!     pub dead_after: Option<HumanDuration>,
//! }
//!
//! impl LbConfig {
//!     /// `--vnodes`, or [`DEFAULT_VNODES`].
//!     pub fn vnodes(&self) -> u32 {
//!         self.vnodes.unwrap_or(DEFAULT_VNODES)
//!     }
//! }
//!
//! impl Config for LbConfig {
//!     fn validate(&self) -> Result<(), ConfigError> {
//!         config::required(&self.listen, "listen")?;
//!         if self.vnodes() == 0 {
//!             return Err(ConfigError::invalid("vnodes", "must be at least 1"));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     files: ConfigArgs,
//!     #[command(flatten)]
//!     config: LbConfig,
//! }
//!
//! # fn main() {
//! # std::env::remove_var("DSF_LISTEN");
//! # std::env::remove_var("DSF_CONFIG");
//! // In main: clap with a DSF_* variable behind every flag, then the file.
//! let cli: Cli = config::parse_from(["lb-server", "--listen", "127.0.0.1:6300"]);
//! let config = cli.files.load(&cli.config).unwrap(); // in main: load_or_exit(&cli.config, prepare), which handles --check-config
//! assert_eq!(config.vnodes(), 160);
//! # }
//! ```
//!
//! How the layers meet:
//! - [`parse`] gives every long flag `--foo-bar` the environment variable
//!   `DSF_FOO_BAR` (unless the field names its own), so clap itself resolves
//!   flag over environment, and `--help` names each variable. Flags that take
//!   no value (`--help`, `--check-config`) get none.
//! - [`load`] merges, with figment, the TOML file under every field clap
//!   filled in (keys are the field names: the flag with `-` written `_`). A
//!   value from the flag or environment replaces the file's value whole,
//!   lists included: `--lb a --lb b` replaces `lb = ["c"]`; it does not
//!   append to it.
//! - The shared connection limits are [`LimitArgs`], flattened into each
//!   server's struct; their keys stay flat.
//! - Defaults are not clap's `default_value` (that would always override the
//!   file) but named constants read through accessor methods. For an on/off
//!   flag use `Option<bool>` with
//!   `#[arg(long, num_args = 0..=1, default_missing_value = "true")]`, so
//!   that `--json`, `--json=false`, `DSF_JSON=true` and `json = true` all
//!   work. [`assert_layerable`] checks a struct keeps to this; call it in
//!   a unit test of each binary.
//! - A list flag repeats (`--backend A --backend B`); from the environment it
//!   is one item unless the field sets `value_delimiter`
//!   (`DSF_LB=a:1,b:2` with `value_delimiter = ','`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{ArgMatches, Command};
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Prefix of the environment variable behind each flag.
pub const ENV_PREFIX: &str = "DSF_";

/// A binary's settings: a [`clap::Args`] struct of `Option` fields that serde
/// reads from TOML. See the module documentation.
pub trait Config: clap::Args + Serialize + DeserializeOwned {
    /// Checks what no single field can (required values, ranges, pairs),
    /// once every layer is in. [`load`] calls it.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// What `--check-config` prints: by default the settings given, as TOML.
    /// Override to show the effective values with defaults filled in.
    fn describe(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot show as TOML: {e}\n"))
    }
}

/// Why the configuration was refused; each message says where and what to
/// fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config file {path}: unknown key `{key}` ({expected}; a key is the flag name with `-` written `_`)")]
    UnknownKey {
        path: String,
        key: String,
        expected: String,
    },
    #[error("config file {path}, key `{key}`: {message}")]
    BadValue {
        path: String,
        key: String,
        message: String,
    },
    #[error("missing {key}: pass --{flag}, set {env}, or add `{key} = …` to the --config file")]
    Missing {
        key: String,
        flag: String,
        env: String,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

// === impl ConfigError ===

impl ConfigError {
    /// A value that is well-formed but not allowed, named by its key.
    pub fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// The connection limits every server takes, written once: flatten it into
/// a binary's [`Config`] with `#[command(flatten)] #[serde(flatten)]`. The
/// keys stay flat (`max_frame = …`, `--max-frame`, `DSF_MAX_FRAME`).
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[command(next_help_heading = "Connection limits")]
pub struct LimitArgs {
    /// Largest frame accepted, in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame: Option<usize>,

    /// Connections held at once; more get `overloaded` [default: 10000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_conns: Option<usize>,

    /// Close a connection silent this long [default: 60s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<HumanDuration>,

    /// Bytes all connections together may hold in unfinished frames and
    /// unsent replies; past it the biggest holders are paused, then closed
    /// [default: 67108864, 64 MiB].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<usize>,

    /// A frame must be complete within this time of its first byte;
    /// trickled bytes do not extend it [default: 10s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_timeout: Option<HumanDuration>,

    /// Refused frames in a row (bad JSON, signature, type…) that close a
    /// connection [default: 16].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_refused: Option<u32>,
}

// === impl LimitArgs ===

impl LimitArgs {
    /// The limits given, `None` where the reactor's default holds.
    pub fn get(&self) -> crate::reactor::Limits {
        crate::reactor::Limits {
            max_frame: self.max_frame,
            max_conns: self.max_conns,
            idle_timeout: self.idle_timeout.map(HumanDuration::get),
            memory_budget: self.memory_budget,
            frame_timeout: self.frame_timeout.map(HumanDuration::get),
            max_refused: self.max_refused,
        }
    }

    /// The reactor's settings with these limits.
    pub fn reactor(&self) -> crate::reactor::ReactorConfig {
        crate::reactor::ReactorConfig::with_limits(&self.get())
    }

    /// Checks what no single value can say: the ranges, and a memory budget
    /// that holds two frames.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ms10 = std::time::Duration::from_millis(10);
        if self.max_frame == Some(0) {
            return Err(ConfigError::invalid("max_frame", "must be at least 1"));
        }
        for (key, d) in [
            ("idle_timeout", self.idle_timeout),
            ("frame_timeout", self.frame_timeout),
        ] {
            if d.is_some_and(|d| d.get() < ms10) {
                return Err(ConfigError::invalid(key, "must be at least 10ms"));
            }
        }
        if self.max_refused == Some(0) {
            return Err(ConfigError::invalid("max_refused", "must be at least 1"));
        }
        let frame = self
            .max_frame
            .unwrap_or(crate::wire::frame::DEFAULT_MAX_FRAME);
        if let Some(b) = self.memory_budget {
            if b < 2 * frame {
                return Err(ConfigError::invalid(
                    "memory_budget",
                    format!(
                        "{b} bytes cannot hold two frames of max_frame {frame} bytes; give at least {}",
                        2 * frame
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The environment variable behind `--{long}`: `DSF_` then the flag in upper
/// case with `-` written `_`.
pub fn env_var(long: &str) -> String {
    env_var_with(ENV_PREFIX, long)
}

fn env_var_with(prefix: &str, long: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + long.len());
    s.push_str(prefix);
    s.extend(long.chars().map(|c| match c {
        '-' => '_',
        c => c.to_ascii_uppercase(),
    }));
    s
}

/// `cmd` with `{prefix}{FLAG}` behind every long flag that takes a value and
/// names no variable of its own, in every subcommand too.
pub fn with_env(cmd: Command, prefix: &str) -> Command {
    let prefix = prefix.to_string();
    let sub_prefix = prefix.clone();
    cmd.mut_args(move |arg| {
        let takes_value = arg.get_action().takes_values();
        match arg.get_long() {
            Some(long) if takes_value && arg.get_env().is_none() => {
                let var = env_var_with(&prefix, long);
                arg.env(var)
            }
            _ => arg,
        }
    })
    .mut_subcommands(move |sub| with_env(sub, &sub_prefix))
}

/// Parses the process's arguments into `P`, with `DSF_*` variables behind
/// the flags; on error or `--help`, prints and exits as clap does.
pub fn parse<P: clap::Parser>() -> P {
    parse_from(std::env::args_os())
}

/// [`parse`] over the given arguments (the first is the program name).
pub fn parse_from<P, I, T>(args: I) -> P
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    try_parse_from_with_env::<P, _, _>(args, ENV_PREFIX).unwrap_or_else(|e| e.exit())
}

/// Parses `args` with `{prefix}{FLAG}` variables behind the flags, returning
/// clap's error rather than exiting. Tests use their own prefix so that the
/// variables they set cannot leak into one another.
pub fn try_parse_from_with_env<P, I, T>(args: I, prefix: &str) -> Result<P, clap::Error>
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = with_env(P::command(), prefix);
    let matches: ArgMatches = cmd.try_get_matches_from_mut(args)?;
    P::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// Reads the TOML file (if any), overlays the fields set by flag or
/// environment in `cli`, and validates the result.
pub fn load<C: Config>(file: Option<&Path>, cli: &C) -> Result<C, ConfigError> {
    let file = match file {
        Some(path) => {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
            Some((shown, text))
        }
        None => None,
    };
    let config: C = layer(file.as_ref().map(|(p, t)| (p.as_str(), t.as_str())), cli)?;
    config.validate()?;
    Ok(config)
}

/// The layering itself, on text already read: `file` is `(name shown in
/// errors, TOML text)`. Does not validate.
///
/// figment merges the file under what clap resolved (flag over
/// environment) and extracts `C`. The keys a file may hold are the flags'
/// ids, asked of clap, so a struct may flatten [`LimitArgs`] (serde cannot
/// combine `flatten` with `deny_unknown_fields`).
pub fn layer<C: Config>(file: Option<(&str, &str)>, cli: &C) -> Result<C, ConfigError> {
    let mut figment = Figment::new();
    let mut file_keys = Dict::new();
    if let Some((path, text)) = file {
        let toml = Toml::string(text);
        file_keys = toml
            .data()
            .map_err(|e| ConfigError::Syntax {
                path: path.to_string(),
                message: e.kind.to_string().trim().to_string(),
            })?
            .into_values()
            .next()
            .unwrap_or_default();
        check_keys::<C>(path, &file_keys)?;
        figment = figment.merge(toml);
    }
    // Fields clap left unset serialise as empty values, which would erase
    // the file's: only what was given goes over it.
    let mut given = Serialized::defaults(cli)
        .data()
        .map_err(|e| ConfigError::invalid("flags", e.to_string()))?
        .into_values()
        .next()
        .unwrap_or_default();
    given.retain(|_, v| !matches!(v, Value::Empty(..)));
    figment
        .merge(Serialized::defaults(given))
        .extract()
        .map_err(|e| {
            let path = file.map_or("(flags)", |(p, _)| p).to_string();
            let key = match e.path.first() {
                Some(key) => key.clone(),
                // Inside a flattened struct serde loses the key: find the
                // one value that fails on its own.
                None => failing_key::<C>(&file_keys).unwrap_or_else(|| "?".into()),
            };
            ConfigError::BadValue {
                path,
                key,
                message: e.kind.to_string(),
            }
        })
}

/// Refuses a file key that is no flag of `C`, listing the ones there are.
fn check_keys<C: clap::Args>(path: &str, keys: &Dict) -> Result<(), ConfigError> {
    let cmd = C::augment_args(Command::new("keys"));
    let known: Vec<&str> = cmd.get_arguments().map(|a| a.get_id().as_str()).collect();
    match keys.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(ConfigError::UnknownKey {
            path: path.to_string(),
            key: key.clone(),
            expected: format!(
                "expected one of {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// The first key of `keys` that `C` refuses alone.
fn failing_key<C: DeserializeOwned>(keys: &Dict) -> Option<String> {
    keys.iter()
        .find(|(k, v)| {
            let one = Dict::from([(k.to_string(), (*v).clone())]);
            Figment::from(Serialized::defaults(one))
                .extract::<C>()
                .is_err()
        })
        .map(|(k, _)| k.clone())
}

/// The value of a setting that has no default, or an error saying every
/// way to give it.
pub fn required<'a, T>(value: &'a Option<T>, key: &str) -> Result<&'a T, ConfigError> {
    value.as_ref().ok_or_else(|| ConfigError::Missing {
        key: key.to_string(),
        flag: key.replace('_', "-"),
        env: env_var(&key.replace('_', "-")),
    })
}

/// Checks that `C` can be layered: every flag is long, none is required and
/// none has a default (either would hide the file's value). Panics naming
/// the flag; call it from a unit test.
pub fn assert_layerable<C: clap::Args>() {
    let cmd = C::augment_args(Command::new("check"));
    for arg in cmd.get_arguments() {
        let id = arg.get_id();
        assert!(
            arg.get_long().is_some(),
            "{id}: config fields must be long flags"
        );
        assert!(
            !arg.is_required_set(),
            "{id}: config fields must be Option<_> (check requirements in Config::validate)"
        );
        assert!(
            arg.get_default_values().is_empty(),
            "{id}: has a clap default, which would override the config file; \
             use Option<_> with a DEFAULT_ constant and an accessor (for a bool: \
             Option<bool> with num_args = 0..=1, default_missing_value = \"true\")"
        );
    }
}

/// The `--config` and `--check-config` flags every binary shares; flatten it
/// next to the binary's [`Config`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML file of settings (keys are the flag names with `-` written `_`);
    /// DSF_* variables and flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration (file, environment and flags), print it, and
    /// exit: 0 if valid, 2 if not.
    #[arg(long)]
    pub check_config: bool,
}

// === impl ConfigArgs ===

impl ConfigArgs {
    /// [`load`] from `--config`, over `cli`.
    pub fn load<C: Config>(&self, cli: &C) -> Result<C, ConfigError> {
        load(self.config.as_deref(), cli)
    }

    /// [`ConfigArgs::load`] for a `main`, followed by `prepare`: everything
    /// a real start checks before it binds a port (secrets read, key files'
    /// modes, required values), turning the configuration into what the
    /// server runs with. An error from either is printed and exits with
    /// status 2. With `--check-config`, a configuration that got through
    /// both is printed and exits with status 0, so "OK" means the server
    /// would start.
    pub fn load_or_exit<C: Config, S, E: std::fmt::Display>(
        &self,
        cli: &C,
        prepare: impl FnOnce(&C) -> Result<S, E>,
    ) -> S {
        let program = std::env::args()
            .next()
            .map(|p| {
                Path::new(&p)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or(p)
            })
            .unwrap_or_else(|| "dsf".into());
        let fail = |e: &dyn std::fmt::Display| -> ! {
            eprintln!("{program}: {e}");
            std::process::exit(2)
        };
        let config = self.load(cli).unwrap_or_else(|e| fail(&e));
        let prepared = prepare(&config).unwrap_or_else(|e| fail(&e));
        if self.check_config {
            // Passwords in URLs are never shown, whatever `describe` wrote.
            print!(
                "# {program}: configuration OK\n{}",
                redact(&config.describe())
            );
            std::process::exit(0)
        }
        prepared
    }
}

/// TLS, written once like [`LimitArgs`]: a server's certificate and key,
/// and the certificates it trusts where it connects out.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// PEM certificate chain: serve TLS on the dsf ports (with --tls-key).
    /// It must name the host clients connect to.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (mode 0600).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// PEM certificates to trust when connecting out over TLS (to the
    /// collector, balancers or other app servers); without it, out is plain.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
}

// === impl TlsArgs ===

impl TlsArgs {
    /// Checks that the certificate and key come together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => Err(ConfigError::invalid(
                "tls_key",
                "--tls-cert needs --tls-key, its private key",
            )),
            (None, Some(_)) => Err(ConfigError::invalid(
                "tls_cert",
                "--tls-key needs --tls-cert, its certificate",
            )),
            _ => Ok(()),
        }
    }

    /// The server side, read from the files; `None` without --tls-cert.
    pub fn server(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                crate::wire::keys::read_private(key)
                    .map_err(|e| ConfigError::invalid("tls_key", e.to_string()))?;
                crate::tls::server_config(cert, key)
                    .map(Some)
                    .map_err(|e| ConfigError::invalid("tls_cert", e.to_string()))
            }
            _ => Ok(None),
        }
    }

    /// The client side, read from --tls-ca; `None` without it.
    pub fn client(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, ConfigError> {
        self.tls_ca
            .as_deref()
            .map(crate::tls::client_config)
            .transpose()
            .map_err(|e| ConfigError::invalid("tls_ca", e.to_string()))
    }
}

/// A URL that may carry a password (`mysql://USER:PASS@HOST:PORT/DB`):
/// kept whole for connecting, shown with the password as `***` in Debug and
/// Display. A TOML file and the flags give it as a plain string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

// === impl SecretUrl ===

impl SecretUrl {
    /// Wraps `url`.
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The password in the URL, if it holds one; of a comma-separated list
    /// (Galera nodes), the first URL's that holds one.
    pub fn password(&self) -> Option<&str> {
        self.0.split(',').find_map(|url| {
            let (_, userinfo, _) = split_userinfo(url)?;
            userinfo
                .split_once(':')
                .map(|(_, p)| p)
                .filter(|p| !p.is_empty())
        })
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretUrl::new(s))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact(&self.0), f)
    }
}

/// A password or other secret (the cluster secret, a database password)
/// read from a file or the environment: shown as `***` in Debug and
/// Display, so a settings struct may derive Debug.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

// === impl Secret ===

impl Secret {
    /// Wraps `secret`.
    pub fn new(secret: impl Into<Vec<u8>>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself: only for use, never for showing.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Splits `url` at the user information of its authority: (what comes
/// before it, the user information, what comes after its `@`).
fn split_userinfo(url: &str) -> Option<(&str, &str, &str)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest
        .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c == '"' || c == '\'')
        .unwrap_or(rest.len());
    let at = rest[..end].rfind('@')?;
    Some((&url[..start], &rest[..at], &rest[at + 1..]))
}

/// `text` with the password of every `scheme://USER:PASS@…` in it written
/// `***`: for showing a URL, or a whole configuration, that may hold one.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, userinfo, after)) = split_userinfo(rest) {
        out.push_str(before);
        match userinfo.split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push_str(":***");
            }
            None => out.push_str(userinfo),
        }
        out.push('@');
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The database password, when one is given apart from the URL: read from
/// `file` (mode 0600, trailing newline dropped) or else from the variable
/// `env`. `flag` names the file's flag in errors. Refuses a password given
/// both in the URL and apart from it, rather than pick one silently.
pub fn db_password(
    url: &SecretUrl,
    file: Option<&Path>,
    flag: &str,
    env: &str,
) -> Result<Option<Secret>, ConfigError> {
    let given = match file {
        Some(path) => {
            let text = crate::wire::keys::read_private(path)
                .map_err(|e| ConfigError::invalid(&flag.replace('-', "_"), e.to_string()))?;
            let password = text.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(ConfigError::invalid(
                    &flag.replace('-', "_"),
                    format!("{} is empty", path.display()),
                ));
            }
            Some((password.to_string(), format!("--{flag}")))
        }
        None => std::env::var(env)
            .ok()
            .filter(|p| !p.is_empty())
            .map(|p| (p, env.to_string())),
    };
    match given {
        Some((_, from)) if url.password().is_some() => Err(ConfigError::invalid(
            &flag.replace("-password-file", "").replace('-', "_"),
            format!(
                "the password is given twice, in the URL and by {from}: drop it from the URL \
                 ({url}), which `ps` and shell histories show"
            ),
        )),
        Some((password, _)) => Ok(Some(Secret::new(password))),
        None => Ok(None),
    }
}

/// A duration written with its unit: `250ms`, `3s`, `2m`, `1h`, or a sum of
/// them (`1m30s`). TOML holds it as a string: `dead_after = "3s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub std::time::Duration);

// === impl HumanDuration ===

impl HumanDuration {
    /// The duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for HumanDuration {
    fn from(d: std::time::Duration) -> Self {
        HumanDuration(d)
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("{s:?} is not a duration: write a number and a unit, like 250ms, 3s, 2m, 1h or 1m30s")
        };
        let mut total: u128 = 0;
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let unit_len = rest[digits..]
                .bytes()
                .take_while(u8::is_ascii_alphabetic)
                .count();
            let n: u128 = rest[..digits].parse().map_err(|_| bad())?;
            let ms_per = match &rest[digits..digits + unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => return Err(bad()),
            };
            total = n
                .checked_mul(ms_per)
                .and_then(|v| total.checked_add(v))
                .filter(|&t| t <= u128::from(u64::MAX))
                .ok_or_else(bad)?;
            rest = &rest[digits + unit_len..];
        }
        Ok(HumanDuration(std::time::Duration::from_millis(
            total as u64,
        )))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, per) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms >= per && ms.is_multiple_of(per) {
                return write!(f, "{}{unit}", ms / per);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use std::net::SocketAddr;
    use std::time::Duration;

    /// `ID=HOST:PORT[,WEIGHT]`, as lb-server's `--backend` takes it.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(try_from = "String", into = "String")]
    struct Backend {
        id: String,
        addr: SocketAddr,
        weight: u32,
    }

    impl FromStr for Backend {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            let bad = || format!("{s:?}: expected ID=HOST:PORT[,WEIGHT]");
            let (id, rest) = s.split_once('=').ok_or_else(bad)?;
            let (addr, weight) = match rest.split_once(',') {
                Some((a, w)) => (a, w.parse().map_err(|_| bad())?),
                None => (rest, 1),
            };
            Ok(Backend {
                id: id.into(),
                addr: addr.parse().map_err(|_| bad())?,
                weight,
            })
        }
    }

    impl TryFrom<String> for Backend {
        type Error = String;
        fn try_from(s: String) -> Result<Self, String> {
            s.parse()
        }
    }

    impl From<Backend> for String {
        fn from(b: Backend) -> String {
            format!("{}={},{}", b.id, b.addr, b.weight)
        }
    }

    const DEFAULT_VNODES: u32 = 160;

    #[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
    struct TestConfig {
        /// Listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Virtual nodes [default: 160].
        #[arg(long)]
        vnodes: Option<u32>,
        /// Static members, repeatable.
        #[arg(long)]
        backend: Option<Vec<Backend>>,
        /// Balancers, repeatable or comma-separated.
        #[arg(long, value_delimiter = ',')]
        lb: Option<Vec<String>>,
        /// How long a silent node lives.
        #[arg(long)]
        dead_after: Option<HumanDuration>,
        /// Print JSON.
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        json: Option<bool>,
        #[command(flatten)]
        #[serde(flatten)]
        limits: LimitArgs,
    }

    impl TestConfig {
        fn vnodes(&self) -> u32 {
            self.vnodes.unwrap_or(DEFAULT_VNODES)
        }
    }

    impl Config for TestConfig {
        fn validate(&self) -> Result<(), ConfigError> {
            required(&self.listen, "listen")?;
            if self.vnodes() == 0 {
                return Err(ConfigError::invalid("vnodes", "must be at least 1"));
            }
            Ok(())
        }
    }

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        files: ConfigArgs,
        #[command(flatten)]
        config: TestConfig,
    }

    /// Parses `args` with variables under `prefix`, which each test makes its
    /// own so tests running in parallel never see each other's variables.
    fn cli(prefix: &str, args: &[&str]) -> TestCli {
        let argv = std::iter::once("test").chain(args.iter().copied());
        try_parse_from_with_env::<TestCli, _, _>(argv, prefix).unwrap()
    }

    const FILE: &str = r#"
listen = "127.0.0.1:6300"
vnodes = 100
lb = ["10.0.0.1:6200"]
backend = ["a=127.0.0.1:7001,2", "b=127.0.0.1:7002"]
dead_after = "3s"
json = true
max_frame = 4096
idle_timeout = "5s"
"#;

    fn from_file(cli: &TestCli) -> TestConfig {
        layer(Some(("test.toml", FILE)), &cli.config).unwrap()
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_file_alone_gives_every_value() {
        let c = from_file(&cli("DSFTEST_FILEONLY_", &[]));
        assert_eq!(c.listen, addr("127.0.0.1:6300"));
        assert_eq!(c.vnodes(), 100);
        assert_eq!(c.lb, Some(vec!["10.0.0.1:6200".to_string()]));
        let backends = c.backend.unwrap();
        assert_eq!((backends[0].id.as_str(), backends[0].weight), ("a", 2));
        assert_eq!((backends[1].id.as_str(), backends[1].weight), ("b", 1));
        assert_eq!(c.dead_after.unwrap().get(), Duration::from_secs(3));
        assert_eq!(c.json, Some(true));
        assert_eq!(c.limits.max_frame, Some(4096));
        assert_eq!(c.limits.reactor().idle_timeout, Duration::from_secs(5));
    }

    #[test]
    fn nothing_given_leaves_the_defaults_to_the_accessors() {
        let c: TestConfig = layer(None, &cli("DSFTEST_NOTHING_", &[]).config).unwrap();
        assert_eq!(c, TestConfig::default());
        assert_eq!(c.vnodes(), DEFAULT_VNODES);
    }

    #[test]
    fn the_environment_overrides_the_file() {
        std::env::set_var("DSFTEST_ENVFILE_VNODES", "200");
        std::env::set_var("DSFTEST_ENVFILE_LB", "a:1,b:2");
        std::env::set_var("DSFTEST_ENVFILE_BACKEND", "z=127.0.0.1:9000,5");
        std::env::set_var("DSFTEST_ENVFILE_JSON", "false");
        std::env::set_var("DSFTEST_ENVFILE_DEAD_AFTER", "1m30s");
        std::env::set_var("DSFTEST_ENVFILE_MAX_FRAME", "8192");
        let c = from_file(&cli("DSFTEST_ENVFILE_", &[]));
        assert_eq!(c.limits.max_frame, Some(8192));
        assert_eq!(c.limits.idle_timeout.unwrap().get(), Duration::from_secs(5));
        assert_eq!(c.vnodes(), 200);
        assert_eq!(c.lb, Some(vec!["a:1".to_string(), "b:2".to_string()]));
        let backends = c.backend.unwrap();
        assert_eq!(backends.len(), 1);
        assert_eq!((backends[0].id.as_str(), backends[0].weight), ("z", 5));
        assert_eq!(c.json, Some(false));
        assert_eq!(c.dead_after.unwrap().get(), Duration::from_secs(90));
        // What the environment does not set still comes from the file.
        assert_eq!(c.listen, addr("127.0.0.1:6300"));
    }

    #[test]
    fn a_flag_overrides_the_environment_and_the_file() {
        std::env::set_var("DSFTEST_FLAGENV_VNODES", "200");
        std::env::set_var("DSFTEST_FLAGENV_LB", "env:1");
        std::env::set_var("DSFTEST_FLAGENV_LISTEN", "127.0.0.2:1");
        let c = from_file(&cli(
            "DSFTEST_FLAGENV_",
            &[
                "--vnodes",
                "300",
                "--lb",
                "x:1",
                "--lb",
                "y:2,z:3",
                "--backend",
                "p=127.0.0.1:1",
                "--backend",
                "q=127.0.0.1:2,7",
                "--json",
                "--max-frame",
                "100",
            ],
        ));
        assert_eq!(c.limits.max_frame, Some(100));
        assert_eq!(c.vnodes(), 300);
        assert_eq!(
            c.lb.unwrap(),
            ["x:1", "y:2", "z:3"].map(String::from).to_vec()
        );
        let ids: Vec<_> = c.backend.unwrap().into_iter().map(|b| b.id).collect();
        assert_eq!(ids, ["p", "q"]);
        assert_eq!(c.json, Some(true));
        // Environment over file where no flag was given.
        assert_eq!(c.listen, addr("127.0.0.2:1"));
    }

    #[test]
    fn a_field_may_name_its_own_variable() {
        // Its own struct: no other test parses a field reading this variable.
        #[derive(Debug, Parser)]
        struct OwnVar {
            #[arg(long, env = "DSFTEST_OWN_VAR")]
            app_keys: Option<PathBuf>,
        }
        std::env::set_var("DSFTEST_OWN_VAR", "/etc/dsf/keys.toml");
        let c: OwnVar = try_parse_from_with_env(["test"], "DSFTEST_OWNVAR_").unwrap();
        assert_eq!(c.app_keys, Some(PathBuf::from("/etc/dsf/keys.toml")));
    }

    #[test]
    fn config_file_path_comes_from_flag_or_environment_but_check_config_only_from_flag() {
        std::env::set_var("DSFTEST_CFGPATH_CONFIG", "/tmp/from-env.toml");
        std::env::set_var("DSFTEST_CFGPATH_CHECK_CONFIG", "true");
        let c = cli("DSFTEST_CFGPATH_", &[]);
        assert_eq!(c.files.config, Some(PathBuf::from("/tmp/from-env.toml")));
        assert!(!c.files.check_config);
        assert!(
            cli("DSFTEST_CFGPATH_", &["--check-config"])
                .files
                .check_config
        );
    }

    #[test]
    fn env_var_names_follow_the_flag() {
        assert_eq!(env_var("cluster-secret-file"), "DSF_CLUSTER_SECRET_FILE");
        let cmd = with_env(TestCli::command(), ENV_PREFIX);
        let env = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env("dead_after").as_deref(), Some("DSF_DEAD_AFTER"));
        assert_eq!(env("config").as_deref(), Some("DSF_CONFIG"));
        assert_eq!(env("check_config"), None);
    }

    #[test]
    fn unknown_key_in_the_file_is_named_with_the_file() {
        let e = layer::<TestConfig>(
            Some(("lb.toml", "listen = \"127.0.0.1:1\"\nbakend = [\"a\"]\n")),
            &TestConfig::default(),
        )
        .unwrap_err();
        assert!(matches!(&e, ConfigError::UnknownKey { key, .. } if key == "bakend"));
        let msg = e.to_string();
        assert!(msg.contains("lb.toml") && msg.contains("`bakend`"), "{msg}");
        assert!(msg.contains("`backend`"), "lists the known keys: {msg}");
    }

    #[test]
    fn bad_value_in_the_file_names_the_key_and_what_was_expected() {
        for (text, key, want) in [
            ("vnodes = \"many\"", "vnodes", "u32"),
            ("vnodes = -1", "vnodes", "u32"),
            ("listen = \"nowhere\"", "listen", "address"),
            ("dead_after = \"3 weeks\"", "dead_after", "like 250ms"),
            ("backend = [\"a=b\"]", "backend", "ID=HOST:PORT"),
            ("lb = \"a:1\"", "lb", "sequence"),
            ("max_frame = \"big\"", "max_frame", "usize"),
            (
                "vnodes = 1\nidle_timeout = \"soon\"",
                "idle_timeout",
                "like 250ms",
            ),
        ] {
            let e =
                layer::<TestConfig>(Some(("x.toml", text)), &TestConfig::default()).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(&e, ConfigError::BadValue { key: k, .. } if k == key),
                "{text}: {msg}"
            );
            assert!(
                msg.contains("x.toml") && msg.contains(want),
                "{text}: {msg}"
            );
        }
    }

    #[test]
    fn broken_toml_is_reported_with_its_line() {
        let e = layer::<TestConfig>(
            Some(("x.toml", "listen = 1\nvnodes = \n")),
            &TestConfig::default(),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{msg}");
        assert!(msg.contains("x.toml") && msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn a_bad_flag_value_is_refused_by_clap_naming_the_flag() {
        let argv = ["test", "--vnodes", "many"];
        let e = try_parse_from_with_env::<TestCli, _, _>(argv, "DSFTEST_BADFLAG_").unwrap_err();
        assert!(e.to_string().contains("--vnodes"), "{e}");
    }

    #[test]
    fn load_reads_the_file_and_validates() {
        let dir = std::env::temp_dir().join(format!("dsf-config-{}", crate::wire::new_nonce()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "vnodes = 0\n").unwrap();
        let missing = load(Some(&path), &TestConfig::default()).unwrap_err();
        assert!(
            missing.to_string().contains("--listen") && missing.to_string().contains("DSF_LISTEN"),
            "{missing}"
        );
        let with_listen = TestConfig {
            listen: addr("127.0.0.1:1"),
            ..TestConfig::default()
        };
        let zero = load(Some(&path), &with_listen).unwrap_err();
        assert!(
            matches!(zero, ConfigError::Invalid { ref key, .. } if key == "vnodes"),
            "{zero}"
        );
        let gone = load(Some(&dir.join("nope.toml")), &with_listen).unwrap_err();
        assert!(gone.to_string().contains("nope.toml"), "{gone}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn check_config_output_round_trips_through_the_file() {
        let c = from_file(&cli("DSFTEST_DESCRIBE_", &["--vnodes", "7"]));
        let shown = c.describe();
        let again: TestConfig = layer(Some(("shown", &shown)), &TestConfig::default()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn the_test_config_is_layerable() {
        assert_layerable::<TestConfig>();
    }

    #[test]
    #[should_panic(expected = "clap default")]
    fn a_clap_default_is_caught() {
        #[derive(clap::Args)]
        struct Bad {
            #[arg(long, default_value_t = 160)]
            _vnodes: u32,
        }
        assert_layerable::<Bad>();
    }

    #[test]
    fn passwords_in_urls_are_never_shown() {
        let url = SecretUrl::new("mysql://dsf:s3cret@127.0.0.1:3306/dsf");
        assert_eq!(url.password(), Some("s3cret"));
        assert_eq!(url.to_string(), "mysql://dsf:***@127.0.0.1:3306/dsf");
        assert_eq!(format!("{url:?}"), "\"mysql://dsf:***@127.0.0.1:3306/dsf\"");
        assert_eq!(url.expose(), "mysql://dsf:s3cret@127.0.0.1:3306/dsf");
        for (text, want) in [
            ("mysql://u@h/d", "mysql://u@h/d"),
            ("mysql://h:3306/d", "mysql://h:3306/d"),
            ("mysql://u:p@w@h/d", "mysql://u:***@h/d"),
            (
                "mysql://a:p1@h1:1/d,mysql://b:p2@h2:2/d",
                "mysql://a:***@h1:1/d,mysql://b:***@h2:2/d",
            ),
            (
                "db = \"mysql://a:x@h/d\"\npins_db = \"mysql://b:y@h2\"\n",
                "db = \"mysql://a:***@h/d\"\npins_db = \"mysql://b:***@h2\"\n",
            ),
            ("see http://example.com/a@b", "see http://example.com/a@b"),
        ] {
            assert_eq!(redact(text), want, "{text}");
        }
        assert_eq!(SecretUrl::new("mysql://u@h/d").password(), None);
        let s = Secret::new("hunter2");
        assert_eq!(
            (format!("{s}"), format!("{s:?}")),
            ("***".into(), "\"***\"".into())
        );
    }

    #[test]
    fn a_db_password_comes_from_a_private_file_or_the_environment_never_twice() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dsf-dbpw-{}", crate::wire::new_nonce()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let bare = SecretUrl::new("mysql://dsf@127.0.0.1/dsf");
        let env = "DSFTEST_DBPW_PASSWORD";
        let got = |url: &SecretUrl, f: Option<&Path>| db_password(url, f, "db-password-file", env);
        assert_eq!(got(&bare, None).unwrap(), None);
        std::env::set_var(env, "from-env");
        assert_eq!(got(&bare, None).unwrap().unwrap().expose(), b"from-env");
        assert_eq!(
            got(&bare, Some(&file)).unwrap().unwrap().expose(),
            b"from-file"
        );
        let twice = got(&SecretUrl::new("mysql://dsf:inurl@h/d"), None)
            .unwrap_err()
            .to_string();
        assert!(
            twice.contains("given twice") && !twice.contains("inurl"),
            "{twice}"
        );
        // In any URL of a list, not only the first.
        let list = SecretUrl::new("mysql://dsf@a/d,mysql://dsf:inurl@b/d");
        let twice = got(&list, None).unwrap_err().to_string();
        assert!(
            twice.contains("given twice") && !twice.contains("inurl"),
            "{twice}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = got(&bare, Some(&file)).unwrap_err().to_string();
        assert!(open.contains("chmod 600"), "{open}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn durations_read_and_print_with_units() {
        for (s, ms) in [
            ("250ms", 250),
            ("3s", 3000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
        ] {
            let d: HumanDuration = s.parse().unwrap();
            assert_eq!(d.get(), Duration::from_millis(ms), "{s}");
            assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
        }
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
        for bad in ["", "3", "s", "3 s", "3x", "-1s", "99999999999999999999h"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?}");
        }
    }
}
