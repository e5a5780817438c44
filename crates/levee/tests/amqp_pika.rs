//! pika (Python's RabbitMQ client) against the real `levee` binary over AMQP 0-9-1: each test
//! runs one case of `tests/amqp/pika_cases.py` (declare with arguments, confirms, fair dispatch,
//! nack/requeue, dead letters with `x-death`, TTL, priority, mandatory returns, exclusive
//! server-named queues, properties, heartbeats, protocol and channel errors, fanout / topic /
//! headers / direct routing, returns and dead letters through exchanges, a message routed to a
//! full queue and a roomy one) on a fresh server.

mod common;

use std::process::Command;

use common::Server;
use common::amqp::{assert_ok, python, root};

fn case(name: &str) {
    let server = Server::start();
    let out = Command::new(python())
        .arg(root().join("crates/levee/tests/amqp/pika_cases.py"))
        .arg(server.amqp.port().to_string())
        .arg(name)
        .output()
        .expect("running python");
    assert_ok(name, &out);
}

#[test]
fn declare_with_arguments_and_confirms() {
    case("declare_with_arguments_and_confirms");
}

#[test]
fn mismatched_redeclare_is_406() {
    case("mismatched_redeclare_is_406");
}

#[test]
fn fair_dispatch_with_prefetch_one() {
    case("fair_dispatch_with_prefetch_one");
}

#[test]
fn nack_requeue_redelivers() {
    case("nack_requeue_redelivers");
}

#[test]
fn reject_dead_letters_with_x_death() {
    case("reject_dead_letters_with_x_death");
}

#[test]
fn ttl_expires_messages() {
    case("ttl_expires_messages");
}

#[test]
fn priority_orders_deliveries() {
    case("priority_orders_deliveries");
}

#[test]
fn mandatory_unroutable_is_returned() {
    case("mandatory_unroutable_is_returned");
}

#[test]
fn server_named_exclusive_queues() {
    case("server_named_exclusive_queues");
}

#[test]
fn properties_roundtrip_unchanged() {
    case("properties_roundtrip_unchanged");
}

#[test]
fn heartbeats_keep_alive_and_silence_is_dropped() {
    case("heartbeats_keep_alive_and_silence_is_dropped");
}

#[test]
fn wrong_protocol_header_gets_the_right_one() {
    case("wrong_protocol_header_gets_the_right_one");
}

#[test]
fn channel_errors_close_only_the_channel() {
    case("channel_errors_close_only_the_channel");
}

#[test]
fn fanout_topic_headers_and_direct_routing() {
    case("fanout_topic_headers_and_direct_routing");
}

#[test]
fn mandatory_return_through_an_exchange() {
    case("mandatory_return_through_an_exchange");
}

#[test]
fn dead_letter_exchange_with_x_death() {
    case("dead_letter_exchange_with_x_death");
}

#[test]
fn one_full_target_nacks_under_reject_and_acks_under_drop_head() {
    case("one_full_target_nacks_under_reject_and_acks_under_drop_head");
}

#[test]
fn consumer_priorities_serve_the_highest_first() {
    case("consumer_priorities_serve_the_highest_first");
}

#[test]
fn single_active_consumer_takes_over_in_order() {
    case("single_active_consumer_takes_over_in_order");
}

#[test]
fn unused_queue_expires() {
    case("unused_queue_expires");
}
