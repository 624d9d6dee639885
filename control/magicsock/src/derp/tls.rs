//! TLS to DERP servers (feature `tls`): verified against the same roots as control
//! (system bundle, compiled-in fallback), or not verified at all for DERP nodes marked
//! `InsecureForTests` in the DERP map (test servers with self-signed certificates).

use super::client::DerpError;
use ringscale_tailcfg::DerpNode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Accepts any certificate: only for DERP nodes the map marks `InsecureForTests`.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn insecure_config() -> Result<Arc<rustls::ClientConfig>, DerpError> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DerpError::Upgrade(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

pub(super) async fn connect(
    node: &DerpNode,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, DerpError> {
    let config = if node.insecure_for_tests {
        insecure_config()?
    } else {
        ringscale_control::ts2021::tls::client_config()
            .map_err(|e| DerpError::Upgrade(format!("TLS: {e}")))?
    };
    let host = if node.host_name.is_empty() {
        node.ipv4.clone()
    } else {
        node.host_name.clone()
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|e| DerpError::Upgrade(format!("TLS server name {host:?}: {e}")))?;
    Ok(TlsConnector::from(config).connect(name, tcp).await?)
}
