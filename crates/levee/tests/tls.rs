//! TLS on every listener against the real binary, with certificates made in the test: the native
//! client, an HTTP client over rustls (hyper), the CLI, a client that does not trust the CA,
//! mTLS (the client certificate names the user), and bad certificate files refused at start.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::pki::{Pki, login, tls_section, user};
use common::{Server, memory_queue, serve_expecting_exit};
use futures::StreamExt;
use http_body_util::BodyExt;
use levee_client::{Client, ClientError, ClientOptions, ErrorCode, Message, TlsOptions};
use levee_proto::Overflow;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const ADMIN: &str = "{ actions = [\"admin\"] }";

fn server_with(dir: &Path, config: &str) -> Server {
    let path = dir.join("levee.toml");
    std::fs::write(&path, config).unwrap();
    Server::start_with(&["--config", path.to_str().unwrap()])
}

fn tls(ca: &Path, client: Option<&(std::path::PathBuf, std::path::PathBuf)>) -> TlsOptions {
    TlsOptions::new(Some(ca), client.map(|(c, k)| (c.as_path(), k.as_path())))
        .unwrap()
        .server_name("localhost")
}

fn rustls_client(
    ca: &Path,
    client: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match client {
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    }
}

/// An HTTPS request with hyper over tokio-rustls: (status, body).
async fn https(
    server: &Server,
    config: rustls::ClientConfig,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(server.http)
        .await
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some((u, p)) = auth {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req = req.header("authorization", format!("Basic {b}"));
    }
    let resp = sender
        .send_request(
            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn opts_tls(base: ClientOptions, t: TlsOptions) -> ClientOptions {
    ClientOptions {
        tls: Some(t),
        connect_timeout: Duration::from_secs(10),
        ..base
    }
}

#[tokio::test]
async fn native_http_and_cli_speak_tls_and_an_untrusting_client_fails() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let other = Pki::new(dir.path(), "other");
    let server = server_with(
        dir.path(),
        &(user("admin", Some("pw"), &[ADMIN]) + &tls_section(&pki, false)),
    );
    // Native client over TLS: a message goes through.
    let c = Client::connect(
        server.wire,
        opts_tls(login("admin", "pw"), tls(&pki.ca, None)),
    )
    .await
    .unwrap();
    c.declare("jobs", memory_queue(Overflow::Reject, 10, 1 << 20))
        .await
        .unwrap();
    let p = c
        .producer("jobs", levee_client::ProducerOptions::default())
        .await
        .unwrap();
    p.send(Message::new("over tls")).await.unwrap();
    let mut consumer = c
        .consumer("jobs", levee_client::ConsumerOptions::default())
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&d.payload()[..], b"over tls");
    d.ack().unwrap();

    // A client that does not trust the CA fails; so does a plaintext one.
    let e = Client::connect(
        server.wire,
        opts_tls(login("admin", "pw"), tls(&other.ca, None)),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    let plain = ClientOptions {
        connect_timeout: Duration::from_secs(10),
        ..login("admin", "pw")
    };
    assert!(Client::connect(server.wire, plain).await.is_err());

    // HTTPS with hyper over rustls.
    let cfg = || rustls_client(&pki.ca, None);
    assert_eq!(
        https(&server, cfg(), "GET", "/healthz", None)
            .await
            .unwrap()
            .0,
        200
    );
    let (status, body) = https(&server, cfg(), "GET", "/api/queues", Some(("admin", "pw")))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"jobs\""), "{body}");
    assert_eq!(
        https(&server, cfg(), "GET", "/api/queues", None)
            .await
            .unwrap()
            .0,
        401
    );
    assert!(
        https(
            &server,
            rustls_client(&other.ca, None),
            "GET",
            "/healthz",
            None
        )
        .await
        .is_err(),
        "an untrusted server certificate must fail the handshake"
    );

    // The CLI: top-level options before the subcommand, the password from LEVEE_PASSWORD.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["--addr", &format!("localhost:{}", server.wire.port())])
        .arg("--tls-ca")
        .arg(&pki.ca)
        .args(["--user", "admin", "queue", "list"])
        .env("LEVEE_PASSWORD", "pw")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("jobs"), "{stdout}");
}

#[tokio::test]
async fn a_client_certificate_names_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let config = user("admin", Some("pw"), &[ADMIN])
        + &user(
            "encoder",
            None,
            &["{ queues = \"video.*\", actions = [\"publish\"] }"],
        )
        + &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            pki.cert.display(),
            pki.key.display(),
            pki.ca.display()
        );
    let server = server_with(dir.path(), &config);
    let encoder = pki.client("encoder", None);
    let by_uri = pki.client("some-host.example", Some("encoder"));
    let mallory = pki.client("mallory", None);
    let no_login = || ClientOptions {
        reconnect: None,
        ..ClientOptions::default()
    };
    let admin = Client::connect(
        server.wire,
        opts_tls(login("admin", "pw"), tls(&pki.ca, Some(&encoder))),
    )
    .await;
    // The certificate says encoder, the credentials admin: refused.
    assert!(admin.is_err());

    for cert in [&encoder, &by_uri] {
        let c = Client::connect(server.wire, opts_tls(no_login(), tls(&pki.ca, Some(cert))))
            .await
            .unwrap();
        let e = c
            .declare("video.hd", memory_queue(Overflow::Reject, 10, 1 << 20))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Server {
                    code: ErrorCode::AccessDenied,
                    ..
                }
            ),
            "{e}"
        );
    }
    let e = Client::connect(
        server.wire,
        opts_tls(no_login(), tls(&pki.ca, Some(&mallory))),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Server {
                code: ErrorCode::AuthFailed,
                ..
            }
        ),
        "{e}"
    );
    // Without a certificate the handshake fails (client_ca requires one by default).
    assert!(
        Client::connect(
            server.wire,
            opts_tls(login("admin", "pw"), tls(&pki.ca, None))
        )
        .await
        .is_err()
    );
    // HTTP: the certificate's user, no Authorization header.
    let (status, _) = https(
        &server,
        rustls_client(&pki.ca, Some(&encoder)),
        "GET",
        "/api/queues",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, body) = https(
        &server,
        rustls_client(&pki.ca, Some(&encoder)),
        "GET",
        "/metrics",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn a_plaintext_listener_is_kept_only_on_loopback_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let base = user("admin", Some("pw"), &[ADMIN]) + &tls_section(&pki, false);
    let public = dir.path().join("public.toml");
    std::fs::write(
        &public,
        format!("{base}plaintext_loopback = \"0.0.0.0:0\"\n"),
    )
    .unwrap();
    let (ok, stderr) = serve_expecting_exit(
        &dir.path().join("d1"),
        &["--config", public.to_str().unwrap()],
    );
    assert!(!ok && stderr.contains("loopback"), "{stderr}");

    let path = dir.path().join("levee.toml");
    std::fs::write(
        &path,
        format!("{base}plaintext_loopback = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let mut child = common::serve_command(
        &dir.path().join("d2"),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--config", path.to_str().unwrap()],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let addr: std::net::SocketAddr = lines
        .by_ref()
        .map(Result::unwrap)
        .find_map(|l| {
            l.strip_prefix("levee: plaintext wire listening on ")
                .map(str::to_string)
        })
        .expect("the plaintext listener's line")
        .parse()
        .unwrap();
    std::thread::spawn(move || for _ in lines {});
    let c = Client::connect(addr, login("admin", "pw")).await;
    let wrong = Client::connect(addr, login("admin", "nope")).await;
    child.kill().unwrap();
    child.wait().unwrap();
    c.expect("plaintext login on loopback");
    assert!(wrong.is_err(), "logins still apply");
}

#[tokio::test]
async fn sighup_swaps_the_certificates_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old = Pki::new(dir.path(), "old");
    let new = Pki::new(dir.path(), "new");
    let users = user("admin", Some("pw"), &[ADMIN]);
    let path = dir.path().join("levee.toml");
    std::fs::write(&path, users.clone() + &tls_section(&old, false)).unwrap();
    let server = Server::start_with(&["--config", path.to_str().unwrap()]);
    let open = Client::connect(
        server.wire,
        opts_tls(login("admin", "pw"), tls(&old.ca, None)),
    )
    .await
    .unwrap();
    std::fs::write(&path, users + &tls_section(&new, false)).unwrap();
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    common::wait_until_async_ok(|| async {
        Client::connect(
            server.wire,
            opts_tls(login("admin", "pw"), tls(&new.ca, None)),
        )
        .await
        .is_ok()
    })
    .await;
    assert!(
        Client::connect(
            server.wire,
            opts_tls(login("admin", "pw"), tls(&old.ca, None))
        )
        .await
        .is_err(),
        "new connections get the new certificate"
    );
    open.list_queues()
        .await
        .expect("the open connection goes on");
}

#[tokio::test]
async fn an_over_cap_tls_connection_is_closed_not_left_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let path = dir.path().join("levee.toml");
    std::fs::write(
        &path,
        user("admin", Some("pw"), &[ADMIN]) + &tls_section(&pki, false),
    )
    .unwrap();
    let server =
        Server::start_with(&["--config", path.to_str().unwrap(), "--max-connections", "1"]);
    let first = Client::connect(
        server.wire,
        opts_tls(login("admin", "pw"), tls(&pki.ca, None)),
    )
    .await
    .unwrap();
    let t = std::time::Instant::now();
    let second = Client::connect(
        server.wire,
        opts_tls(login("admin", "pw"), tls(&pki.ca, None)),
    )
    .await;
    assert!(second.is_err(), "over the cap");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "refused at once, not timed out"
    );
    first.list_queues().await.unwrap();
}

#[test]
fn missing_unreadable_or_mismatched_certificates_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let other = Pki::new(dir.path(), "other");
    let cases = [
        (dir.path().join("absent.pem"), pki.key.clone(), "absent.pem"),
        (pki.key.clone(), pki.key.clone(), "no certificate"),
        (pki.cert.clone(), other.key.clone(), "does not go with"),
    ];
    for (i, (cert, key, expect)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "{}[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                user("admin", Some("pw"), &[ADMIN]),
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let (ok, stderr) = serve_expecting_exit(
            &dir.path().join("data"),
            &["--config", path.to_str().unwrap()],
        );
        assert!(!ok, "started with {cert:?} / {key:?}");
        assert!(stderr.contains(expect), "expected {expect:?} in: {stderr}");
    }
}
