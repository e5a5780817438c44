//! amqplib (Node's AMQP 0-9-1 client) against the real `levee` binary: a smoke test of publish
//! with confirms, consume with prefetch, ack, and properties, so the AMQP front end is known not
//! to be tuned to one client library.

mod common;

use std::process::Command;

use common::Server;
use common::amqp::{assert_ok, node_modules, root};

#[test]
fn amqplib_publishes_with_confirms_and_consumes() {
    let server = Server::start();
    let out = Command::new("node")
        .arg(root().join("crates/levee/tests/amqp/amqplib_smoke.js"))
        .arg(server.amqp.port().to_string())
        .env("NODE_PATH", node_modules())
        .output()
        .expect("running node");
    assert_ok("amqplib smoke test", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok 50 messages, 0 left"));
}
