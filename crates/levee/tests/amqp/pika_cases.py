"""pika against a real levee: one case per invocation, `pika_cases.py PORT CASE`.

Each case raises (non-zero exit, traceback on stderr) on any deviation; called by
crates/levee/tests/amqp_pika.rs.
"""
import socket
import sys
import time

import pika
from pika.exceptions import ChannelClosedByBroker, NackError, UnroutableError

PORT = int(sys.argv[1])


def connect(**kw):
    return pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", PORT, connection_attempts=3, retry_delay=0.5, **kw)
    )


def expect_close(code, fn, contains=None):
    try:
        fn()
    except ChannelClosedByBroker as e:
        assert e.reply_code == code, (e.reply_code, e.reply_text)
        if contains:
            assert contains in e.reply_text, e.reply_text
        return e.reply_text
    raise AssertionError(f"expected a channel close {code}")


def get_body(ch, q, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m, p, b = ch.basic_get(q, auto_ack=True)
        if m is not None:
            return p, b
        time.sleep(0.05)
    raise AssertionError(f"nothing arrived on {q}")


def declare_with_arguments_and_confirms():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    ok = ch.queue_declare(
        "bounded",
        durable=True,
        arguments={"x-max-length": 2, "x-overflow": "reject-publish", "x-message-ttl": 60000},
    )
    assert ok.method.queue == "bounded"
    ch.basic_publish("", "bounded", b"1")
    ch.basic_publish("", "bounded", b"2")
    try:
        ch.basic_publish("", "bounded", b"3")
        raise AssertionError("the third publish into a full reject-publish queue was acked")
    except NackError:
        pass
    assert ch.queue_declare("bounded", passive=True).method.message_count == 2
    c.close()


def mismatched_redeclare_is_406():
    c = connect()
    ch = c.channel()
    ch.queue_declare("q406", durable=True, arguments={"x-max-length": 10})
    text = expect_close(
        406, lambda: ch.queue_declare("q406", durable=True, arguments={"x-max-length": 20})
    )
    assert "max_messages" in text and "10" in text and "20" in text, text
    # Only the channel closed: the connection goes on.
    ch2 = c.channel()
    ch2.queue_declare("q406", durable=True, arguments={"x-max-length": 10})
    c.close()


def fair_dispatch_with_prefetch_one():
    c = connect()
    setup = c.channel()
    setup.queue_declare("fair", durable=True)
    for i in range(6):
        setup.basic_publish("", "fair", str(i).encode())
    a = c.channel()
    b = c.channel()
    a.basic_qos(prefetch_count=1)
    b.basic_qos(prefetch_count=1)
    got_a, got_b = [], []
    a.basic_consume("fair", lambda ch, m, p, body: got_a.append((m.delivery_tag, body)))
    b.basic_consume(
        "fair",
        lambda ch, m, p, body: (got_b.append(body), ch.basic_ack(m.delivery_tag)),
    )
    deadline = time.time() + 15
    while len(got_a) + len(got_b) < 6 and time.time() < deadline:
        c.process_data_events(time_limit=0.1)
    # a never acked: it holds exactly one message; b took all the others.
    assert len(got_a) == 1, got_a
    assert len(got_b) == 5, got_b
    a.basic_ack(got_a[0][0])
    c.close()


def nack_requeue_redelivers():
    c = connect()
    ch = c.channel()
    ch.queue_declare("requeue", durable=True)
    ch.basic_publish("", "requeue", b"again")
    m = None
    deadline = time.time() + 10
    while m is None and time.time() < deadline:
        m, _, body = ch.basic_get("requeue")
    assert not m.redelivered
    ch.basic_nack(m.delivery_tag, requeue=True)
    m2 = None
    while m2 is None and time.time() < deadline:
        m2, _, body2 = ch.basic_get("requeue")
    assert m2.redelivered and body2 == b"again", (m2, body2)
    ch.basic_ack(m2.delivery_tag)
    c.close()


def reject_dead_letters_with_x_death():
    c = connect()
    ch = c.channel()
    ch.queue_declare("dlq", durable=True)
    ch.queue_declare(
        "work",
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"},
    )
    ch.basic_publish("", "work", b"bad", pika.BasicProperties(headers={"job": "17"}))
    m = None
    deadline = time.time() + 10
    while m is None and time.time() < deadline:
        m, _, _ = ch.basic_get("work")
    ch.basic_reject(m.delivery_tag, requeue=False)
    props, body = get_body(ch, "dlq")
    assert body == b"bad"
    deaths = props.headers["x-death"]
    assert isinstance(deaths, list) and len(deaths) == 1, props.headers
    d = deaths[0]
    assert d["reason"] == b"rejected" or d["reason"] == "rejected", d
    assert d["queue"] in (b"work", "work"), d
    assert d["count"] == 1, d
    assert props.headers["job"] in (b"17", "17"), props.headers
    c.close()


def ttl_expires_messages():
    c = connect()
    ch = c.channel()
    ch.queue_declare("ttl", durable=True, arguments={"x-message-ttl": 100})
    ch.basic_publish("", "ttl", b"short")
    ch.queue_declare("ttl-msg", durable=True)
    ch.basic_publish("", "ttl-msg", b"short", pika.BasicProperties(expiration="100"))
    ch.basic_publish("", "ttl-msg", b"long", pika.BasicProperties(expiration="600000"))
    time.sleep(1.0)
    m, _, _ = ch.basic_get("ttl", auto_ack=True)
    assert m is None, "a message outlived x-message-ttl"
    _, body = get_body(ch, "ttl-msg")
    assert body == b"long", body
    c.close()


def priority_orders_deliveries():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("prio", durable=True, arguments={"x-max-priority": 10})
    for p in [1, 9, 5]:
        ch.basic_publish("", "prio", str(p).encode(), pika.BasicProperties(priority=p))
    order = [get_body(ch, "prio")[1] for _ in range(3)]
    assert order == [b"9", b"5", b"1"], order
    c.close()


def mandatory_unroutable_is_returned():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    try:
        ch.basic_publish("", "no-such-queue", b"lost", mandatory=True)
        raise AssertionError("an unroutable mandatory publish was not returned")
    except UnroutableError as e:
        assert e.messages[0].body == b"lost"
    # Without mandatory it is confirmed (and dropped).
    ch.basic_publish("", "no-such-queue", b"dropped")
    c.close()


def server_named_exclusive_queues():
    owner = connect()
    ch = owner.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    assert q.startswith("amq.gen-"), q
    other = connect()
    och = other.channel()
    expect_close(405, lambda: och.basic_consume(q, lambda *a: None))
    owner.close()
    # The exclusive queue went with its connection.
    och = other.channel()
    deadline = time.time() + 10
    while True:
        try:
            och.queue_declare(q, passive=True)
        except ChannelClosedByBroker as e:
            assert e.reply_code == 404
            break
        assert time.time() < deadline, "exclusive queue outlived its connection"
        time.sleep(0.1)
        och = other.channel()
    other.close()


def properties_roundtrip_unchanged():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("props", durable=True)
    headers = {
        "int": 42,
        "neg": -7,
        "str": "text",
        "bool": True,
        "nested": {"inner": 1, "deep": {"x": "y"}},
        "list": [1, "two", {"three": 3}],
        "big": 2**40,
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers=headers,
        delivery_mode=2,
        priority=3,
        correlation_id="corr-1",
        reply_to="replies",
        expiration="60000",
        message_id="m-1",
        timestamp=1700000000,
        type="job.created",
        user_id="guest",
        app_id="tests",
    )
    ch.basic_publish("", "props", b"{}", props)
    got, body = get_body(ch, "props")
    for name in [
        "content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
        "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id",
    ]:
        assert getattr(got, name) == getattr(props, name), (name, getattr(got, name))
    h = got.headers
    assert h["int"] == 42 and h["neg"] == -7 and h["bool"] is True and h["big"] == 2**40, h
    assert h["str"] in ("text", b"text") and h["nested"]["inner"] == 1, h
    assert h["list"][0] == 1 and h["list"][2]["three"] == 3, h
    c.close()


def heartbeats_keep_alive_and_silence_is_dropped():
    c = connect(heartbeat=1)
    ch = c.channel()
    ch.queue_declare("hb", durable=True)
    # Processing events sends heartbeats: the connection outlives several intervals.
    deadline = time.time() + 4
    while time.time() < deadline:
        c.process_data_events(time_limit=0.2)
    assert c.is_open
    # Silent (no events processed, so no heartbeats): dropped after 2 intervals.
    time.sleep(5)
    try:
        for _ in range(20):
            c.process_data_events(time_limit=0.2)
            ch.basic_publish("", "hb", b"x")
        raise AssertionError("a peer silent for 5 heartbeat intervals was not dropped")
    except (pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError,
            pika.exceptions.ConnectionClosed, pika.exceptions.ChannelWrongStateError):
        pass


def wrong_protocol_header_gets_the_right_one():
    s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    s.sendall(b"AMQP\x01\x01\x00\x0a")
    got = b""
    while len(got) < 8:
        part = s.recv(8 - len(got))
        if not part:
            break
        got += part
    assert got == b"AMQP\x00\x00\x09\x01", got
    assert s.recv(1) == b"", "the server kept the connection open"


def channel_errors_close_only_the_channel():
    c = connect()
    ch = c.channel()
    expect_close(404, lambda: ch.queue_declare("missing", passive=True))
    ch = c.channel()
    # basic.ack has no reply: the close arrives at the next synchronous call.
    expect_close(406, lambda: (ch.basic_ack(99), ch.queue_declare("still-works", durable=False)))
    ch = c.channel()
    expect_close(540, lambda: ch.tx_select())
    ch = c.channel()
    expect_close(540, lambda: ch.basic_qos(prefetch_size=1024))
    ch = c.channel()
    expect_close(403, lambda: ch.queue_declare("amq.reserved"))
    ch = c.channel()
    ch.queue_declare("still-works", durable=False)
    assert c.is_open
    c.close()


def fanout_topic_headers_and_direct_routing():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.exchange_declare("fan", exchange_type="fanout", durable=True)
    for q in ["f1", "f2", "f3"]:
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, "fan")
    ch.basic_publish("fan", "ignored", b"to-all")
    for q in ["f1", "f2", "f3"]:
        m, _, body = ch.basic_get(q, auto_ack=True)
        assert body == b"to-all", (q, body)
        assert m.exchange == "fan" and m.routing_key == "ignored", m

    ch.exchange_declare("logs", exchange_type="topic", durable=True)
    ch.queue_declare("errors", durable=True)
    ch.queue_declare("all-eu", durable=True)
    ch.queue_bind("errors", "logs", routing_key="*.error")
    ch.queue_bind("all-eu", "logs", routing_key="eu.#")
    for key in ["eu.error", "us.error", "eu.info.disk", "us.info"]:
        ch.basic_publish("logs", key, key.encode())
    got = lambda q: sorted(b for b in iter(lambda: ch.basic_get(q, auto_ack=True)[2], None))
    assert got("errors") == [b"eu.error", b"us.error"], "topic *"
    assert got("all-eu") == [b"eu.error", b"eu.info.disk"], "topic #"

    ch.exchange_declare("hdr", exchange_type="headers", durable=True)
    ch.queue_declare("pdf-a4", durable=True)
    ch.queue_declare("pdf-or-a4", durable=True)
    ch.queue_bind("pdf-a4", "hdr", arguments={"x-match": "all", "format": "pdf", "size": "a4"})
    ch.queue_bind("pdf-or-a4", "hdr", arguments={"x-match": "any", "format": "pdf", "size": "a4"})
    for h in [{"format": "pdf", "size": "a4"}, {"format": "pdf"}, {"size": "a3"}]:
        ch.basic_publish("hdr", "", repr(h).encode(), pika.BasicProperties(headers=h))
    assert len(got("pdf-a4")) == 1
    assert len(got("pdf-or-a4")) == 2

    ch.queue_declare("d1", durable=True)
    ch.queue_bind("d1", "amq.direct", routing_key="k1")
    ch.basic_publish("amq.direct", "k1", b"direct")
    assert got("d1") == [b"direct"]
    # A redeclare of another type is refused, naming the difference.
    expect_close(406, lambda: ch.exchange_declare("fan", exchange_type="direct", durable=True))
    c.close()


def mandatory_return_through_an_exchange():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.exchange_declare("nowhere", exchange_type="direct", durable=True)
    try:
        ch.basic_publish("nowhere", "k", b"lost", mandatory=True)
        raise AssertionError("an unroutable mandatory publish was not returned")
    except UnroutableError as e:
        assert e.messages[0].body == b"lost"
        assert e.messages[0].method.reply_code == 312
    ch.basic_publish("nowhere", "k", b"dropped")  # confirmed, dropped
    expect_close(404, lambda: ch.basic_publish("no-such-exchange", "k", b"x"))
    c.close()


def dead_letter_exchange_with_x_death():
    c = connect()
    ch = c.channel()
    ch.exchange_declare("dlx", exchange_type="direct", durable=True)
    ch.queue_declare("dead", durable=True)
    ch.queue_bind("dead", "dlx", routing_key="dead-key")
    ch.queue_declare(
        "jobs-dlx",
        durable=True,
        arguments={"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead-key"},
    )
    ch.basic_publish("", "jobs-dlx", b"doomed")
    m = None
    deadline = time.time() + 10
    while m is None and time.time() < deadline:
        m, _, _ = ch.basic_get("jobs-dlx")
    ch.basic_nack(m.delivery_tag, requeue=False)
    props, body = get_body(ch, "dead")
    assert body == b"doomed"
    d = props.headers["x-death"][0]
    assert d["reason"] in (b"rejected", "rejected") and d["queue"] in (b"jobs-dlx", "jobs-dlx"), d
    assert d["count"] == 1
    c.close()


def one_full_target_nacks_under_reject_and_acks_under_drop_head():
    c = connect()
    ch = c.channel()
    ch.confirm_delivery()
    for name, overflow in [("rej", "reject-publish"), ("drop", "drop-head")]:
        ch.exchange_declare(name, exchange_type="fanout", durable=True)
        ch.queue_declare(name + "-roomy", durable=True)
        ch.queue_declare(name + "-full", durable=True,
                         arguments={"x-max-length": 1, "x-overflow": overflow})
        ch.queue_bind(name + "-roomy", name)
        ch.queue_bind(name + "-full", name)
        ch.basic_publish(name, "", b"first")
    try:
        ch.basic_publish("rej", "", b"second")
        raise AssertionError("a message refused by one target was acked")
    except NackError:
        pass
    ch.basic_publish("drop", "", b"second")  # acked: drop-head made room
    assert ch.queue_declare("rej-roomy", passive=True).method.message_count == 2
    assert ch.queue_declare("drop-full", passive=True).method.message_count == 1
    c.close()


def consumer_priorities_serve_the_highest_first():
    c = connect()
    ch = c.channel()
    ch.queue_declare("prio-consumers", durable=True)
    ch.basic_qos(prefetch_count=2)
    low, high = [], []
    ch.basic_consume("prio-consumers", lambda ch, m, p, b: low.append(b), auto_ack=False)
    ch.basic_consume(
        "prio-consumers", lambda ch, m, p, b: high.append(b), auto_ack=False,
        arguments={"x-priority": 10},
    )
    pub = c.channel()
    pub.confirm_delivery()
    for i in range(3):
        pub.basic_publish("", "prio-consumers", str(i).encode())
    deadline = time.time() + 15
    while len(low) + len(high) < 3 and time.time() < deadline:
        c.process_data_events(time_limit=0.1)
    # The priority-10 consumer takes what its prefetch allows first; only the third message,
    # which it cannot take, goes to the priority-0 one.
    assert high == [b"0", b"1"], (high, low)
    assert low == [b"2"], (high, low)
    bad = c.channel()
    expect_close(
        406,
        lambda: bad.basic_consume(
            "prio-consumers", lambda *a: None, arguments={"x-priority": "high"}
        ),
    )
    c.close()


def single_active_consumer_takes_over_in_order():
    c = connect()
    ch = c.channel()
    ch.queue_declare("sac", durable=True, arguments={"x-single-active-consumer": True})
    first_ch, second_ch = c.channel(), c.channel()
    first, second = [], []
    first_tag = first_ch.basic_consume(
        "sac", lambda ch, m, p, b: (first.append(b), ch.basic_ack(m.delivery_tag))
    )
    second_ch.basic_consume(
        "sac", lambda ch, m, p, b: (second.append(b), ch.basic_ack(m.delivery_tag))
    )
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish("", "sac", str(i).encode())
    deadline = time.time() + 15
    while len(first) < 4 and time.time() < deadline:
        c.process_data_events(time_limit=0.1)
    assert first == [b"0", b"1", b"2", b"3"] and second == [], (first, second)
    # The active consumer leaves: the next one takes over.
    first_ch.basic_cancel(first_tag)
    for i in range(4, 6):
        ch.basic_publish("", "sac", str(i).encode())
    deadline = time.time() + 15
    while len(second) < 2 and time.time() < deadline:
        c.process_data_events(time_limit=0.1)
    assert second == [b"4", b"5"], second
    # A redeclare without the argument differs (406 names it).
    other = c.channel()
    text = expect_close(406, lambda: other.queue_declare("sac", durable=True))
    assert "single_active_consumer" in text, text
    c.close()


def unused_queue_expires():
    c = connect()
    ch = c.channel()
    ch.queue_declare("expiring", durable=True, arguments={"x-expires": 1500})
    ch.basic_publish("", "expiring", b"kept until the queue goes")
    # A consumer holds it: it does not expire while consumed.
    tag = ch.basic_consume("expiring", lambda *a: None, auto_ack=True)
    c.process_data_events(time_limit=2.5)
    assert ch.queue_declare("expiring", passive=True, durable=True).method.queue == "expiring"
    ch.basic_cancel(tag)
    # Unused for 1.5 s from here (the passive declare does not count as a use): gone.
    deadline = time.time() + 15
    while time.time() < deadline:
        probe = c.channel()
        try:
            probe.queue_declare("expiring", passive=True)
            probe.close()
            time.sleep(0.2)
        except ChannelClosedByBroker as e:
            assert e.reply_code == 404, e
            break
    else:
        raise AssertionError("the unused queue was not deleted")
    c.close()


CASES = {f.__name__: f for f in [
    consumer_priorities_serve_the_highest_first,
    single_active_consumer_takes_over_in_order,
    unused_queue_expires,
    fanout_topic_headers_and_direct_routing,
    mandatory_return_through_an_exchange,
    dead_letter_exchange_with_x_death,
    one_full_target_nacks_under_reject_and_acks_under_drop_head,
    declare_with_arguments_and_confirms,
    mismatched_redeclare_is_406,
    fair_dispatch_with_prefetch_one,
    nack_requeue_redelivers,
    reject_dead_letters_with_x_death,
    ttl_expires_messages,
    priority_orders_deliveries,
    mandatory_unroutable_is_returned,
    server_named_exclusive_queues,
    properties_roundtrip_unchanged,
    heartbeats_keep_alive_and_silence_is_dropped,
    wrong_protocol_header_gets_the_right_one,
    channel_errors_close_only_the_channel,
]}

if __name__ == "__main__":
    names = sys.argv[2:] or list(CASES)
    for name in names:
        CASES[name]()
        print("ok", name, flush=True)
