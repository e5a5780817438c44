"""pika against a real levee with users (and TLS): one case per invocation,
`security_cases.py PORT CASE [CA_FILE]`.

For the integrator (security + amqp branches): not run on the security branch, which has no AMQP
listener. The broker is started with the config of crates/levee/tests/auth.rs:
users `admin` (password `a`, admin) and `encoder` (password `e`, publish on `video.*`), and for
the `tls_*` cases `[tls]` from `common::pki::tls_section` (CA_FILE is the CA that signed it).
Each case raises (non-zero exit, traceback on stderr) on any deviation.
"""
import ssl
import sys

import pika
from pika.exceptions import ChannelClosedByBroker, ProbableAuthenticationError

PORT = int(sys.argv[1])
CASE = sys.argv[2]
CA = sys.argv[3] if len(sys.argv) > 3 else None


def connect(user, password, tls=False):
    kw = {}
    if tls:
        ctx = ssl.create_default_context(cafile=CA)
        kw["ssl_options"] = pika.SSLOptions(ctx, "localhost")
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "localhost" if tls else "127.0.0.1",
            PORT,
            credentials=pika.PlainCredentials(user, password),
            connection_attempts=1,
            **kw,
        )
    )


def wrong_password_is_refused():
    try:
        connect("admin", "wrong")
    except ProbableAuthenticationError as e:
        assert "ACCESS_REFUSED" in str(e) or "403" in str(e), e
        return
    raise AssertionError("a wrong password was accepted")


def publisher_cannot_consume_and_the_connection_survives():
    admin = connect("admin", "a")
    ch = admin.channel()
    ch.queue_declare("video.hd", durable=True)
    ch.queue_declare("billing", durable=True)
    enc = connect("encoder", "e")
    ch = enc.channel()
    ch.basic_publish("", "video.hd", b"frame")
    try:
        ch.basic_get("video.hd", auto_ack=True)
        raise AssertionError("consume was allowed")
    except ChannelClosedByBroker as e:
        assert e.reply_code == 403, (e.reply_code, e.reply_text)
        assert "forbidden" in e.reply_text, e.reply_text
    ch = enc.channel()  # the connection survived the channel's refusal
    try:
        ch.queue_purge("billing")
        raise AssertionError("purge was allowed")
    except ChannelClosedByBroker as e:
        assert e.reply_code == 403, (e.reply_code, e.reply_text)
    assert enc.is_open
    m, _, body = admin.channel().basic_get("video.hd", auto_ack=True)
    assert body == b"frame", body


def tls_login_and_publish():
    c = connect("admin", "a", tls=True)
    ch = c.channel()
    ch.queue_declare("tls.q")
    ch.confirm_delivery()  # the get below must find the message stored
    ch.basic_publish("", "tls.q", b"over tls")
    m, _, body = ch.basic_get("tls.q", auto_ack=True)
    assert body == b"over tls", body


def tls_untrusted_ca_fails():
    ctx = ssl.create_default_context()  # system roots: the test CA is not among them
    try:
        pika.BlockingConnection(
            pika.ConnectionParameters(
                "localhost", PORT, ssl_options=pika.SSLOptions(ctx, "localhost"),
                credentials=pika.PlainCredentials("admin", "a"), connection_attempts=1,
            )
        )
    except Exception:
        return
    raise AssertionError("a client that does not trust the CA connected")


globals()[CASE]()
