//! TLS, an option on every dsf port (rustls, with the `ring` provider): a
//! server gets `--tls-cert FILE --tls-key FILE` (PEM), and whoever connects
//! out gets `--tls-ca FILE` (PEM, the certificates it trusts). The dsf wire
//! runs unchanged inside: frames are still signed, now also encrypted.
//!
//! The server's certificate must name the host clients connect to (a DNS
//! name, or an IP address in its subject alternative names).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The first byte of a TLS record that opens a handshake.
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// Why TLS could not be set up; each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {reason}")]
    File {
        flag: &'static str,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

fn file_error(flag: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        flag,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(flag, path, format!("cannot read PEM certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(flag, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            flag,
            path,
            "holds no certificate (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's TLS settings from its certificate chain and private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("--tls-cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        file_error(
            "--tls-key",
            key,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            TlsError::Config(format!(
                "--tls-cert and --tls-key do not make a usable pair: {e}"
            ))
        })?;
    Ok(Arc::new(config))
}

/// A client's TLS settings, trusting the certificates in `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("--tls-ca", ca)? {
        roots
            .add(cert)
            .map_err(|e| file_error("--tls-ca", ca, format!("not a usable CA certificate: {e}")))?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name a client checks the server's certificate against: the host of
/// `HOST:PORT` (an IP address or a DNS name).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        TlsError::Config(format!(
            "{addr:?}: {host:?} is no host name a certificate can name: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host() {
        assert!(matches!(
            server_name("127.0.0.1:7000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("app-1.example:7000").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad host:1").is_err());
    }

    #[test]
    fn missing_or_wrong_files_name_the_flag() {
        let e = server_config(Path::new("/nonexistent.pem"), Path::new("/nonexistent.key"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--tls-cert") && e.contains("/nonexistent.pem"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("dsf-tls-{}", crate::wire::new_nonce()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem\n").unwrap();
        let e = client_config(&junk).unwrap_err().to_string();
        assert!(
            e.contains("--tls-ca") && e.contains("no certificate"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
