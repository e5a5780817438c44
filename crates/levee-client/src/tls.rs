//! TLS for the client: [`TlsOptions`] (which CA to trust, an optional client certificate for
//! mTLS, the server name to verify) and the handshake over a connected socket.
//!
//! Invariant: the server's certificate is always verified (against the given CA file, or the
//! system's roots); there is no "accept anything" mode.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use crate::error::ClientError;

/// How the client speaks TLS to the broker.
#[derive(Clone)]
pub struct TlsOptions {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn bad(what: &str, path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::InvalidOption(format!("TLS {what} {}: {e}", path.display()))
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = std::fs::read(path).map_err(|e| bad(what, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(what, path, e))?;
    if certs.is_empty() {
        return Err(bad(what, path, "no certificate in the file"));
    }
    Ok(certs)
}

impl TlsOptions {
    /// Trusts the CAs in the PEM file `ca` (`None`: the system's root certificates), and presents
    /// `client` = (certificate chain PEM, key PEM) when given (mTLS).
    pub fn new(
        ca: Option<&Path>,
        client: Option<(&Path, &Path)>,
    ) -> Result<TlsOptions, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(ca) => {
                for c in certs(ca, "CA file")? {
                    roots.add(c).map_err(|e| bad("CA file", ca, e))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(ClientError::InvalidOption(
                        "no system root certificates found: give a CA file".into(),
                    ));
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::InvalidOption(format!("TLS: {e}")))?
        .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => {
                let chain = certs(cert, "client certificate")?;
                let pem = std::fs::read(key).map_err(|e| bad("client key", key, e))?;
                let key_der =
                    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad("client key", key, e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| bad("client key", key, e))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(TlsOptions {
            config: Arc::new(config),
            server_name: None,
        })
    }

    /// The rustls configuration (roots and client certificate) for other connections made the
    /// same way (the cluster's links between nodes).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// The name the server's certificate must carry (default: the IP address connected to).
    pub fn server_name(mut self, name: impl Into<String>) -> TlsOptions {
        self.server_name = Some(name.into());
        self
    }

    /// Runs the TLS handshake on `tcp`; `fallback` names the server when no name was set.
    pub(crate) async fn connect(
        &self,
        tcp: TcpStream,
        fallback: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let name = self.server_name.as_deref().unwrap_or(fallback);
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| ClientError::InvalidOption(format!("TLS server name {name:?}: {e}")))?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Io(format!("TLS handshake: {e}")))
    }
}
