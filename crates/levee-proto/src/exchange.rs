//! Exchanges and bindings: [`ExchangeKind`], [`ExchangeConfig`], [`Binding`], [`ExchangeInfo`],
//! [`RoutedOutcome`], the exchange-name rules and their wire encoding.
//!
//! An exchange routes a message published to it, by its routing key (and, for `headers`
//! exchanges, its headers), to every queue bound to it whose binding matches; the broker owns the
//! routing itself. This module owns only the values and their encoding, so the native protocol,
//! the broker's catalog (`exchanges.meta`) and the client share one encoding.
//!
//! Invariants: an encoded config or binding decodes to an equal value; exchange names and routing
//! keys are at most 255 bytes; binding arguments follow the message-header limits (at most
//! [`MAX_HEADERS`] of them, names of at most 255 bytes, values of at most 65 535 bytes).

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::MAX_HEADERS;
use crate::config::ConfigDifference;
use crate::error::ProtoError;
use crate::message::{PublishOutcome, decode_outcome, encode_outcome};
use crate::wire::{Reader, put_bytes8, put_bytes16, put_count8};

type Result<T> = std::result::Result<T, ProtoError>;

/// Longest exchange name and routing key, in bytes.
pub const MAX_EXCHANGE_NAME_LEN: usize = 255;

/// Longest routing key (and binding key), in bytes.
pub const MAX_ROUTING_KEY_LEN: usize = 255;

/// The default exchange: every queue is bound to it by its own name; it cannot be declared,
/// deleted or bound.
pub const DEFAULT_EXCHANGE: &str = "";

/// The exchanges every broker has from the start (besides the default exchange): durable, and
/// they cannot be declared with another type or deleted.
pub const PREDECLARED_EXCHANGES: [(&str, ExchangeKind); 4] = [
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
];

/// Checks that `name` is a valid name for an exchange to declare or refer to: 1..=255 bytes of
/// `[A-Za-z0-9._:-]` (the empty name is the default exchange: callers accept it where it may be
/// used, e.g. when publishing).
pub fn validate_exchange_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(ProtoError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("must not be empty (the default exchange cannot be named here)");
    }
    if name.len() > MAX_EXCHANGE_NAME_LEN {
        return bad("longer than 255 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        return bad("only A-Z, a-z, 0-9, '.', '_', ':' and '-' are allowed");
    }
    Ok(())
}

/// Checks a routing key or binding key: at most 255 bytes (any UTF-8).
pub fn validate_routing_key(key: &str) -> Result<()> {
    if key.len() > MAX_ROUTING_KEY_LEN {
        return Err(ProtoError::InvalidConfig {
            field: "routing_key",
            reason: format!("{} bytes; at most {MAX_ROUTING_KEY_LEN}", key.len()),
        });
    }
    Ok(())
}

/// How an exchange picks the queues for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ExchangeKind {
    /// To every queue bound with a key equal to the routing key. Wire 0.
    Direct,
    /// To every bound queue, whatever the key. Wire 1.
    Fanout,
    /// To every queue whose binding pattern matches the routing key: words split on `.`, `*`
    /// matches one word, `#` zero or more. Wire 2.
    Topic,
    /// By the message's headers against the binding's arguments (`x-match` = `all` (default),
    /// `any`, `all-with-x` or `any-with-x`). Wire 3.
    Headers,
}

impl ExchangeKind {
    /// Every kind, in wire order.
    pub const ALL: [ExchangeKind; 4] = [
        ExchangeKind::Direct,
        ExchangeKind::Fanout,
        ExchangeKind::Topic,
        ExchangeKind::Headers,
    ];

    /// Stable name: `direct`, `fanout`, `topic`, `headers`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }

    fn wire(self) -> u8 {
        match self {
            ExchangeKind::Direct => 0,
            ExchangeKind::Fanout => 1,
            ExchangeKind::Topic => 2,
            ExchangeKind::Headers => 3,
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExchangeKind {
    type Err = ProtoError;

    fn from_str(s: &str) -> Result<Self> {
        ExchangeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ProtoError::InvalidConfig {
                field: "type",
                reason: format!("{s:?}: expected direct, fanout, topic or headers"),
            })
    }
}

/// An exchange's declared configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExchangeConfig {
    /// How it routes.
    pub kind: ExchangeKind,
    /// Kept across restarts (in the catalog), with its bindings to durable queues. Default true.
    pub durable: bool,
    /// Deleted when its last binding is removed (never before it had one). Default false.
    pub auto_delete: bool,
    /// Cannot be published to directly (only as a dead-letter exchange). Default false.
    pub internal: bool,
    /// Free-form arguments, kept and compared on redeclare (at most [`MAX_HEADERS`]).
    pub arguments: Vec<(String, Bytes)>,
}

impl ExchangeConfig {
    /// A durable exchange of this kind, every other flag off.
    pub fn new(kind: ExchangeKind) -> Self {
        ExchangeConfig {
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Vec::new(),
        }
    }

    /// Sets `durable`.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Sets `auto_delete`.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Sets `internal`.
    pub fn internal(mut self, internal: bool) -> Self {
        self.internal = internal;
        self
    }

    /// Checks the arguments' limits.
    pub fn validate(&self) -> Result<()> {
        validate_arguments(&self.arguments)
    }

    /// Every field that differs between `self` (the existing config) and `requested`.
    pub fn differences(&self, requested: &ExchangeConfig) -> Vec<ConfigDifference> {
        let mut out = Vec::new();
        let mut cmp = |field: &'static str, a: String, b: String| {
            if a != b {
                out.push(ConfigDifference {
                    field,
                    existing: a,
                    requested: b,
                });
            }
        };
        let r = requested;
        cmp("type", self.kind.to_string(), r.kind.to_string());
        cmp("durable", self.durable.to_string(), r.durable.to_string());
        cmp(
            "auto_delete",
            self.auto_delete.to_string(),
            r.auto_delete.to_string(),
        );
        cmp(
            "internal",
            self.internal.to_string(),
            r.internal.to_string(),
        );
        cmp(
            "arguments",
            describe_arguments(&self.arguments),
            describe_arguments(&r.arguments),
        );
        out
    }

    /// One line naming every difference (see [`ExchangeConfig::differences`]).
    pub fn describe_differences(&self, requested: &ExchangeConfig) -> String {
        self.differences(requested)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `{a=1, b=2}`, values shown as UTF-8 where they are, else as hex.
pub fn describe_arguments(args: &[(String, Bytes)]) -> String {
    let parts: Vec<String> = args
        .iter()
        .map(|(k, v)| match std::str::from_utf8(v) {
            Ok(s) => format!("{k}={s}"),
            Err(_) => {
                let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
                format!("{k}=0x{hex}")
            }
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn validate_arguments(args: &[(String, Bytes)]) -> Result<()> {
    if args.len() > MAX_HEADERS {
        return Err(ProtoError::InvalidConfig {
            field: "arguments",
            reason: format!("{} arguments; at most {MAX_HEADERS}", args.len()),
        });
    }
    for (k, v) in args {
        if k.len() > 255 || v.len() > usize::from(u16::MAX) {
            return Err(ProtoError::InvalidConfig {
                field: "arguments",
                reason: format!("argument {k:?}: name over 255 or value over 65535 bytes"),
            });
        }
    }
    Ok(())
}

/// A binding: messages routed by `exchange` whose routing key (or headers) match `key` (or
/// `arguments`) go to `queue`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Binding {
    /// The exchange (never the default exchange).
    pub exchange: String,
    /// The bound queue.
    pub queue: String,
    /// The binding key (a pattern for topic exchanges; ignored by fanout and headers ones).
    pub key: String,
    /// Binding arguments (headers exchanges match on them; `x-match` picks how).
    pub arguments: Vec<(String, Bytes)>,
}

impl Binding {
    /// A binding with no arguments.
    pub fn new(
        exchange: impl Into<String>,
        queue: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        Binding {
            exchange: exchange.into(),
            queue: queue.into(),
            key: key.into(),
            arguments: Vec::new(),
        }
    }

    /// Adds an argument.
    pub fn with_argument(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.arguments.push((name.into(), value.into()));
        self
    }

    /// Checks the names, the key and the arguments' limits.
    pub fn validate(&self) -> Result<()> {
        validate_exchange_name(&self.exchange)?;
        crate::validate_queue_name(&self.queue)?;
        validate_routing_key(&self.key)?;
        validate_arguments(&self.arguments)
    }
}

/// An exchange as listed: its name, config and counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExchangeInfo {
    /// The name (`""` for the default exchange).
    pub name: String,
    /// Its config.
    pub config: ExchangeConfig,
    /// Present from the start (the default and `amq.*` exchanges): cannot be deleted.
    pub predeclared: bool,
    /// Bindings on it now (the default exchange reports 0).
    pub bindings: u64,
    /// Messages published to it that matched at least one queue.
    pub routed: u64,
    /// Messages published to it that matched no queue: dropped (and counted here).
    pub unroutable: u64,
}

/// The fate of one message published to an exchange, reported in `RoutedConfirm` at its index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RoutedOutcome {
    /// No queue matched: the message was dropped and counted in the exchange's `unroutable`.
    /// Wire 0.
    Unroutable,
    /// Routed to `targets` queues; `outcome` combines theirs (docs/design.md, "Routing"):
    /// `Rejected` if any target refused it (the first such target in queue-name order, its reason
    /// prefixed by the queue's name), else `Throttled` if any throttled it (the longest
    /// `retry_after_ms`), else `Dropped` if any target's overflow policy dropped it (the first
    /// such target), else `Stored` (every target stored it, durably under its fsync policy; `seq`
    /// is its sequence number in the first target in name order). Wire 1.
    Routed {
        /// How many queues it was routed to (at least 1).
        targets: u32,
        /// The combined outcome.
        outcome: PublishOutcome,
    },
}

impl RoutedOutcome {
    /// Whether every target stored the message (what an AMQP `basic.ack` means).
    pub fn is_stored(&self) -> bool {
        matches!(
            self,
            RoutedOutcome::Routed {
                outcome: PublishOutcome::Stored { .. },
                ..
            }
        )
    }
}

pub(crate) fn put_name(dst: &mut BytesMut, name: &str, what: &'static str) -> Result<()> {
    put_bytes8(dst, name.as_bytes(), what)
}

fn put_arguments(dst: &mut BytesMut, args: &[(String, Bytes)]) -> Result<()> {
    put_count8(dst, args.len(), MAX_HEADERS, "arguments")?;
    for (k, v) in args {
        put_bytes8(dst, k.as_bytes(), "argument name")?;
        put_bytes16(dst, v, "argument value")?;
    }
    Ok(())
}

fn read_arguments(r: &mut Reader) -> Result<Vec<(String, Bytes)>> {
    r.vec8("arguments", MAX_HEADERS, 3, |r| {
        Ok((r.str8("argument name")?, r.bytes16("argument value")?))
    })
}

const FLAG_DURABLE: u8 = 1;
const FLAG_AUTO_DELETE: u8 = 2;
const FLAG_INTERNAL: u8 = 4;
const KNOWN_FLAGS: u8 = FLAG_DURABLE | FLAG_AUTO_DELETE | FLAG_INTERNAL;

pub(crate) fn encode_exchange_config(dst: &mut BytesMut, c: &ExchangeConfig) -> Result<()> {
    dst.put_u8(c.kind.wire());
    let mut flags = 0;
    if c.durable {
        flags |= FLAG_DURABLE;
    }
    if c.auto_delete {
        flags |= FLAG_AUTO_DELETE;
    }
    if c.internal {
        flags |= FLAG_INTERNAL;
    }
    dst.put_u8(flags);
    put_arguments(dst, &c.arguments)
}

pub(crate) fn decode_exchange_config(r: &mut Reader) -> Result<ExchangeConfig> {
    let kind = match r.u8("exchange type")? {
        v if usize::from(v) < ExchangeKind::ALL.len() => ExchangeKind::ALL[usize::from(v)],
        v => {
            return Err(ProtoError::InvalidValue {
                what: "exchange type",
                value: v.into(),
            });
        }
    };
    let flags = r.u8("exchange flags")?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(ProtoError::InvalidValue {
            what: "exchange flags",
            value: flags.into(),
        });
    }
    Ok(ExchangeConfig {
        kind,
        durable: flags & FLAG_DURABLE != 0,
        auto_delete: flags & FLAG_AUTO_DELETE != 0,
        internal: flags & FLAG_INTERNAL != 0,
        arguments: read_arguments(r)?,
    })
}

/// Smallest encoded binding: three empty names and no arguments.
pub(crate) const BINDING_MIN_LEN: usize = 4;

pub(crate) fn encode_binding(dst: &mut BytesMut, b: &Binding) -> Result<()> {
    put_name(dst, &b.exchange, "exchange name")?;
    put_name(dst, &b.queue, "queue name")?;
    put_name(dst, &b.key, "binding key")?;
    put_arguments(dst, &b.arguments)
}

pub(crate) fn decode_binding(r: &mut Reader) -> Result<Binding> {
    Ok(Binding {
        exchange: r.str8("exchange name")?,
        queue: r.str8("queue name")?,
        key: r.str8("binding key")?,
        arguments: read_arguments(r)?,
    })
}

/// Smallest encoded exchange info.
pub(crate) const EXCHANGE_INFO_MIN_LEN: usize = 1 + 3 + 1 + 24;

pub(crate) fn encode_exchange_info(dst: &mut BytesMut, i: &ExchangeInfo) -> Result<()> {
    put_name(dst, &i.name, "exchange name")?;
    encode_exchange_config(dst, &i.config)?;
    dst.put_u8(u8::from(i.predeclared));
    dst.put_u64_le(i.bindings);
    dst.put_u64_le(i.routed);
    dst.put_u64_le(i.unroutable);
    Ok(())
}

pub(crate) fn decode_exchange_info(r: &mut Reader) -> Result<ExchangeInfo> {
    Ok(ExchangeInfo {
        name: r.str8("exchange name")?,
        config: decode_exchange_config(r)?,
        predeclared: r.bool("predeclared")?,
        bindings: r.u64("bindings")?,
        routed: r.u64("routed")?,
        unroutable: r.u64("unroutable")?,
    })
}

/// Smallest encoded routed outcome.
pub(crate) const ROUTED_OUTCOME_MIN_LEN: usize = 1;

pub(crate) fn encode_routed_outcome(dst: &mut BytesMut, o: &RoutedOutcome) -> Result<()> {
    match o {
        RoutedOutcome::Unroutable => {
            dst.put_u8(0);
            Ok(())
        }
        RoutedOutcome::Routed { targets, outcome } => {
            dst.put_u8(1);
            dst.put_u32_le(*targets);
            encode_outcome(dst, outcome)
        }
    }
}

pub(crate) fn decode_routed_outcome(r: &mut Reader) -> Result<RoutedOutcome> {
    Ok(match r.u8("routed outcome")? {
        0 => RoutedOutcome::Unroutable,
        1 => RoutedOutcome::Routed {
            targets: r.u32("targets")?,
            outcome: decode_outcome(r)?,
        },
        v => {
            return Err(ProtoError::InvalidValue {
                what: "routed outcome",
                value: v.into(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_exchange_name("amq.topic").is_ok());
        assert!(validate_exchange_name("logs:eu-1").is_ok());
        assert!(validate_exchange_name("").is_err());
        assert!(validate_exchange_name("a b").is_err());
        assert!(validate_exchange_name(&"x".repeat(256)).is_err());
        assert!(validate_routing_key(&"k".repeat(255)).is_ok());
        assert!(validate_routing_key(&"k".repeat(256)).is_err());
    }

    #[test]
    fn differences_name_every_field() {
        let a = ExchangeConfig::new(ExchangeKind::Direct);
        let b = ExchangeConfig::new(ExchangeKind::Topic)
            .durable(false)
            .internal(true);
        let d = a.describe_differences(&b);
        assert!(d.contains("type: existing direct, requested topic"), "{d}");
        assert!(d.contains("durable: existing true, requested false"), "{d}");
        assert!(d.contains("internal"), "{d}");
        assert!(!d.contains("auto_delete"), "{d}");
        assert!(a.differences(&a.clone()).is_empty());
    }

    #[test]
    fn kinds_parse_back() {
        for k in ExchangeKind::ALL {
            assert_eq!(k.as_str().parse::<ExchangeKind>().unwrap(), k);
        }
        assert!("nope".parse::<ExchangeKind>().is_err());
    }
}
