//! Certificates made in the test (rcgen): a CA, a server certificate for localhost / 127.0.0.1
//! signed by it, client certificates naming a Levee user; and a config file with users and TLS.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA and the files of a server certificate it signed, in `dir`.
pub(crate) struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A CA named `name` and a server certificate for `localhost` and `127.0.0.1`.
    pub(crate) fn new(dir: &Path, name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "levee test server");
        let cert = p.signed_by(&key, &issuer).unwrap();
        let write = |file: &str, text: String| {
            let path = dir.join(format!("{name}-{file}"));
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            dir: dir.to_path_buf(),
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("server.pem", cert.pem()),
            key: write("server-key.pem", key.serialize_pem()),
            issuer,
        }
    }

    /// A client certificate with subject CN `cn` (and a SAN URI `user:NAME` if `uri_user`):
    /// (certificate file, key file).
    pub(crate) fn client(&self, cn: &str, uri_user: Option<&str>) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(u) = uri_user {
            p.subject_alt_names
                .push(rcgen::SanType::URI(format!("user:{u}").try_into().unwrap()));
        }
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let c = self.dir.join(format!("client-{cn}.pem"));
        let k = self.dir.join(format!("client-{cn}-key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// The argon2id hash of `password`, as `levee passwd` prints it (reading a pipe).
pub(crate) fn hash(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning levee passwd");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "levee passwd failed");
    let h = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        h.starts_with("$argon2id$"),
        "not an argon2id PHC string: {h}"
    );
    h
}

/// A `[[users]]` entry: `name`, the hash of `password` (none: certificate-only), and
/// `permissions` as TOML (e.g. `{ queues = "video.*", actions = ["publish"] }`).
pub(crate) fn user(name: &str, password: Option<&str>, permissions: &[&str]) -> String {
    let mut s = format!("[[users]]\nname = \"{name}\"\n");
    if let Some(p) = password {
        s += &format!("password_hash = \"{}\"\n", hash(p));
    }
    s += &format!("permissions = [{}]\n", permissions.join(", "));
    s
}

/// The `[tls]` section for `pki` (with `client_ca` for mTLS if `mtls`).
pub(crate) fn tls_section(pki: &Pki, mtls: bool) -> String {
    let mut s = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.cert.display(),
        pki.key.display()
    );
    if mtls {
        s += &format!(
            "client_ca = \"{}\"\nrequire_client_cert = false\n",
            pki.ca.display()
        );
    }
    s
}

/// Client options with these credentials (no reconnection).
pub(crate) fn login(user: &str, password: &str) -> levee_client::ClientOptions {
    levee_client::ClientOptions {
        reconnect: None,
        credentials: Some(levee_client::Credentials {
            user: user.into(),
            password: password.into(),
        }),
        ..levee_client::ClientOptions::default()
    }
}
