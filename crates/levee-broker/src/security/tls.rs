//! TLS for every listener: the `[tls]` settings, loading PEM certificates and keys into a rustls
//! server config, the one acceptor every front end uses ([`Acceptor`]: plain or TLS), the stream
//! it yields ([`MaybeTls`]) and the Levee user a client certificate names.
//!
//! # Invariants
//! - A certificate or key that is missing, unreadable, empty or not matching is a
//!   [`SecurityError`] naming the file, at start and at reload (a failed reload keeps the
//!   certificates in use).
//! - The TLS handshake runs in the connection's own task, with a deadline
//!   ([`HANDSHAKE_TIMEOUT`]), never in the accept loop: a slow or silent peer holds only its own
//!   connection slot.
//! - With `client_ca`, a client certificate must chain to it (unless `require_client_cert =
//!   false`, then one is verified only when presented); its user is the first SAN URI
//!   `user:NAME`, else the subject CN.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{Security, SecurityError};

/// Longest a TLS handshake may take from accept.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[tls]` section of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file of the CA(s) client certificates must chain to (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether a client must present a certificate (default true). False lets
    /// clients without one log in with a password.
    #[serde(default = "yes")]
    pub require_client_cert: bool,
    /// A plaintext native-protocol listener kept beside the TLS ones, for local tools; it must be
    /// a loopback address (logins and permissions still apply).
    #[serde(default)]
    pub plaintext_loopback: Option<SocketAddr>,
}

fn yes() -> bool {
    true
}

fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let bad = |reason: String| SecurityError::TlsFile {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, SecurityError> {
    let bad = |reason: String| SecurityError::TlsFile {
        what: "key",
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(format!("no private key in the file: {e}")))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads `cfg`'s files into a rustls server config (ALPN unset: each listener speaks one
/// protocol).
pub(crate) fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, SecurityError> {
    let certs = read_certs(&cfg.cert, "certificate")?;
    let key = read_key(&cfg.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SecurityError::Tls(e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca, "client CA")? {
                roots.add(c).map_err(|e| SecurityError::TlsFile {
                    what: "client CA",
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let v = if cfg.require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                v.build().map_err(|e| SecurityError::Tls(e.to_string()))?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| SecurityError::TlsFile {
            what: "key",
            path: cfg.key.clone(),
            reason: format!("does not go with certificate {}: {e}", cfg.cert.display()),
        })?;
    Ok(Arc::new(config))
}

/// A stream accepted by an [`Acceptor`]: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub enum MaybeTls {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (server side).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A connection accepted and, on a TLS listener, past its TLS handshake.
#[derive(Debug)]
pub struct Accepted {
    /// The stream to speak the listener's protocol on.
    pub stream: MaybeTls,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The Levee user named by the client certificate (mTLS), if one was presented.
    pub cert_user: Option<String>,
}

/// Turns accepted TCP sockets into streams: as they are (plain), or through a TLS handshake with
/// the broker's current certificates (they change on reload; connections already open keep the
/// ones they started with). Cheap to clone; one per listener.
#[derive(Clone)]
pub struct Acceptor {
    tls: Option<Security>,
}

impl Acceptor {
    /// The acceptor a listener of `security`'s broker uses: TLS if `[tls]` is configured.
    pub fn new(security: &Security) -> Acceptor {
        Acceptor {
            tls: security.tls_enabled().then(|| security.clone()),
        }
    }

    /// A plaintext acceptor, whatever the config (for an explicitly configured loopback
    /// listener, and tests).
    pub fn plain() -> Acceptor {
        Acceptor { tls: None }
    }

    /// Whether this acceptor speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Sets TCP nodelay and, for TLS, runs the handshake (at most [`HANDSHAKE_TIMEOUT`]).
    ///
    /// # Cancel safety
    /// Not cancel-safe: cancelled mid-handshake, the connection is dropped (closed).
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Accepted> {
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr()?;
        let Some(security) = &self.tls else {
            return Ok(Accepted {
                stream: MaybeTls::Plain(tcp),
                peer,
                cert_user: None,
            });
        };
        let Some(config) = security.tls_config() else {
            return Err(io::Error::other("TLS is not configured"));
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let cert_user = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| cert_user(c.as_ref()));
        Ok(Accepted {
            stream: MaybeTls::Tls(Box::new(tls)),
            peer,
            cert_user,
        })
    }
}

/// The Levee user a (verified) client certificate names: its first SAN URI `user:NAME`, else its
/// subject's common name. `None` if it has neither or does not parse.
pub(crate) fn cert_user(der: &[u8]) -> Option<String> {
    let cert = Der::new(der).next_tlv()?;
    let mut tbs = Der::new(cert.content).next_tlv()?.children();
    if tbs.next_tlv()?.tag == 0xa0 {
        tbs.next_tlv()?; // that was the version; this is the serial
    }
    let _sig_alg = tbs.next_tlv()?;
    let _issuer = tbs.next_tlv()?;
    let _validity = tbs.next_tlv()?;
    let subject = tbs.next_tlv()?;
    let _spki = tbs.next_tlv()?;
    let mut san_user = None;
    while let Some(field) = tbs.next_tlv() {
        if field.tag != 0xa3 {
            continue;
        }
        let mut exts = field.children().next_tlv()?.children();
        while let Some(ext) = exts.next_tlv() {
            let mut parts = ext.children();
            let oid = parts.next_tlv()?;
            if oid.content != [0x55, 0x1d, 0x11] {
                continue;
            }
            let mut value = parts.next_tlv()?;
            if value.tag == 0x01 {
                value = parts.next_tlv()?; // the critical flag
            }
            let mut names = Der::new(value.content).next_tlv()?.children();
            while let Some(name) = names.next_tlv() {
                if name.tag == 0x86
                    && let Ok(uri) = std::str::from_utf8(name.content)
                    && let Some(user) = uri.strip_prefix("user:")
                    && !user.is_empty()
                {
                    san_user.get_or_insert_with(|| user.to_string());
                }
            }
        }
    }
    if san_user.is_some() {
        return san_user;
    }
    let mut rdns = subject.children();
    while let Some(set) = rdns.next_tlv() {
        let mut attrs = set.children();
        while let Some(attr) = attrs.next_tlv() {
            let mut parts = attr.children();
            let oid = parts.next_tlv()?;
            if oid.content == [0x55, 0x04, 0x03] {
                let value = parts.next_tlv()?;
                return std::str::from_utf8(value.content).ok().map(str::to_string);
            }
        }
    }
    None
}

/// A minimal DER reader: enough to walk a certificate's structure (definite lengths only).
struct Der<'a> {
    rest: &'a [u8],
}

struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
}

impl<'a> Tlv<'a> {
    fn children(&self) -> Der<'a> {
        Der::new(self.content)
    }
}

impl<'a> Der<'a> {
    fn new(rest: &'a [u8]) -> Der<'a> {
        Der { rest }
    }

    fn next_tlv(&mut self) -> Option<Tlv<'a>> {
        let (&tag, rest) = self.rest.split_first()?;
        let (&len0, mut rest) = rest.split_first()?;
        let len = if len0 < 0x80 {
            usize::from(len0)
        } else {
            let n = usize::from(len0 & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |a, &b| (a << 8) | usize::from(b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        self.rest = rest;
        Some(Tlv { tag, content })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, uris: &[&str]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "levee tests");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_user_is_the_san_uri_else_the_common_name() {
        assert_eq!(cert_user(&cert("encoder", &[])).as_deref(), Some("encoder"));
        assert_eq!(
            cert_user(&cert(
                "host.example",
                &["https://x.example/", "user:billing"]
            ))
            .as_deref(),
            Some("billing")
        );
        assert_eq!(
            cert_user(b"\x30\x03\x02\x01"),
            None,
            "garbage parses to nothing"
        );
        assert_eq!(cert_user(&[]), None);
    }

    #[test]
    fn missing_and_mismatched_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let key_a = rcgen::KeyPair::generate().unwrap();
        let key_b = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key_a)
            .unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let other = dir.path().join("other.pem");
        std::fs::write(&cert, c.pem()).unwrap();
        std::fs::write(&key, key_a.serialize_pem()).unwrap();
        std::fs::write(&other, key_b.serialize_pem()).unwrap();
        let cfg = |cert: &Path, key: &Path| TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            require_client_cert: true,
            plaintext_loopback: None,
        };
        assert!(server_config(&cfg(&cert, &key)).is_ok());
        let e = server_config(&cfg(&dir.path().join("nope.pem"), &key)).unwrap_err();
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let e = server_config(&cfg(&key, &key)).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        let e = server_config(&cfg(&cert, &cert)).unwrap_err();
        assert!(e.to_string().contains("no private key"), "{e}");
        let e = server_config(&cfg(&cert, &other)).unwrap_err();
        assert!(e.to_string().contains("does not go with"), "{e}");
    }
}
