//! The mappings between AMQP 0-9-1 and Levee: `queue.declare` arguments onto [`QueueConfig`],
//! a published message's properties onto a Levee [`Message`] (kept losslessly, plus native
//! headers for cross-protocol consumers), and a stored message back onto `basic.deliver`'s
//! exchange, routing key and property block (with RabbitMQ's `x-death` for dead letters).
//! `docs/amqp.md` documents every row of these tables; this module is the one place they live.
//!
//! # The stored properties block
//! [`Message::properties`] of a message published over AMQP holds
//! `0xA1 | u8 len | exchange | u8 len | routing key | property block`, where the property block
//! is the content header's property flags and list exactly as the publisher sent them. It is
//! delivered unchanged (a dead-lettered message gets `x-death` added to its headers table).

use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use bytes::{BufMut, Bytes, BytesMut};
use levee_proto::{Durability, Fsync, MAX_QUEUE_NAME_LEN, Message, Order, Overflow, QueueConfig};

use super::codec::{encode_props, parse_props};
use crate::queue::{DEATH_HEADERS, MAX_USER_HEADERS, ROUTING_HEADERS};

/// Whether a native header is one the broker sets (death records, routing): never copied from
/// or into AMQP headers tables.
fn reserved(name: &str) -> bool {
    DEATH_HEADERS.contains(&name) || ROUTING_HEADERS.contains(&name)
}

/// The bytes form of an AMQP table value, as native headers (and the header exchange's
/// matching) see it: strings as their bytes, integers in decimal, booleans as `true`/`false`,
/// byte arrays as is; `None` for tables, arrays, floats and decimals. Message headers and binding
/// arguments both go through it, so a headers exchange compares like with like.
pub(crate) fn value_bytes(value: &AMQPValue) -> Option<Bytes> {
    match value {
        AMQPValue::LongString(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        AMQPValue::ShortString(s) => Some(Bytes::from(s.as_str().to_string())),
        AMQPValue::Boolean(b) => Some(Bytes::from(b.to_string())),
        AMQPValue::ByteArray(b) => Some(Bytes::copy_from_slice(b.as_slice())),
        other => int(other).map(|n| Bytes::from(n.to_string())),
    }
}

/// A field table as `(name, bytes)` pairs ([`value_bytes`]; other values skipped).
pub(crate) fn table_bytes(t: &FieldTable) -> Vec<(String, Bytes)> {
    t.into_iter()
        .filter_map(|(k, v)| value_bytes(v).map(|b| (k.as_str().to_string(), b)))
        .collect()
}

/// First byte of a stored AMQP properties block (format 1).
const STORED_TAG: u8 = 0xA1;

/// A `queue.declare` argument Levee refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ArgError {
    /// A known argument with a value out of range or of the wrong type (406).
    #[error("argument {arg}: {reason}")]
    Invalid { arg: String, reason: String },
    /// An argument (or value) Levee does not implement (540).
    #[error("argument {arg}: {reason}")]
    NotImplemented { arg: String, reason: String },
}

/// What a `queue.declare` asks for, in Levee's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Declared {
    /// The queue config (`x-expires` and `x-single-active-consumer` are config fields).
    pub(crate) config: QueueConfig,
    /// `x-queue-type = quorum`: on a cluster node, a replicated queue (one copy per node); on
    /// a single node, an ordinary queue (as a one-node RabbitMQ keeps one copy).
    pub(crate) quorum: bool,
}

fn int(v: &AMQPValue) -> Option<i128> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        // Some clients send numbers as strings (the management UI does).
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok()?,
        AMQPValue::ShortString(s) => s.as_str().parse().ok()?,
        _ => return None,
    })
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn boolean(v: &AMQPValue) -> Option<bool> {
    match v {
        AMQPValue::Boolean(b) => Some(*b),
        other => int(other).map(|n| n != 0),
    }
}

/// Maps a `queue.declare`'s `durable` flag and arguments onto a Levee config, starting from
/// `defaults` (the server's defaults: Levee queues are bounded even when the client says nothing).
pub(crate) fn declare_args(
    durable: bool,
    args: &FieldTable,
    defaults: &QueueConfig,
) -> Result<Declared, ArgError> {
    let mut config = defaults.clone();
    let mut dlx = None;
    let mut dlrk = None;
    let mut fsync = None;
    let mut overflow_from = None::<&str>;
    let mut quorum = false;
    let invalid = |arg: &str, reason: String| ArgError::Invalid {
        arg: arg.to_string(),
        reason,
    };
    let not_impl = |arg: &str, reason: &str| ArgError::NotImplemented {
        arg: arg.to_string(),
        reason: reason.to_string(),
    };
    let positive = |arg: &str, v: &AMQPValue, min: i128| -> Result<u64, ArgError> {
        match int(v) {
            Some(n) if n >= min && n <= i128::from(u64::MAX) => Ok(n as u64),
            Some(n) => Err(invalid(arg, format!("{n} is below the minimum {min}"))),
            None => Err(invalid(arg, format!("expected an integer, got {v:?}"))),
        }
    };
    for (name, value) in args {
        let arg = name.as_str();
        match arg {
            "x-max-length" => config.max_messages = positive(arg, value, 1)?,
            "x-max-length-bytes" => config.max_bytes = positive(arg, value, 1)?,
            "x-message-ttl" => config.message_ttl_ms = Some(positive(arg, value, 1)?),
            "x-expires" => config.expires_ms = Some(positive(arg, value, 1)?),
            "x-max-priority" => {
                let n = positive(arg, value, 0)?;
                if n > 255 {
                    return Err(invalid(arg, format!("{n} is above 255")));
                }
                if n > 0 {
                    config.order = Order::Priority;
                }
            }
            "x-delivery-limit" => {
                // RabbitMQ counts redeliveries; Levee counts deliveries.
                let n = positive(arg, value, 0)?;
                config.max_deliveries =
                    Some(u32::try_from(n.saturating_add(1)).unwrap_or(u32::MAX));
            }
            "x-overflow" | "x-levee-overflow" => {
                if let Some(other) = overflow_from {
                    return Err(invalid(arg, format!("given together with {other}")));
                }
                overflow_from = Some(if arg == "x-overflow" {
                    "x-overflow"
                } else {
                    "x-levee-overflow"
                });
                let s = text(value).ok_or_else(|| invalid(arg, "expected a string".into()))?;
                config.overflow = match (arg, s.as_str()) {
                    ("x-overflow", "reject-publish" | "reject-publish-dlx") => Overflow::Reject,
                    ("x-overflow", "drop-head") => Overflow::DropOldest,
                    ("x-overflow", other) => {
                        return Err(invalid(
                            arg,
                            format!(
                                "unknown value {other:?}: expected drop-head, reject-publish or \
                                 reject-publish-dlx (Levee's own policies: x-levee-overflow)"
                            ),
                        ));
                    }
                    (_, other) => other
                        .parse::<Overflow>()
                        .map_err(|e| invalid(arg, e.to_string()))?,
                };
            }
            "x-queue-type" => match text(value).as_deref() {
                Some("classic") => quorum = false,
                Some("quorum") => quorum = true,
                Some(other) => {
                    return Err(not_impl(
                        arg,
                        &format!("queue type {other:?} (classic and quorum are)"),
                    ));
                }
                None => return Err(invalid(arg, "expected a string".into())),
            },
            "x-dead-letter-exchange" => {
                dlx = Some(text(value).ok_or_else(|| invalid(arg, "expected a string".into()))?);
            }
            "x-dead-letter-routing-key" => {
                dlrk = Some(text(value).ok_or_else(|| invalid(arg, "expected a string".into()))?);
            }
            "x-single-active-consumer" => match boolean(value) {
                Some(on) => config.single_active_consumer = on,
                None => return Err(invalid(arg, "expected a boolean".into())),
            },
            "x-levee-fsync" => {
                let s = text(value).ok_or_else(|| invalid(arg, "expected a string".into()))?;
                fsync = Some(
                    s.parse::<Fsync>()
                        .map_err(|e| invalid(arg, e.to_string()))?,
                );
            }
            "x-levee-ack-timeout" => config.ack_timeout_ms = positive(arg, value, 0)?,
            "x-levee-conflate-key" => match text(value).as_deref() {
                // The key is the `x-levee-key` header (or the routing key when it is absent):
                // the only form kept across restarts without a catalog field of its own.
                Some("x-levee-key" | "routing-key") => {}
                _ => {
                    return Err(not_impl(
                        arg,
                        "the conflation key is the x-levee-key header, else the routing key",
                    ));
                }
            },
            // RabbitMQ ignores arguments it does not know, and so does Levee.
            _ => {}
        }
    }
    config.durability = match (durable, fsync) {
        (true, f) => Durability::Disk(f.unwrap_or_default()),
        (false, None) => Durability::Transient,
        (false, Some(_)) => {
            return Err(invalid(
                "x-levee-fsync",
                "applies only to durable queues".into(),
            ));
        }
    };
    match dlx.as_deref() {
        None => {
            if dlrk.is_some() {
                return Err(invalid(
                    "x-dead-letter-routing-key",
                    "needs x-dead-letter-exchange".into(),
                ));
            }
        }
        Some("") => match &dlrk {
            // Dead-lettering through the default exchange: the routing key names the queue.
            Some(q) => config.dead_letter = Some(q.clone()),
            None => {
                return Err(invalid(
                    "x-dead-letter-exchange",
                    "the default exchange needs x-dead-letter-routing-key naming the queue".into(),
                ));
            }
        },
        Some(x) => {
            // Through an exchange (routing): the key, if given, replaces each message's own.
            config.dead_letter_exchange = Some(x.to_string());
            config.dead_letter_routing_key = dlrk;
        }
    }
    Ok(Declared { config, quorum })
}

/// The consumer priority a `basic.consume` asks for (`x-priority`, an integer; default 0).
pub(crate) fn consumer_priority(args: &FieldTable) -> Result<i32, ArgError> {
    let Some(v) = args.inner().get("x-priority") else {
        return Ok(0);
    };
    int(v)
        .and_then(|n| i32::try_from(n).ok())
        .ok_or_else(|| ArgError::Invalid {
            arg: "x-priority".into(),
            reason: format!("expected a 32-bit integer, got {v:?}"),
        })
}

/// The AMQP header naming a message's conflation key.
pub(crate) const KEY_HEADER: &str = "x-levee-key";

/// Why a published message cannot become a Levee message (406 PRECONDITION_FAILED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PublishError {
    /// The `expiration` property is not a number of milliseconds.
    #[error("invalid expiration {0:?}: expected a number of milliseconds")]
    Expiration(String),
}

/// A message published over AMQP, as Levee stores it: the property block kept byte for byte,
/// priority and TTL taken from the properties, the conflation key from `x-levee-key` (else the
/// routing key), and the simple properties and headers copied into native headers.
pub(crate) fn to_native(
    exchange: &str,
    routing_key: &str,
    raw_props: &[u8],
    body: Bytes,
) -> Result<Message, PublishError> {
    let props = parse_props(raw_props);
    let mut stored =
        BytesMut::with_capacity(3 + exchange.len() + routing_key.len() + raw_props.len());
    stored.put_u8(STORED_TAG);
    stored.put_u8(exchange.len() as u8);
    stored.extend_from_slice(exchange.as_bytes());
    stored.put_u8(routing_key.len() as u8);
    stored.extend_from_slice(routing_key.as_bytes());
    stored.extend_from_slice(raw_props);
    let mut m = Message::new(body);
    m.properties = Some(stored.freeze());
    if let Some(p) = props.priority() {
        m.priority = *p;
    }
    if let Some(e) = props.expiration() {
        let ms = e
            .as_str()
            .trim()
            .parse::<u64>()
            .map_err(|_| PublishError::Expiration(e.as_str().to_string()))?;
        m.ttl_ms = Some(ms);
    }
    let mut headers: Vec<(String, Bytes)> = Vec::new();
    let mut push = |name: &str, value: Bytes| {
        if headers.len() < MAX_USER_HEADERS
            && name.len() <= 255
            && value.len() <= usize::from(u16::MAX)
            && !reserved(name)
        {
            headers.push((name.to_string(), value));
        }
    };
    let s = |v: &Option<ShortString>| v.as_ref().map(|s| Bytes::from(s.as_str().to_string()));
    for (name, v) in [
        ("content-type", s(props.content_type())),
        ("content-encoding", s(props.content_encoding())),
        ("correlation-id", s(props.correlation_id())),
        ("reply-to", s(props.reply_to())),
        ("message-id", s(props.message_id())),
        ("type", s(props.kind())),
        ("user-id", s(props.user_id())),
        ("app-id", s(props.app_id())),
        (
            "timestamp",
            props.timestamp().map(|t| Bytes::from(t.to_string())),
        ),
        (
            "delivery-mode",
            props.delivery_mode().map(|d| Bytes::from(d.to_string())),
        ),
    ] {
        if let Some(v) = v {
            push(name, v);
        }
    }
    let mut key = None;
    if let Some(table) = props.headers() {
        for (name, value) in table {
            if let Some(b) = value_bytes(value) {
                if name.as_str() == KEY_HEADER {
                    key = Some(b.clone());
                }
                push(name.as_str(), b);
            }
        }
    }
    m.headers = headers;
    m.key = Some(key.unwrap_or_else(|| Bytes::from(routing_key.to_string())))
        .filter(|k| !k.is_empty() && k.len() <= usize::from(u16::MAX));
    Ok(m)
}

/// What `basic.deliver` / `basic.get-ok` carry for a stored message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outgoing {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) properties: Bytes,
}

fn split_stored(p: &Bytes) -> Option<(String, String, Bytes)> {
    let b = &p[..];
    if b.first() != Some(&STORED_TAG) {
        return None;
    }
    let el = usize::from(*b.get(1)?);
    let exchange = std::str::from_utf8(b.get(2..2 + el)?).ok()?.to_string();
    let rl = usize::from(*b.get(2 + el)?);
    let start = 3 + el;
    let rk = std::str::from_utf8(b.get(start..start + rl)?)
        .ok()?
        .to_string();
    Some((exchange, rk, p.slice(start + rl..)))
}

fn header<'a>(m: &'a Message, name: &str) -> Option<&'a Bytes> {
    m.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// The exchange, routing key and property block to deliver `m` (stored in `queue`) with.
pub(crate) fn outgoing(queue: &str, m: &Message) -> Outgoing {
    let stored = m.properties.as_ref().and_then(split_stored);
    let death = header(m, "x-death-reason").map(|r| String::from_utf8_lossy(r).into_owned());
    let (exchange, routing_key, raw) = match stored {
        Some((x, rk, raw)) if death.is_none() => {
            return Outgoing {
                exchange: x,
                routing_key: rk,
                properties: raw,
            };
        }
        Some((x, rk, raw)) => (x, rk, Some(raw)),
        // Published natively: through an exchange (its routing headers), else directly.
        None => match (header(m, ROUTING_HEADERS[0]), header(m, ROUTING_HEADERS[1])) {
            (Some(x), Some(rk)) => (
                String::from_utf8_lossy(x).into_owned(),
                String::from_utf8_lossy(rk).into_owned(),
                None,
            ),
            _ => (String::new(), queue.to_string(), None),
        },
    };
    let mut props = match &raw {
        Some(raw) => parse_props(raw),
        None => native_props(m),
    };
    if let Some(reason) = death {
        let from = header(m, "x-death-queue")
            .map(|q| String::from_utf8_lossy(q).into_owned())
            .unwrap_or_default();
        let mut table = props.headers().clone().unwrap_or_default();
        add_x_death(&mut table, &reason, &from, &exchange, &routing_key);
        props = props.with_headers(table);
        // A dead letter is delivered from its new queue by the default exchange.
        return Outgoing {
            exchange: String::new(),
            routing_key: queue.to_string(),
            properties: encode_props(&props),
        };
    }
    Outgoing {
        exchange,
        routing_key,
        properties: encode_props(&props),
    }
}

/// The properties of a message published with the native protocol: its headers as a headers
/// table of long strings, `content-type` and friends from the headers of those names, its
/// priority.
fn native_props(m: &Message) -> AMQPProperties {
    let mut table = FieldTable::default();
    let mut props = AMQPProperties::default();
    for (name, value) in &m.headers {
        if reserved(name) {
            continue;
        }
        let as_short = || {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| ShortString::try_new(s).ok())
        };
        match name.as_str() {
            "content-type" if as_short().is_some() => {
                props = props.with_content_type(as_short().expect("checked"));
            }
            "content-encoding" if as_short().is_some() => {
                props = props.with_content_encoding(as_short().expect("checked"));
            }
            "correlation-id" if as_short().is_some() => {
                props = props.with_correlation_id(as_short().expect("checked"));
            }
            "reply-to" if as_short().is_some() => {
                props = props.with_reply_to(as_short().expect("checked"));
            }
            "message-id" if as_short().is_some() => {
                props = props.with_message_id(as_short().expect("checked"));
            }
            _ => {
                if let Ok(n) = ShortString::try_new(name.as_str()) {
                    table.insert(n, AMQPValue::LongString(LongString::from(value.to_vec())));
                }
            }
        }
    }
    if m.priority != 0 {
        props = props.with_priority(m.priority);
    }
    if !table.inner().is_empty() {
        props = props.with_headers(table);
    }
    props
}

/// Adds RabbitMQ's `x-death` entry (and `x-first-death-*` when absent) to a headers table.
fn add_x_death(table: &mut FieldTable, reason: &str, queue: &str, exchange: &str, rk: &str) {
    let reason = match reason {
        "max-deliveries" => "delivery_limit",
        other => other,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut entry = FieldTable::default();
    let long = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    entry.insert("count".into(), AMQPValue::LongLongInt(1));
    entry.insert("reason".into(), long(reason));
    entry.insert("queue".into(), long(queue));
    entry.insert("time".into(), AMQPValue::Timestamp(now));
    entry.insert("exchange".into(), long(exchange));
    entry.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![long(rk)])),
    );
    let mut deaths = match table.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    table.insert("x-death".into(), AMQPValue::FieldArray(deaths.into()));
    if !table.contains_key("x-first-death-queue") {
        table.insert("x-first-death-queue".into(), long(queue));
        table.insert("x-first-death-reason".into(), long(reason));
        table.insert("x-first-death-exchange".into(), long(exchange));
    }
}

/// A server-named queue: `amq.gen-` and 22 characters, as RabbitMQ names them.
pub(crate) fn generated_name(seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut out = String::from("amq.gen-");
    for _ in 0..22 {
        // splitmix64 over the seed and the clock: unique enough, never a secret.
        x = x
            .wrapping_add(nanos | 1)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 31;
        nanos = nanos.rotate_left(7);
        out.push(ALPHABET[(x % 64) as usize] as char);
    }
    debug_assert!(out.len() <= MAX_QUEUE_NAME_LEN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn rabbitmq_arguments_map_onto_the_levee_config() {
        let args = table(&[
            ("x-max-length", AMQPValue::LongInt(10)),
            ("x-max-length-bytes", AMQPValue::LongLongInt(4096)),
            ("x-overflow", AMQPValue::LongString("reject-publish".into())),
            ("x-message-ttl", AMQPValue::ShortUInt(500)),
            ("x-max-priority", AMQPValue::ShortShortUInt(9)),
            ("x-delivery-limit", AMQPValue::LongInt(3)),
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString("dlq".into()),
            ),
            ("x-queue-type", AMQPValue::LongString("quorum".into())),
        ]);
        let d = declare_args(true, &args, &QueueConfig::default()).unwrap();
        assert_eq!(d.config.max_messages, 10);
        assert_eq!(d.config.max_bytes, 4096);
        assert_eq!(d.config.overflow, Overflow::Reject);
        assert_eq!(d.config.message_ttl_ms, Some(500));
        assert_eq!(d.config.order, Order::Priority);
        assert_eq!(d.config.max_deliveries, Some(4));
        assert_eq!(d.config.dead_letter.as_deref(), Some("dlq"));
        assert!(
            d.quorum,
            "x-queue-type = quorum is noted (replicated on a cluster node)"
        );
        let via = table(&[
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString("dlx".into()),
            ),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString("dead".into()),
            ),
        ]);
        let d = declare_args(true, &via, &QueueConfig::default()).unwrap();
        assert!(!d.quorum);
        assert_eq!(d.config.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(d.config.dead_letter_routing_key.as_deref(), Some("dead"));
        assert_eq!(d.config.durability, Durability::Disk(Fsync::Always));
        let transient = declare_args(false, &FieldTable::default(), &QueueConfig::default());
        assert_eq!(transient.unwrap().config.durability, Durability::Transient);
    }

    #[test]
    fn bad_and_unsupported_arguments_are_told_apart() {
        let bad = table(&[("x-max-length", AMQPValue::LongString("many".into()))]);
        assert!(matches!(
            declare_args(true, &bad, &QueueConfig::default()),
            Err(ArgError::Invalid { .. })
        ));
        let sac = table(&[
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
            ("x-expires", AMQPValue::LongUInt(60_000)),
        ]);
        let d = declare_args(true, &sac, &QueueConfig::default()).unwrap();
        assert!(d.config.single_active_consumer);
        assert_eq!(d.config.expires_ms, Some(60_000));
        let sac = table(&[(
            "x-single-active-consumer",
            AMQPValue::LongString("yes".into()),
        )]);
        assert!(matches!(
            declare_args(true, &sac, &QueueConfig::default()),
            Err(ArgError::Invalid { .. })
        ));
        let both = table(&[
            ("x-overflow", AMQPValue::LongString("drop-head".into())),
            ("x-levee-overflow", AMQPValue::LongString("block".into())),
        ]);
        assert!(declare_args(true, &both, &QueueConfig::default()).is_err());
    }

    #[test]
    fn the_property_block_is_kept_byte_for_byte() {
        let mut headers = FieldTable::default();
        headers.insert("b".into(), AMQPValue::LongInt(-5));
        headers.insert("a".into(), AMQPValue::LongString("x".into()));
        let props = AMQPProperties::default()
            .with_content_type("application/json".into())
            .with_priority(7)
            .with_expiration("60000".into())
            .with_headers(headers);
        let raw = encode_props(&props);
        let m = to_native("", "jobs", &raw, Bytes::from_static(b"{}")).unwrap();
        assert_eq!(m.priority, 7);
        assert_eq!(m.ttl_ms, Some(60_000));
        assert_eq!(header(&m, "content-type").unwrap(), "application/json");
        assert_eq!(header(&m, "b").unwrap(), "-5");
        let out = outgoing("jobs", &m);
        assert_eq!(out.properties, raw);
        assert_eq!(out.routing_key, "jobs");
        assert_eq!(out.exchange, "");
    }

    #[test]
    fn a_dead_letter_carries_rabbitmqs_x_death_table() {
        let raw = encode_props(&AMQPProperties::default());
        let mut m = to_native("", "work", &raw, Bytes::from_static(b"x")).unwrap();
        m.headers.push(("x-death-reason".into(), "rejected".into()));
        m.headers.push(("x-death-queue".into(), "work".into()));
        let out = outgoing("dlq", &m);
        let props = parse_props(&out.properties);
        let table = props.headers().clone().unwrap();
        let Some(AMQPValue::FieldArray(deaths)) = table.inner().get("x-death") else {
            panic!("no x-death: {table:?}")
        };
        let AMQPValue::FieldTable(first) = &deaths.as_slice()[0] else {
            panic!("not a table")
        };
        assert_eq!(
            first.inner().get("reason"),
            Some(&AMQPValue::LongString("rejected".into()))
        );
        assert_eq!(
            first.inner().get("queue"),
            Some(&AMQPValue::LongString("work".into()))
        );
    }

    #[test]
    fn server_names_look_like_rabbitmqs() {
        let a = generated_name(1);
        let b = generated_name(2);
        assert!(a.starts_with("amq.gen-") && a.len() == 30, "{a}");
        assert_ne!(a, b);
        levee_proto::validate_queue_name(&a).unwrap();
    }
}
