//! Shared proptest strategies producing arbitrary (structurally encodable) protocol values.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use levee_proto::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

pub(crate) fn blob(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// Any UTF-8 string short enough for a `u8` length prefix (<= 30 chars of <= 4 bytes).
pub(crate) fn name() -> impl Strategy<Value = String> {
    "\\PC{0,30}"
}

pub(crate) fn text() -> impl Strategy<Value = String> {
    "\\PC{0,60}"
}

pub(crate) fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::ALL.to_vec())
}

pub(crate) fn drop_reason() -> impl Strategy<Value = DropReason> {
    prop::sample::select(DropReason::ALL.to_vec())
}

pub(crate) fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Memory),
        Just(Durability::Transient),
        Just(Durability::Disk(Fsync::Always)),
        any::<u32>().prop_map(|ms| Durability::Disk(Fsync::Interval(ms))),
        Just(Durability::Disk(Fsync::Never)),
    ]
}

pub(crate) fn rate_limit() -> impl Strategy<Value = RateLimit> {
    (
        option::of(any::<u32>()),
        option::of(any::<u64>()),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(m, b, bm, bb)| RateLimit {
            msgs_per_sec: m,
            bytes_per_sec: b,
            burst_msgs: bm,
            burst_bytes: bb,
        })
}

pub(crate) fn queue_config() -> impl Strategy<Value = QueueConfig> {
    (
        any::<u64>(),
        any::<u64>(),
        prop::sample::select(Overflow::ALL.to_vec()),
        prop_oneof![Just(Order::Fifo), Just(Order::Priority)],
        durability(),
        any::<u64>(),
        option::of(any::<u32>()),
        option::of(name()),
        option::of(any::<u64>()),
        option::of(rate_limit()),
        (
            option::of(name()),
            option::of(name()),
            any::<bool>(),
            option::of(any::<u64>()),
            any::<u8>(),
        ),
        option::of((option::of(any::<u64>()), any::<u32>())),
    )
        .prop_map(
            |(mm, mb, ov, or, du, at, md, dl, ttl, rl, (dlx, dlk, sac, exp, reps), dd)| {
                QueueConfig {
                    max_messages: mm,
                    max_bytes: mb,
                    overflow: ov,
                    order: or,
                    durability: du,
                    ack_timeout_ms: at,
                    max_deliveries: md,
                    dead_letter: dl,
                    message_ttl_ms: ttl,
                    rate_limit: rl,
                    dead_letter_exchange: dlx,
                    dead_letter_routing_key: dlk,
                    single_active_consumer: sac,
                    expires_ms: exp,
                    dedup: dd.map(|(window_ms, max_ids)| levee_proto::Dedup { window_ms, max_ids }),
                    replicas: reps,
                }
            },
        )
}

pub(crate) fn exchange_config() -> impl Strategy<Value = ExchangeConfig> {
    (
        prop::sample::select(ExchangeKind::ALL.to_vec()),
        any::<(bool, bool, bool)>(),
        vec((name(), blob(8)), 0..4),
    )
        .prop_map(
            |(kind, (durable, auto_delete, internal), arguments)| ExchangeConfig {
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
            },
        )
}

pub(crate) fn binding() -> impl Strategy<Value = Binding> {
    (name(), name(), name(), vec((name(), blob(8)), 0..4)).prop_map(
        |(exchange, queue, key, arguments)| Binding {
            exchange,
            queue,
            key,
            arguments,
        },
    )
}

pub(crate) fn routed_outcome() -> impl Strategy<Value = RoutedOutcome> {
    prop_oneof![
        Just(RoutedOutcome::Unroutable),
        (any::<u32>(), outcome())
            .prop_map(|(targets, outcome)| RoutedOutcome::Routed { targets, outcome }),
    ]
}

pub(crate) fn message() -> impl Strategy<Value = Message> {
    (
        option::of(blob(16)),
        any::<u8>(),
        option::of(any::<u64>()),
        vec((name(), blob(8)), 0..4),
        option::of(blob(255)),
        option::of(blob(32)),
        blob(64),
    )
        .prop_map(
            |(key, priority, ttl_ms, headers, message_id, properties, payload)| Message {
                key,
                priority,
                ttl_ms,
                headers,
                message_id,
                properties,
                payload,
            },
        )
}

pub(crate) fn delivery() -> impl Strategy<Value = Delivery> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
        message(),
    )
        .prop_map(
            |(subscription, tag, seq, delivery_count, timestamp_ms, message)| Delivery {
                subscription,
                tag,
                seq,
                delivery_count,
                timestamp_ms,
                message,
            },
        )
}

pub(crate) fn outcome() -> impl Strategy<Value = PublishOutcome> {
    prop_oneof![
        any::<u64>().prop_map(|seq| PublishOutcome::Stored { seq }),
        drop_reason().prop_map(|reason| PublishOutcome::Dropped { reason }),
        (error_code(), text()).prop_map(|(code, reason)| PublishOutcome::Rejected { code, reason }),
        any::<u32>().prop_map(|retry_after_ms| PublishOutcome::Throttled { retry_after_ms }),
        any::<u64>().prop_map(|seq| PublishOutcome::Duplicate { seq }),
    ]
}

pub(crate) fn stats() -> impl Strategy<Value = QueueStats> {
    (
        vec(any::<u64>(), 14),
        vec((drop_reason(), any::<u64>()), 0..5),
        vec(
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(s, c, u)| ConsumerStats {
                subscription: s,
                credit: c,
                unacked: u,
            }),
            0..4,
        ),
    )
        .prop_map(|(n, dropped, consumers)| QueueStats {
            published: n[0],
            stored: n[1],
            rejected: n[2],
            acked: n[3],
            dropped,
            expired: n[4],
            dead_lettered: n[5],
            ready: n[6],
            unacked: n[7],
            bytes: n[8],
            publish_credit_outstanding: n[9],
            consumers,
            publish_rate: n[10],
            deliver_rate: n[11],
            ack_rate: n[12],
            duplicates: n[13],
        })
}

pub(crate) fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u16>(),
        any::<u16>(),
        text(),
        option::of((text(), text()).prop_map(|(user, password)| Credentials { user, password })),
    )
        .prop_map(
            |(min_version, max_version, client_name, credentials)| Hello {
                min_version,
                max_version,
                client_name,
                credentials,
            },
        )
}

pub(crate) fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let req = any::<u64>();
    prop_oneof![
        hello().prop_map(ClientFrame::Hello),
        Just(ClientFrame::Heartbeat),
        (option::of(error_code()), text())
            .prop_map(|(code, reason)| ClientFrame::Close { code, reason }),
        (req, name(), queue_config()).prop_map(|(req, queue, config)| ClientFrame::Declare {
            req,
            queue,
            config
        }),
        (any::<u64>(), name()).prop_map(|(req, queue)| ClientFrame::Delete { req, queue }),
        (any::<u64>(), name()).prop_map(|(req, queue)| ClientFrame::Purge { req, queue }),
        (any::<u64>(), name()).prop_map(|(req, queue)| ClientFrame::Inspect { req, queue }),
        any::<u64>().prop_map(|req| ClientFrame::ListQueues { req }),
        (any::<u64>(), name()).prop_map(|(req, queue)| ClientFrame::Produce { req, queue }),
        (any::<u64>(), name(), vec(message(), 0..5)).prop_map(|(req, queue, messages)| {
            ClientFrame::Publish {
                req,
                queue,
                messages,
            }
        }),
        (any::<u64>(), name(), any::<u32>()).prop_map(|(req, queue, credit)| {
            ClientFrame::Subscribe {
                req,
                queue,
                credit,
                auto_ack: credit % 2 == 0,
            }
        }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(req, subscription)| ClientFrame::Unsubscribe { req, subscription }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(subscription, n)| ClientFrame::Credit { subscription, n }),
        (any::<u64>(), vec(any::<u64>(), 0..20))
            .prop_map(|(subscription, tags)| ClientFrame::Ack { subscription, tags }),
        (any::<u64>(), vec(any::<u64>(), 0..20), any::<u64>()).prop_map(
            |(subscription, tags, delay_ms)| ClientFrame::Nack {
                subscription,
                tags,
                delay_ms
            }
        ),
        (any::<u64>(), vec(any::<u64>(), 0..20))
            .prop_map(|(subscription, tags)| ClientFrame::Reject { subscription, tags }),
        (any::<u64>(), name(), exchange_config(), any::<bool>()).prop_map(
            |(req, exchange, config, passive)| ClientFrame::DeclareExchange {
                req,
                exchange,
                config,
                passive
            }
        ),
        (any::<u64>(), name(), any::<bool>()).prop_map(|(req, exchange, if_unused)| {
            ClientFrame::DeleteExchange {
                req,
                exchange,
                if_unused,
            }
        }),
        (any::<u64>(), binding()).prop_map(|(req, binding)| ClientFrame::Bind { req, binding }),
        (any::<u64>(), binding()).prop_map(|(req, binding)| ClientFrame::Unbind { req, binding }),
        any::<u64>().prop_map(|req| ClientFrame::ListExchanges { req }),
        (any::<u64>(), option::of(name()))
            .prop_map(|(req, exchange)| ClientFrame::ListBindings { req, exchange }),
        (any::<u64>(), name(), name(), vec(message(), 0..4)).prop_map(
            |(req, exchange, routing_key, messages)| ClientFrame::PublishRouted {
                req,
                exchange,
                routing_key,
                messages
            }
        ),
        (any::<u64>(), name(), queue_config())
            .prop_map(|(req, queue, config)| ClientFrame::Update { req, queue, config }),
        (any::<u64>(), name(), any::<u32>()).prop_map(|(req, queue, count)| ClientFrame::Peek {
            req,
            queue,
            count
        }),
        (
            any::<u64>(),
            name(),
            name(),
            option::of(any::<u64>()),
            option::of((name(), blob(8)))
        )
            .prop_map(|(req, queue, to, max, header)| ClientFrame::Move {
                req,
                queue,
                to,
                max,
                header
            }),
        (any::<u64>(), vec(any::<u64>(), 0..8), any::<u64>()).prop_map(
            |(subscription, tags, extend_ms)| ClientFrame::Extend {
                subscription,
                tags,
                extend_ms,
            }
        ),
    ]
}

pub(crate) fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (any::<u16>(), text(), any::<u32>(), any::<u32>()).prop_map(
            |(version, server_name, max_frame, heartbeat_ms)| ServerFrame::Welcome(Welcome {
                version,
                server_name,
                max_frame,
                heartbeat_ms,
            })
        ),
        Just(ServerFrame::Heartbeat),
        (option::of(error_code()), text())
            .prop_map(|(code, reason)| ServerFrame::Close { code, reason }),
        (any::<u64>(), error_code(), text()).prop_map(|(req, code, message)| ServerFrame::Error {
            req,
            code,
            message
        }),
        (any::<u64>(), name(), any::<bool>(), any::<u64>()).prop_map(
            |(req, queue, created, messages)| ServerFrame::QueueOk {
                req,
                queue,
                created,
                messages
            }
        ),
        (any::<u64>(), name(), queue_config(), stats()).prop_map(|(req, queue, config, stats)| {
            ServerFrame::QueueStats {
                req,
                info: Box::new(QueueInfo {
                    queue,
                    config,
                    stats,
                }),
            }
        }),
        (any::<u64>(), vec(name(), 0..6))
            .prop_map(|(req, queues)| ServerFrame::QueueList { req, queues }),
        (any::<u64>(), vec(outcome(), 0..8))
            .prop_map(|(req, outcomes)| ServerFrame::PublishConfirm { req, outcomes }),
        (name(), any::<u32>()).prop_map(|(queue, n)| ServerFrame::PublishCredit { queue, n }),
        (name(), error_code(), text()).prop_map(|(queue, code, message)| {
            ServerFrame::QueueClosed {
                queue,
                code,
                message,
            }
        }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(req, subscription)| ServerFrame::Subscribed { req, subscription }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(req, subscription)| ServerFrame::Unsubscribed { req, subscription }),
        vec(delivery(), 0..4).prop_map(|deliveries| ServerFrame::Deliver { deliveries }),
        (any::<u64>(), name(), any::<bool>()).prop_map(|(req, exchange, created)| {
            ServerFrame::ExchangeOk {
                req,
                exchange,
                created,
            }
        }),
        (
            any::<u64>(),
            vec(
                (
                    name(),
                    exchange_config(),
                    any::<bool>(),
                    any::<(u64, u64, u64)>()
                ),
                0..4
            )
        )
            .prop_map(|(req, xs)| ServerFrame::ExchangeList {
                req,
                exchanges: xs
                    .into_iter()
                    .map(
                        |(name, config, predeclared, (bindings, routed, unroutable))| {
                            ExchangeInfo {
                                name,
                                config,
                                predeclared,
                                bindings,
                                routed,
                                unroutable,
                            }
                        }
                    )
                    .collect(),
            }),
        (any::<u64>(), vec(binding(), 0..4))
            .prop_map(|(req, bindings)| ServerFrame::BindingList { req, bindings }),
        (any::<u64>(), vec(routed_outcome(), 0..6))
            .prop_map(|(req, outcomes)| ServerFrame::RoutedConfirm { req, outcomes }),
        (any::<u64>(), vec(delivery(), 0..4))
            .prop_map(|(req, messages)| ServerFrame::Peeked { req, messages }),
    ]
}

pub(crate) fn encode_client(f: &ClientFrame) -> BytesMut {
    let mut b = BytesMut::new();
    f.encode(&mut b).expect("strategy frames are encodable");
    b
}

pub(crate) fn encode_server(f: &ServerFrame) -> BytesMut {
    let mut b = BytesMut::new();
    f.encode(&mut b).expect("strategy frames are encodable");
    b
}
