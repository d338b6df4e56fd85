//! Mutual TLS for the node's gRPC listeners (docs/security.md).
//!
//! * **Raft transport** (`[cluster.tls]`): every node holds a certificate
//!   signed by the cluster's CA whose subject alternative name is the DNS
//!   name [`member_name`] (`node-<id>.haven`). The server half requires a
//!   client certificate chaining to the CA (rustls' webpki verifier); the
//!   transport then checks, on every stream, that the certificate names
//!   the `from` of the batches it carries and that `from` is a member
//!   ([`peer_is`]). The client half verifies the server's certificate
//!   against the CA *and* the expected peer's name, so a node never
//!   streams raft messages to an impostor.
//! * **Admin API** (`[admin.tls]`): server certificate, client certificate
//!   from `[admin.tls] ca` required.
//!
//! The handshake is done here rather than inside tonic so that refused
//! handshakes (unknown CA, no client certificate, garbage) are counted in
//! [`crate::telemetry::TLS_HANDSHAKE_FAILURES`]; tonic then serves the
//! finished `TlsStream`s and exposes the peer's certificates on each
//! request (`Request::peer_certs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::TlsMaterial;

/// Longest a TLS handshake may take before the connection is dropped (a
/// peer that opens connections and sends nothing holds no task for long).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why TLS material is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM section that does not parse.
    #[error("{what}: {message}")]
    Pem {
        /// Which file (ca, cert, key).
        what: &'static str,
        /// The parser's message (never key bytes).
        message: String,
    },
    /// rustls refused the configuration (key does not match, no CA...).
    #[error("tls configuration: {0}")]
    Config(String),
}

/// The DNS subject alternative name of member `id`'s certificate.
pub fn member_name(id: u64) -> String {
    format!("node-{id}.haven")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: "no CERTIFICATE section".into(),
        });
    }
    Ok(certs)
}

fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The message of pki-types' PEM errors names the section, not bytes.
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: "key",
        message: e.to_string(),
    })
}

/// A rustls server configuration that requires a client certificate
/// chaining to `m.ca`, serving `m.cert`/`m.key`, ALPN h2.
pub fn server_config(m: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("ca", &m.ca)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Config(format!("ca: {e}")))?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs("cert", &m.cert)?, key(m.key.as_bytes())?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// tonic's client TLS for talking to a server named `server_name`:
/// verified against `m.ca`, presenting `m.cert`/`m.key`.
pub fn client_config(m: &TlsMaterial, server_name: &str) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&m.ca))
        .identity(tonic::transport::Identity::from_pem(
            &m.cert,
            m.key.as_bytes(),
        ))
        .domain_name(server_name)
}

/// Checks that the certificates carry what they must before the server
/// starts (tonic's client config only fails at the first connect).
pub fn check_client_material(m: &TlsMaterial) -> Result<(), TlsError> {
    certs("ca", &m.ca)?;
    certs("cert", &m.cert)?;
    key(m.key.as_bytes())?;
    Ok(())
}

/// Whether the leaf of `peer_certs` (already verified against the CA
/// during the handshake) is valid for [`member_name`]`(id)`.
pub fn peer_is(peer_certs: &[CertificateDer<'static>], id: u64) -> bool {
    let Some(leaf) = peer_certs.first() else {
        return false;
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(member_name(id)) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

/// Accepts TCP connections on `listener` and completes the TLS handshake
/// of each on its own task (a slow client stalls no other); finished
/// streams come out of the returned stream, for tonic's
/// `serve_with_incoming`. Refused handshakes are counted with
/// `listener` as label. Ends when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    label: &'static str,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                () = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        let reason = handshake_reason(&e);
                        tracing::warn!(%addr, listener = label, reason, error = %e, "TLS handshake refused");
                        metrics::counter!(crate::telemetry::TLS_HANDSHAKE_FAILURES,
                            "listener" => label, "reason" => reason)
                        .increment(1);
                    }
                    Err(_) => {
                        tracing::debug!(%addr, listener = label, "TLS handshake timed out");
                        metrics::counter!(crate::telemetry::TLS_HANDSHAKE_FAILURES,
                            "listener" => label, "reason" => "timeout")
                        .increment(1);
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A stable label for a failed handshake.
fn handshake_reason(e: &std::io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "io";
    };
    match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => "unknown_ca",
        rustls::Error::InvalidCertificate(_) => "bad_certificate",
        rustls::Error::NoCertificatesPresented => "no_certificate",
        _ => "protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert_eq!(member_name(7), "node-7.haven");
        assert!(!peer_is(&[], 1), "no certificate, no identity");
        assert!(!peer_is(&[CertificateDer::from(vec![1, 2, 3])], 1));
    }
}
