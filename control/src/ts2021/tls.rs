//! TLS to control servers on the open internet: rustls with the ring provider (already
//! linked for WireGuard), roots from the system CA bundle, falling back to the
//! compiled-in Mozilla roots (webpki-roots) on systems without one (routers, scratch
//! containers). HTTP/1.1 only, no ALPN: the `/ts2021` upgrade needs HTTP/1.1.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::Error;

/// Where distributions keep their CA bundle (first one that loads wins).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine, OpenWrt
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",             // openSUSE
    "/etc/ssl/cert.pem",                  // Alpine, macOS
];

fn root_store() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let env = std::env::var("SSL_CERT_FILE").ok();
    for path in env
        .iter()
        .map(String::as_str)
        .chain(SYSTEM_BUNDLES.iter().copied())
    {
        let Ok(iter) = CertificateDer::pem_file_iter(path) else {
            continue;
        };
        let (added, _ignored) = roots.add_parsable_certificates(iter.flatten());
        if added > 0 {
            log::debug!("TLS roots: {added} certificates from {path}");
            return roots;
        }
    }
    log::debug!("TLS roots: no system CA bundle, using the compiled-in roots");
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

pub fn client_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(root_store())
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

/// Runs a verified TLS handshake for `host` over `tcp`.
pub(super) async fn connect(
    host: &str,
    tcp: TcpStream,
    step: &'static str,
) -> Result<TlsStream<TcpStream>, Error> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| Error::Tls(format!("server name {host:?}: {e}")))?;
    TlsConnector::from(client_config()?)
        .connect(name, tcp)
        .await
        .map_err(|source| Error::Connect {
            step,
            addr: format!("{host} (TLS)"),
            source,
        })
}

/// A blocking TLS client over `tcp` (connected, with timeouts set) with the same
/// roots and settings as the control connection, for code on plain threads (the DNS
/// forwarder's `https://` upstreams). The handshake runs here, so a certificate that
/// does not verify fails this call. `server_name` may be an IP address literal.
pub fn connect_blocking(
    server_name: &str,
    mut tcp: std::net::TcpStream,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    use std::io::{Error, ErrorKind};
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("server name {server_name:?}: {e}"),
        )
    })?;
    let config = client_config().map_err(|e| Error::other(e.to_string()))?;
    let mut conn = rustls::ClientConnection::new(config, name)
        .map_err(|e| Error::other(format!("TLS to {server_name}: {e}")))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| Error::new(e.kind(), format!("TLS handshake with {server_name}: {e}")))?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}
