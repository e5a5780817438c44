//! Users, permissions and TLS on the AMQP listener, with pika against the real binary: a wrong
//! password is refused (403 ACCESS_REFUSED), a publish-only user's consume closes only its
//! channel, and with `[tls]` the AMQP port speaks TLS (trusted CA: works; untrusted: fails).

mod common;

use common::amqp::{assert_ok, python, root};
use common::pki::{Pki, tls_section, user};

fn case(name: &str, tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let mut cfg = user("admin", Some("a"), &["{ actions = [\"admin\"] }"])
        + &user(
            "encoder",
            Some("e"),
            &["{ queues = \"video.*\", actions = [\"publish\"] }"],
        );
    if tls {
        cfg += &tls_section(&pki, false);
    }
    let path = dir.path().join("levee.toml");
    std::fs::write(&path, cfg).unwrap();
    let server = common::Server::start_with(&["--config", path.to_str().unwrap()]);
    let out = std::process::Command::new(python())
        .arg(root().join("crates/levee/tests/amqp/security_cases.py"))
        .arg(server.amqp.port().to_string())
        .arg(name)
        .arg(&pki.ca)
        .output()
        .unwrap();
    assert_ok(name, &out);
}

#[test]
fn wrong_password_is_refused() {
    case("wrong_password_is_refused", false);
}

#[test]
fn publisher_cannot_consume_and_the_connection_survives() {
    case(
        "publisher_cannot_consume_and_the_connection_survives",
        false,
    );
}

#[test]
fn tls_login_and_publish() {
    case("tls_login_and_publish", true);
}

#[test]
fn tls_untrusted_ca_fails() {
    case("tls_untrusted_ca_fails", true);
}
