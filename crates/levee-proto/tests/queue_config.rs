//! Queue names and config validation, documented defaults, and the redeclare difference report.

use levee_proto::*;

#[test]
fn defaults_are_the_documented_ones() {
    let c = QueueConfig::default();
    assert_eq!(c.max_messages, 100_000);
    assert_eq!(c.max_bytes, 64 * 1024 * 1024);
    assert_eq!(c.overflow, Overflow::Block);
    assert_eq!(c.order, Order::Fifo);
    assert_eq!(c.durability, Durability::Disk(Fsync::Always));
    assert_eq!(c.ack_timeout_ms, 30_000);
    assert_eq!(c.max_deliveries, Some(20));
    assert_eq!(c.dead_letter, None);
    assert_eq!(c.message_ttl_ms, None);
    assert_eq!(c.rate_limit, None);
    assert_eq!(c.validate("orders"), Ok(()));
}

#[test]
fn queue_names_follow_the_charset_and_length_rules() {
    for ok in [
        "a",
        "orders.eu-1_x",
        "A9",
        "celery@worker-1.celery.pidbox",
        &"z".repeat(255),
    ] {
        assert_eq!(validate_queue_name(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        &"z".repeat(256),
        "with space",
        "slash/",
        "ümlaut",
        "star*",
    ] {
        let err = validate_queue_name(bad).unwrap_err();
        assert!(matches!(err, ProtoError::InvalidName { .. }), "{bad}");
        assert_eq!(err.code(), ErrorCode::InvalidName);
        assert!(!err.is_fatal());
    }
}

fn field_of(c: &QueueConfig, queue: &str) -> &'static str {
    match c.validate(queue) {
        Err(ProtoError::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn out_of_range_fields_are_named() {
    let base = QueueConfig::default();
    let cases: Vec<(QueueConfig, &str)> = vec![
        (
            QueueConfig {
                max_messages: 0,
                ..base.clone()
            },
            "max_messages",
        ),
        (
            QueueConfig {
                max_bytes: 0,
                ..base.clone()
            },
            "max_bytes",
        ),
        (
            QueueConfig {
                durability: Durability::Disk(Fsync::Interval(0)),
                ..base.clone()
            },
            "durability",
        ),
        (
            QueueConfig {
                durability: Durability::Disk(Fsync::Interval(MAX_FSYNC_INTERVAL_MS + 1)),
                ..base.clone()
            },
            "durability",
        ),
        (
            QueueConfig {
                ack_timeout_ms: MAX_ACK_TIMEOUT_MS + 1,
                ..base.clone()
            },
            "ack_timeout_ms",
        ),
        (
            QueueConfig {
                max_deliveries: Some(0),
                ..base.clone()
            },
            "max_deliveries",
        ),
        (
            QueueConfig {
                dead_letter: Some("bad name".into()),
                ..base.clone()
            },
            "dead_letter",
        ),
        (
            QueueConfig {
                dead_letter: Some("q".into()),
                ..base.clone()
            },
            "dead_letter",
        ),
        (
            QueueConfig {
                message_ttl_ms: Some(0),
                ..base.clone()
            },
            "message_ttl_ms",
        ),
        (
            QueueConfig {
                message_ttl_ms: Some(MAX_MESSAGE_TTL_MS + 1),
                ..base.clone()
            },
            "message_ttl_ms",
        ),
        (
            QueueConfig {
                rate_limit: Some(RateLimit::msgs(0)),
                ..base.clone()
            },
            "rate_limit.msgs_per_sec",
        ),
        (
            QueueConfig {
                rate_limit: Some(RateLimit {
                    burst_msgs: 0,
                    ..RateLimit::msgs(10)
                }),
                ..base.clone()
            },
            "rate_limit.burst_msgs",
        ),
        (
            QueueConfig {
                rate_limit: Some(RateLimit::bytes(0)),
                ..base.clone()
            },
            "rate_limit.bytes_per_sec",
        ),
        (
            QueueConfig {
                replicas: 0,
                ..base.clone()
            },
            "replicas",
        ),
        (
            QueueConfig {
                replicas: levee_proto::MAX_REPLICAS + 1,
                ..base.clone()
            },
            "replicas",
        ),
        (
            // A replicated queue is on disk with fsync always.
            QueueConfig {
                replicas: 3,
                durability: Durability::Memory,
                ..base.clone()
            },
            "replicas",
        ),
        (
            QueueConfig {
                rate_limit: Some(RateLimit {
                    burst_bytes: 0,
                    ..RateLimit::bytes(10)
                }),
                ..base.clone()
            },
            "rate_limit.burst_bytes",
        ),
    ];
    for (config, field) in cases {
        assert_eq!(field_of(&config, "q"), field, "{config:?}");
        assert_eq!(
            config.validate("q").unwrap_err().code(),
            ErrorCode::InvalidConfig
        );
    }
    assert!(matches!(
        base.validate("bad name"),
        Err(ProtoError::InvalidName { .. })
    ));
}

#[test]
fn valid_edge_values_pass() {
    let c = QueueConfig {
        max_messages: 1,
        max_bytes: 1,
        overflow: Overflow::ShedPriority,
        order: Order::Priority,
        durability: Durability::Disk(Fsync::Interval(MAX_FSYNC_INTERVAL_MS)),
        ack_timeout_ms: MAX_ACK_TIMEOUT_MS,
        max_deliveries: None,
        dead_letter: Some("q.dlq".into()),
        message_ttl_ms: Some(1),
        rate_limit: Some(RateLimit {
            msgs_per_sec: Some(1),
            bytes_per_sec: Some(1),
            burst_msgs: 1,
            burst_bytes: 1,
        }),
        dead_letter_exchange: Some("amq.topic".into()),
        dead_letter_routing_key: Some("k".repeat(255)),
        single_active_consumer: true,
        expires_ms: Some(levee_proto::MAX_MESSAGE_TTL_MS),
        dedup: Some(levee_proto::Dedup {
            window_ms: Some(levee_proto::MAX_DEDUP_WINDOW_MS),
            max_ids: levee_proto::MAX_DEDUP_IDS,
        }),
        replicas: 1,
    };
    assert_eq!(c.validate("q"), Ok(()));
    let replicated = QueueConfig {
        durability: Durability::Disk(Fsync::Always),
        replicas: levee_proto::MAX_REPLICAS,
        ..c.clone()
    };
    assert_eq!(replicated.validate("q"), Ok(()));
    let memory = QueueConfig {
        durability: Durability::Memory,
        ..c
    };
    assert_eq!(memory.validate("q"), Ok(()));
}

#[test]
fn dedup_ranges_are_checked() {
    let bad = |d: levee_proto::Dedup, field: &str| {
        let c = QueueConfig {
            dedup: Some(d),
            ..QueueConfig::default()
        };
        match c.validate("q") {
            Err(ProtoError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{other:?}"),
        }
    };
    bad(
        levee_proto::Dedup {
            window_ms: Some(0),
            max_ids: 1,
        },
        "dedup.window_ms",
    );
    bad(
        levee_proto::Dedup {
            window_ms: None,
            max_ids: 0,
        },
        "dedup.max_ids",
    );
    let off = QueueConfig {
        dedup: None,
        ..QueueConfig::default()
    };
    assert_eq!(off.validate("q"), Ok(()));
    assert_eq!(QueueConfig::default().differences(&off)[0].field, "dedup");
}

#[test]
fn an_ack_timeout_of_zero_means_never_and_is_valid() {
    let c = QueueConfig {
        ack_timeout_ms: 0,
        ..QueueConfig::default()
    };
    assert_eq!(c.validate("q"), Ok(()));
}

#[test]
fn differences_say_what_differs() {
    let a = QueueConfig::default();
    assert!(a.differences(&a.clone()).is_empty());
    let b = QueueConfig {
        max_messages: 10,
        overflow: Overflow::DropOldest,
        dead_letter: Some("dlq".into()),
        ..a.clone()
    };
    let diffs = a.differences(&b);
    let fields: Vec<_> = diffs.iter().map(|d| d.field).collect();
    assert_eq!(fields, ["max_messages", "overflow", "dead_letter"]);
    assert_eq!(
        a.describe_differences(&b),
        "max_messages: existing 100000, requested 10; \
         overflow: existing block, requested drop-oldest; \
         dead_letter: existing none, requested dlq"
    );
}

#[test]
fn policy_names_parse_back() {
    for o in Overflow::ALL {
        assert_eq!(o.as_str().parse::<Overflow>(), Ok(o));
    }
    assert_eq!("priority".parse::<Order>(), Ok(Order::Priority));
    assert_eq!("fifo".parse::<Order>(), Ok(Order::Fifo));
    assert!(matches!(
        "drop-everything".parse::<Overflow>(),
        Err(ProtoError::InvalidConfig {
            field: "overflow",
            ..
        })
    ));
}

#[test]
fn stats_balance_checks_both_accounting_identities() {
    let mut s = QueueStats {
        published: 10,
        stored: 8,
        rejected: 2,
        acked: 3,
        dropped: vec![(DropReason::EvictedOldest, 1), (DropReason::Conflated, 1)],
        expired: 1,
        dead_lettered: 0,
        ready: 1,
        unacked: 1,
        ..QueueStats::default()
    };
    assert!(s.is_balanced());
    assert_eq!(s.dropped_total(), 2);
    assert_eq!(s.dropped(DropReason::Conflated), 1);
    assert_eq!(s.dropped(DropReason::Purged), 0);
    s.ready += 1;
    assert!(!s.is_balanced(), "stored identity broken");
    s.ready -= 1;
    s.rejected += 1;
    assert!(!s.is_balanced(), "published identity broken");
    let huge = QueueStats {
        published: u64::MAX,
        stored: u64::MAX,
        ready: u64::MAX,
        ..QueueStats::default()
    };
    assert!(huge.is_balanced(), "no overflow in the check");
}

#[test]
fn fsync_words_parse_back_and_bad_ones_name_the_field() {
    for f in [Fsync::Always, Fsync::Never, Fsync::Interval(50)] {
        assert_eq!(f.to_string().parse::<Fsync>(), Ok(f));
    }
    assert!(matches!(
        "sometimes".parse::<Fsync>(),
        Err(ProtoError::InvalidConfig { field: "fsync", .. })
    ));
}

#[test]
fn an_fsync_policy_on_a_memory_queue_is_refused_by_the_shared_rule() {
    assert_eq!(
        Durability::from_parts(None, None),
        Ok(Durability::Disk(Fsync::Always))
    );
    assert_eq!(
        Durability::from_parts(Some("disk"), Some(Fsync::Never)),
        Ok(Durability::Disk(Fsync::Never))
    );
    assert_eq!(
        Durability::from_parts(Some("memory"), None),
        Ok(Durability::Memory)
    );
    assert!(matches!(
        Durability::from_parts(Some("memory"), Some(Fsync::Never)),
        Err(ProtoError::InvalidConfig { field: "fsync", .. })
    ));
    assert!(matches!(
        Durability::from_parts(Some("tape"), None),
        Err(ProtoError::InvalidConfig {
            field: "durability",
            ..
        })
    ));
}

#[test]
fn queue_expiry_is_checked() {
    for bad in [0, levee_proto::MAX_MESSAGE_TTL_MS + 1] {
        let c = QueueConfig {
            expires_ms: Some(bad),
            ..QueueConfig::default()
        };
        assert!(matches!(
            c.validate("q"),
            Err(ProtoError::InvalidConfig {
                field: "expires_ms",
                ..
            })
        ));
    }
    let existing = QueueConfig::default();
    let requested = QueueConfig {
        single_active_consumer: true,
        expires_ms: Some(60_000),
        ..QueueConfig::default()
    };
    assert_eq!(
        existing.describe_differences(&requested),
        "single_active_consumer: existing false, requested true; \
         expires_ms: existing none, requested 60000"
    );
}

#[test]
fn dead_letter_exchange_settings_are_checked() {
    let key_alone = QueueConfig {
        dead_letter_routing_key: Some("k".into()),
        ..QueueConfig::default()
    };
    assert!(matches!(
        key_alone.validate("q"),
        Err(ProtoError::InvalidConfig {
            field: "dead_letter_routing_key",
            ..
        })
    ));
    let bad_name = QueueConfig {
        dead_letter_exchange: Some("no spaces".into()),
        ..QueueConfig::default()
    };
    assert!(matches!(
        bad_name.validate("q"),
        Err(ProtoError::InvalidConfig {
            field: "dead_letter_exchange",
            ..
        })
    ));
}
