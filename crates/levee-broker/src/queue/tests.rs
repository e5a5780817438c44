//! Deterministic tests of the queue state machine: time is a number, nothing sleeps.

use super::*;
use proptest::prelude::*;

fn cfg() -> QueueConfig {
    QueueConfig {
        durability: levee_proto::Durability::Memory,
        ..QueueConfig::default()
    }
}

fn msg(n: u32) -> Message {
    Message::new(n.to_le_bytes().to_vec())
}

fn body(o: &Outgoing) -> u32 {
    let p = &o.message.as_ref().unwrap().payload;
    u32::from_le_bytes(p[..4].try_into().unwrap())
}

/// Publishes on a non-block queue (or with credit) and expects an immediate outcome.
fn publish(q: &mut QueueState, now: u64, n: u32) -> PublishOutcome {
    q.publish(now, 1, u64::from(n), msg(n)).expect("not held")
}

fn dispatch(q: &mut QueueState, now: u64) -> Vec<Outgoing> {
    let mut out = Vec::new();
    q.dispatch(now, &mut out);
    out
}

#[test]
fn consumer_never_receives_more_than_its_credit() {
    let mut q = QueueState::new(cfg(), 1);
    for i in 0..10 {
        publish(&mut q, 0, i);
    }
    q.subscribe(7, false);
    assert!(dispatch(&mut q, 0).is_empty(), "no credit, no delivery");
    q.add_credit(7, 3);
    let got = dispatch(&mut q, 0);
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(dispatch(&mut q, 0).is_empty(), "credit used up");
    assert_eq!(q.stats().consumers[0].credit, 0);
    q.add_credit(7, 2);
    assert_eq!(dispatch(&mut q, 0).len(), 2);
    assert!(q.stats().is_balanced());
}

#[test]
fn busy_consumer_is_skipped_and_work_flows_to_idle_ones() {
    // Scenario 13: every encoder has credit 1; a busy one (no credit) takes no new job.
    let mut q = QueueState::new(cfg(), 1);
    q.subscribe(1, false);
    q.subscribe(2, false);
    q.add_credit(1, 1);
    q.add_credit(2, 1);
    for i in 0..4 {
        publish(&mut q, 0, i);
    }
    let first = dispatch(&mut q, 0);
    assert_eq!(first.len(), 2);
    assert_ne!(first[0].consumer, first[1].consumer, "one job each");
    // Consumer 1 finishes and asks for another; consumer 2 is still busy.
    let t1 = first.iter().find(|o| o.consumer == 1).unwrap().tag;
    assert!(q.ack(0, 1, &[t1]).is_empty());
    q.add_credit(1, 1);
    let next = dispatch(&mut q, 0);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].consumer, 1, "the busy consumer got nothing");
}

#[test]
fn competing_consumers_share_round_robin_and_never_get_the_same_message() {
    let mut q = QueueState::new(cfg(), 1);
    for c in 1..=3 {
        q.subscribe(c, true);
        q.add_credit(c, 100);
    }
    for i in 0..90 {
        publish(&mut q, 0, i);
    }
    let got = dispatch(&mut q, 0);
    assert_eq!(got.len(), 90);
    let mut seen: Vec<u32> = got.iter().map(body).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 90, "no duplicates");
    for c in 1..=3 {
        assert_eq!(got.iter().filter(|o| o.consumer == c).count(), 30);
    }
    assert_eq!(q.stats().acked, 90, "auto-ack settles on delivery");
    assert!(q.stats().is_balanced());
}

#[test]
fn ack_timeout_redelivers_to_another_consumer_with_a_raised_count() {
    let mut q = QueueState::new(
        QueueConfig {
            ack_timeout_ms: 1_000,
            ..cfg()
        },
        1,
    );
    q.subscribe(1, false);
    q.add_credit(1, 1);
    publish(&mut q, 0, 42);
    let d = dispatch(&mut q, 0);
    assert_eq!(d[0].deliveries, 1);
    q.subscribe(2, false);
    q.add_credit(2, 1);
    assert_eq!(q.next_deadline(), Some(1_000));
    q.tick(999);
    assert!(dispatch(&mut q, 999).is_empty(), "deadline not reached");
    q.tick(1_000);
    let again = dispatch(&mut q, 1_000);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].consumer, 2);
    assert_eq!(again[0].deliveries, 2);
    assert_eq!(body(&again[0]), 42);
    // The late ack of the first delivery is refused: the message is someone else's now.
    assert_eq!(
        q.ack(1_001, 1, &[d[0].tag]),
        vec![SettleError::UnknownTag(d[0].tag)]
    );
    assert!(
        q.take_effects()
            .iter()
            .any(|e| matches!(e, Effect::DeliveryCount { count: 1, .. }))
    );
}

#[test]
fn an_ack_timeout_of_zero_never_requeues_an_unacked_delivery() {
    let mut q = QueueState::new(
        QueueConfig {
            ack_timeout_ms: 0,
            ..cfg()
        },
        1,
    );
    q.subscribe(1, false);
    q.add_credit(1, 1);
    publish(&mut q, 0, 42);
    let d = dispatch(&mut q, 0);
    assert_eq!(d.len(), 1);
    q.subscribe(2, false);
    q.add_credit(2, 1);
    assert_eq!(q.next_deadline(), None, "no ack deadline");
    let day = 24 * 60 * 60 * 1000;
    q.tick(day);
    assert!(
        dispatch(&mut q, day).is_empty(),
        "still the first consumer's"
    );
    assert_eq!(q.ack(day, 1, &[d[0].tag]), vec![]);
}

#[test]
fn consumer_death_returns_its_messages_in_original_order() {
    let mut q = QueueState::new(cfg(), 1);
    q.subscribe(1, false);
    q.add_credit(1, 2);
    for i in 0..4 {
        publish(&mut q, 0, i);
    }
    assert_eq!(dispatch(&mut q, 0).len(), 2);
    q.unsubscribe(5, 1);
    q.subscribe(2, false);
    q.add_credit(2, 10);
    let got = dispatch(&mut q, 5);
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert_eq!(got[0].deliveries, 2);
    assert_eq!(got[2].deliveries, 1);
}

#[test]
fn max_deliveries_sends_to_the_dead_letter_queue_with_the_reason() {
    let mut q = QueueState::new(
        QueueConfig {
            max_deliveries: Some(2),
            dead_letter: Some("dlq".into()),
            ..cfg()
        },
        1,
    );
    q.subscribe(1, false);
    q.add_credit(1, 10);
    publish(&mut q, 0, 9);
    for round in 0..2 {
        let d = dispatch(&mut q, 0);
        assert_eq!(d.len(), 1, "round {round}");
        assert!(q.nack(0, 1, &[d[0].tag], 0).is_empty());
    }
    assert!(dispatch(&mut q, 0).is_empty());
    let effects = q.take_effects();
    assert!(effects.iter().any(|e| matches!(e,
        Effect::DeadLetter { target, reason: DeadLetterReason::MaxDeliveries, deliveries: 2, .. } if *target == DeadLetterTarget::Queue("dlq".into()))));
    let s = q.stats();
    assert_eq!(s.dead_lettered, 1);
    assert!(s.is_balanced());
}

#[test]
fn without_dead_letter_queue_max_deliveries_and_rejects_are_counted_drops() {
    let mut q = QueueState::new(
        QueueConfig {
            max_deliveries: Some(1),
            ..cfg()
        },
        1,
    );
    q.subscribe(1, false);
    q.add_credit(1, 10);
    publish(&mut q, 0, 1);
    publish(&mut q, 0, 2);
    let d = dispatch(&mut q, 0);
    q.nack(0, 1, &[d[0].tag], 0);
    q.reject(0, 1, &[d[1].tag]);
    let s = q.stats();
    assert_eq!(s.dropped(DropReason::MaxDeliveries), 1);
    assert_eq!(s.dropped(DropReason::DeadLetterRefused), 1);
    assert!(s.is_balanced());
}

#[test]
fn nack_with_delay_holds_the_message_until_due() {
    let mut q = QueueState::new(cfg(), 1);
    q.subscribe(1, false);
    q.add_credit(1, 10);
    publish(&mut q, 0, 5);
    let d = dispatch(&mut q, 0);
    q.nack(100, 1, &[d[0].tag], 500);
    assert_eq!(q.stats().ready, 1, "a delayed message counts as ready");
    q.tick(599);
    assert!(dispatch(&mut q, 599).is_empty());
    assert_eq!(q.next_deadline(), Some(600));
    q.tick(600);
    assert_eq!(dispatch(&mut q, 600).len(), 1);
}

#[test]
fn ttl_expires_ready_messages_and_counts_them() {
    let mut q = QueueState::new(
        QueueConfig {
            message_ttl_ms: Some(1_000),
            ..cfg()
        },
        1,
    );
    publish(&mut q, 0, 1);
    q.publish(0, 1, 2, msg(2).with_ttl_ms(100)).unwrap();
    publish(&mut q, 500, 3);
    q.tick(100);
    assert_eq!(q.stats().expired, 1, "per-message ttl is shorter");
    q.tick(1_000);
    assert_eq!(q.stats().expired, 2);
    q.subscribe(1, true);
    q.add_credit(1, 10);
    let d = dispatch(&mut q, 1_499);
    assert_eq!(d.iter().map(body).collect::<Vec<_>>(), vec![3]);
    assert!(q.stats().is_balanced());
}

#[test]
fn block_queue_grants_credit_only_within_room() {
    let mut q = QueueState::new(
        QueueConfig {
            max_messages: 10,
            ..cfg()
        },
        1,
    );
    q.add_producer(1);
    q.add_producer(2);
    let granted: u32 = q
        .take_effects()
        .iter()
        .map(|e| match e {
            Effect::Credit { n, .. } => *n,
            _ => 0,
        })
        .sum();
    assert_eq!(granted, 10, "credit never exceeds the room");
    assert!(
        q.has_credit(1, 10) && !q.has_credit(2, 1),
        "the first producer took the room"
    );
    for i in 0..10 {
        assert!(matches!(
            q.publish(0, 1, u64::from(i), msg(i)),
            Some(PublishOutcome::Stored { .. })
        ));
    }
    assert!(!q.has_credit(1, 1), "credit used up: the client must wait");
    // A consumer takes and acks two: room for two more is granted.
    q.subscribe(9, false);
    q.add_credit(9, 2);
    let d = dispatch(&mut q, 0);
    q.take_effects();
    q.ack(0, 9, &[d[0].tag, d[1].tag]);
    let more: u32 = q
        .take_effects()
        .iter()
        .map(|e| match e {
            Effect::Credit { n, .. } => *n,
            _ => 0,
        })
        .sum();
    assert_eq!(more, 2);
    assert!(
        q.has_credit(2, 1),
        "freed room is shared: the waiting producer gets some"
    );
    assert!(q.has_credit(1, 1));
    assert_eq!(q.stats().publish_credit_outstanding, 2);
}

#[test]
fn block_queue_holds_a_publish_that_does_not_fit_by_bytes_until_room_frees() {
    let mut q = QueueState::new(
        QueueConfig {
            max_messages: 100,
            max_bytes: 10,
            ..cfg()
        },
        1,
    );
    q.add_producer(1);
    q.take_effects();
    let six = Message::new(vec![0u8; 6]);
    assert!(matches!(
        q.publish(0, 1, 1, six.clone()),
        Some(PublishOutcome::Stored { .. })
    ));
    assert!(
        q.publish(0, 1, 2, six.clone()).is_none(),
        "held, not refused"
    );
    assert!(
        q.publish(0, 1, 3, Message::new(vec![0u8; 1])).is_none(),
        "order kept"
    );
    assert_eq!(q.stats().bytes, 6);
    assert!(
        q.stats().is_balanced(),
        "held messages are not yet published"
    );
    q.subscribe(9, false);
    q.add_credit(9, 1);
    let d = dispatch(&mut q, 0);
    q.take_effects();
    q.ack(0, 9, &[d[0].tag]);
    let confirms: Vec<u64> = q
        .take_effects()
        .iter()
        .filter_map(|e| match e {
            Effect::Confirm {
                token,
                outcome: PublishOutcome::Stored { .. },
                stored: Some(_),
            } => Some(*token),
            _ => None,
        })
        .collect();
    assert_eq!(confirms, vec![2, 3]);
    assert_eq!(q.stats().bytes, 7);
}

#[test]
fn a_closed_publishers_held_publishes_are_dropped_and_others_keep_their_order() {
    let mut q = QueueState::new(
        QueueConfig {
            max_messages: 100,
            max_bytes: 10,
            ..cfg()
        },
        1,
    );
    q.add_producer(1);
    q.add_producer(2);
    q.take_effects();
    let six = Message::new(vec![0u8; 6]);
    assert!(q.publish(0, 1, 1, six.clone()).is_some(), "fits");
    assert!(q.publish(0, 1, 2, six.clone()).is_none(), "held");
    assert!(
        q.publish(0, 2, 3, Message::new(vec![0u8; 2])).is_none(),
        "held behind"
    );
    assert!(q.publish(0, 1, 4, six.clone()).is_none(), "held");
    assert_eq!(q.held_len(), 3);
    q.remove_producer(0, 1);
    let effects = q.take_effects();
    let gone: Vec<u64> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Confirm {
                token,
                outcome:
                    PublishOutcome::Dropped {
                        reason: DropReason::PublisherGone,
                    },
                stored: None,
            } => Some(*token),
            _ => None,
        })
        .collect();
    assert_eq!(gone, vec![2, 4]);
    // Producer 2's message was behind them and fits now.
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Confirm {
            token: 3,
            outcome: PublishOutcome::Stored { .. },
            ..
        }
    )));
    assert_eq!(q.held_len(), 0);
    let s = q.stats();
    assert_eq!(s.dropped(DropReason::PublisherGone), 2);
    assert!(s.is_balanced(), "{s:?}");
}

#[test]
fn dispatch_stays_within_the_connections_budget_and_skips_a_full_one() {
    let mut q = QueueState::new(cfg(), 1);
    for i in 0..10 {
        q.publish(0, 1, i, Message::new(vec![0u8; 100])).unwrap();
    }
    q.subscribe(7, false);
    q.add_credit(7, 1000);
    assert_eq!(q.consumers_wanting(), vec![7]);
    // Room for two deliveries and a bit: the third still goes (any message can pass), then stop.
    let cost = Message::new(vec![0u8; 100]).wire_len() as u64 + DELIVERY_OVERHEAD;
    q.set_budget(7, Some(2 * cost + 1));
    let got = dispatch(&mut q, 0);
    assert_eq!(got.len(), 3);
    assert!(dispatch(&mut q, 0).is_empty(), "budget used up");
    q.set_budget(7, Some(0));
    assert!(
        dispatch(&mut q, 0).is_empty(),
        "a full connection gets nothing"
    );
    q.set_budget(7, None);
    assert_eq!(dispatch(&mut q, 0).len(), 7);
}

#[test]
fn ack_deadlines_start_when_written_and_unwritten_deliveries_return_uncounted() {
    let mut q = QueueState::new(
        QueueConfig {
            ack_timeout_ms: 100,
            max_deliveries: Some(1),
            ..cfg()
        },
        1,
    );
    for i in 0..4 {
        publish(&mut q, 0, i);
    }
    q.subscribe(7, false);
    q.track_writes(7);
    q.add_credit(7, 4);
    let got = dispatch(&mut q, 0);
    assert_eq!(got.len(), 4);
    // Only the first two were written (at t=50); nothing times out before their deadline...
    q.written(50, 7, got[1].tag);
    q.tick(120);
    assert_eq!(q.stats().unacked, 4, "deadlines start at the write");
    // ...then those two do (max_deliveries 1: they are dropped), the unwritten two do not.
    q.tick(150);
    let s = q.stats();
    assert_eq!(
        (s.unacked, s.dropped(DropReason::MaxDeliveries)),
        (2, 2),
        "{s:?}"
    );
    q.tick(10_000);
    assert_eq!(q.stats().unacked, 2, "never written: no deadline");
    // The consumer goes away: the two that never left come back with their count unchanged.
    q.unsubscribe(10_000, 7);
    q.subscribe(8, false);
    q.add_credit(8, 10);
    let again = dispatch(&mut q, 10_000);
    assert_eq!(again.iter().map(body).collect::<Vec<_>>(), vec![2, 3]);
    assert!(
        again.iter().all(|o| o.deliveries == 1),
        "first real delivery"
    );
    assert!(q.stats().is_balanced());
}

#[test]
fn undurable_messages_are_taken_out_and_come_back_under_their_new_sequence_numbers() {
    let mut q = QueueState::new(cfg(), 1);
    for i in 0..5 {
        publish(&mut q, 0, i);
    }
    q.set_durable(3); // seqs 1 and 2 durable; 3..=5 not
    let taken = q.take_undurable();
    assert_eq!(taken.iter().map(|t| t.0).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(q.stats().ready, 2);
    for (i, (_, queued, meta)) in taken.into_iter().enumerate() {
        q.restore_rewritten(10 + i as u64, queued, meta);
    }
    q.set_next_seq(13);
    q.subscribe(7, true);
    q.add_credit(7, 10);
    assert_eq!(
        dispatch(&mut q, 0).len(),
        2,
        "the rewrite is not durable yet"
    );
    q.set_durable(13);
    let rest = dispatch(&mut q, 0);
    assert_eq!(
        rest.iter().map(|o| o.seq).collect::<Vec<_>>(),
        vec![10, 11, 12]
    );
    assert_eq!(
        rest.iter().map(body).collect::<Vec<_>>(),
        vec![2, 3, 4],
        "order kept"
    );
    assert!(q.stats().is_balanced());
}

#[test]
fn a_message_with_too_many_headers_is_refused_at_publish() {
    let mut q = QueueState::new(cfg(), 1);
    let mut m = msg(1);
    for i in 0..=MAX_USER_HEADERS {
        m = m.with_header(format!("h{i}"), b"v".to_vec());
    }
    assert!(matches!(
        q.publish(0, 1, 1, m),
        Some(PublishOutcome::Rejected {
            code: ErrorCode::MessageTooLarge,
            ..
        })
    ));
    let s = q.stats();
    assert_eq!((s.published, s.rejected), (1, 1));
}

#[test]
fn messages_past_the_durability_watermark_are_not_delivered() {
    let mut q = QueueState::new(cfg(), 1);
    q.set_durable(1);
    q.subscribe(1, true);
    q.add_credit(1, 10);
    publish(&mut q, 0, 1);
    publish(&mut q, 0, 2);
    assert!(dispatch(&mut q, 0).is_empty());
    q.set_durable(2);
    assert_eq!(dispatch(&mut q, 0).len(), 1);
    q.set_durable(3);
    assert_eq!(dispatch(&mut q, 0).len(), 1);
}

#[test]
fn drop_policies_count_every_message() {
    for (overflow, reason) in [
        (Overflow::DropNewest, DropReason::OverflowNewest),
        (Overflow::DropOldest, DropReason::EvictedOldest),
    ] {
        let mut q = QueueState::new(
            QueueConfig {
                max_messages: 5,
                overflow,
                ..cfg()
            },
            1,
        );
        for i in 0..20 {
            publish(&mut q, 0, i);
        }
        let s = q.stats();
        assert_eq!(s.ready, 5);
        assert_eq!(s.dropped(reason), 15, "{overflow}");
        assert!(s.is_balanced());
        q.subscribe(1, true);
        q.add_credit(1, 10);
        let got: Vec<u32> = dispatch(&mut q, 0).iter().map(body).collect();
        let want: Vec<u32> = if overflow == Overflow::DropNewest {
            (0..5).collect()
        } else {
            (15..20).collect()
        };
        assert_eq!(got, want);
    }
}

#[test]
fn reject_policy_refuses_when_full() {
    let mut q = QueueState::new(
        QueueConfig {
            max_messages: 2,
            overflow: Overflow::Reject,
            ..cfg()
        },
        1,
    );
    publish(&mut q, 0, 1);
    publish(&mut q, 0, 2);
    assert!(matches!(
        publish(&mut q, 0, 3),
        PublishOutcome::Rejected {
            code: ErrorCode::QueueFull,
            ..
        }
    ));
    let s = q.stats();
    assert_eq!((s.published, s.stored, s.rejected), (3, 2, 1));
}

#[test]
fn conflate_by_key_keeps_the_latest_per_key() {
    let mut q = QueueState::new(
        QueueConfig {
            max_messages: 10,
            overflow: Overflow::ConflateByKey,
            ..cfg()
        },
        1,
    );
    for round in 0..5u32 {
        for sensor in ["a", "b", "c"] {
            q.publish(0, 1, 0, msg(round).with_key(sensor)).unwrap();
        }
    }
    let s = q.stats();
    assert_eq!(s.ready, 3);
    assert_eq!(s.dropped(DropReason::Conflated), 12);
    q.subscribe(1, true);
    q.add_credit(1, 10);
    let got = dispatch(&mut q, 0);
    assert!(
        got.iter().all(|o| body(o) == 4),
        "latest reading of every sensor"
    );
}

#[test]
fn shed_priority_never_drops_high_while_low_is_queued() {
    let mut q = QueueState::new(
        QueueConfig {
            max_messages: 5,
            overflow: Overflow::ShedPriority,
            order: Order::Priority,
            ..cfg()
        },
        1,
    );
    for i in 0..20u32 {
        let p = if i % 5 == 0 { 9 } else { 1 };
        q.publish(0, 1, 0, msg(i).with_priority(p)).unwrap();
    }
    q.subscribe(1, true);
    q.add_credit(1, 10);
    let got: Vec<u32> = dispatch(&mut q, 0).iter().map(body).collect();
    for high in [0, 5, 10, 15] {
        assert!(got.contains(&high), "high-priority {high} kept: {got:?}");
    }
    assert_eq!(&got[..4], &[0, 5, 10, 15], "priority order");
    assert!(q.stats().is_balanced());
}

#[test]
fn purge_drops_ready_messages_with_their_reason() {
    let mut q = QueueState::new(cfg(), 1);
    for i in 0..4 {
        publish(&mut q, 0, i);
    }
    assert_eq!(q.purge(0), 4);
    assert_eq!(q.stats().dropped(DropReason::Purged), 4);
    assert_eq!(q.take_effects().len(), 4, "one settlement each");
}

#[test]
fn rate_limit_slows_publishers_and_throttles_under_reject() {
    let limited = |overflow| {
        QueueState::new(
            QueueConfig {
                overflow,
                rate_limit: Some(levee_proto::RateLimit::msgs(10)),
                ..cfg()
            },
            1,
        )
    };
    // drop-newest (never blocks): over the rate, messages are held, not failed.
    let mut q = limited(Overflow::DropNewest);
    let mut immediate = 0;
    for i in 0..15u32 {
        if q.publish(0, 1, u64::from(i), msg(i)).is_some() {
            immediate += 1;
        }
    }
    assert_eq!(immediate, 10, "the burst of 10 passes at once");
    let wake = q.next_deadline().expect("a retry is scheduled");
    assert!(wake > 0 && wake <= 100, "one message per 100 ms: {wake}");
    q.tick(250);
    let confirmed = q
        .take_effects()
        .iter()
        .filter(|e| {
            matches!(
                e,
                Effect::Confirm {
                    outcome: PublishOutcome::Stored { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(confirmed, 2, "two more by 250 ms (10/s)");
    q.tick(1_000);
    assert_eq!(q.stats().published, 15, "all admitted within a second");
    assert!(q.stats().is_balanced());
    // reject: over the rate the producer is told to retry later.
    let mut q = limited(Overflow::Reject);
    for i in 0..10u32 {
        assert!(matches!(
            q.publish(0, 1, 0, msg(i)),
            Some(PublishOutcome::Stored { .. })
        ));
    }
    match q.publish(0, 1, 0, msg(10)) {
        Some(PublishOutcome::Throttled { retry_after_ms }) => {
            assert!((1..=100).contains(&retry_after_ms), "{retry_after_ms}");
        }
        other => panic!("{other:?}"),
    }
    assert!(q.stats().is_balanced());
}

#[derive(Debug, Clone)]
enum Op {
    Publish(u8, u8),
    Credit(u8, u8),
    Ack(u8),
    Nack(u8, u16),
    Reject(u8),
    Unsubscribe(u8),
    Tick(u16),
    Purge,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), 0u8..4).prop_map(|(s, p)| Op::Publish(s, p)),
        2 => (0u8..3, 0u8..5).prop_map(|(c, n)| Op::Credit(c, n)),
        2 => any::<u8>().prop_map(Op::Ack),
        1 => (any::<u8>(), 0u16..300).prop_map(|(t, d)| Op::Nack(t, d)),
        1 => any::<u8>().prop_map(Op::Reject),
        1 => (0u8..3).prop_map(Op::Unsubscribe),
        1 => (0u16..500).prop_map(Op::Tick),
        1 => Just(Op::Purge),
    ]
}

fn overflow() -> impl Strategy<Value = Overflow> {
    prop::sample::select(Overflow::ALL.to_vec())
}

proptest! {
    /// Under any sequence of operations and any policy, the accounting balances, no consumer
    /// holds more than its credit allowed, and limits hold.
    #[test]
    fn accounting_balances_and_credit_is_respected(
        overflow in overflow(),
        ops in prop::collection::vec(op(), 1..200),
        max_messages in 1u64..8,
        ttl in prop::option::of(50u64..400),
        max_deliveries in prop::option::of(1u32..4),
    ) {
        let mut q = QueueState::new(QueueConfig {
            max_messages,
            max_bytes: 64,
            overflow,
            order: if overflow == Overflow::ShedPriority { Order::Priority } else { Order::Fifo },
            ack_timeout_ms: 250,
            message_ttl_ms: ttl,
            max_deliveries,
            ..cfg()
        }, 1);
        q.add_producer(1);
        let mut now = 0u64;
        let mut granted: HashMap<ConsumerId, u64> = HashMap::new();
        let mut received: HashMap<ConsumerId, u64> = HashMap::new();
        let mut outstanding: Vec<(ConsumerId, u64)> = Vec::new();
        let mut subscribed = [false; 3];
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Publish(size, prio) => {
                    let m = Message::new(vec![0u8; usize::from(size % 20)])
                        .with_priority(prio)
                        .with_key(vec![size % 3]);
                    if q.has_credit(1, 1) {
                        let _ = q.publish(now, 1, i as u64, m);
                    }
                }
                Op::Credit(c, n) => {
                    let c = u64::from(c);
                    if !subscribed[c as usize] {
                        q.subscribe(c, false);
                        subscribed[c as usize] = true;
                    }
                    q.add_credit(c, n.into());
                    *granted.entry(c).or_default() += u64::from(n);
                }
                Op::Ack(t) | Op::Nack(t, _) | Op::Reject(t) if !outstanding.is_empty() => {
                    let (c, tag) = outstanding.remove(usize::from(t) % outstanding.len());
                    match op {
                        Op::Ack(_) => { q.ack(now, c, &[tag]); }
                        Op::Nack(_, d) => { q.nack(now, c, &[tag], d.into()); }
                        _ => { q.reject(now, c, &[tag]); }
                    }
                }
                Op::Unsubscribe(c) => {
                    let c = u64::from(c);
                    q.unsubscribe(now, c);
                    subscribed[c as usize] = false;
                    outstanding.retain(|(o, _)| *o != c);
                    granted.insert(c, 0);
                    received.insert(c, 0);
                }
                Op::Tick(d) => { now += u64::from(d); q.tick(now); }
                Op::Purge => { q.purge(now); }
                _ => {}
            }
            let mut out = Vec::new();
            q.dispatch(now, &mut out);
            for o in out {
                *received.entry(o.consumer).or_default() += 1;
                outstanding.push((o.consumer, o.tag));
            }
            q.take_effects();
            let s = q.stats();
            prop_assert!(s.is_balanced(), "{s:?}");
            for (c, r) in &received {
                prop_assert!(*r <= granted.get(c).copied().unwrap_or(0), "consumer {c} over credit");
            }
            prop_assert!(s.ready + s.unacked <= max_messages, "{s:?}");
            prop_assert!(s.bytes <= 64, "{s:?}");
        }
    }
}

#[test]
fn a_republished_message_id_is_a_duplicate_and_not_stored_again() {
    let mut q = QueueState::new(cfg(), 1);
    let with_id = |n: u32, id: &str| msg(n).with_message_id(id.to_owned());
    let first = q.publish(1_000, 1, 0, with_id(1, "a")).unwrap();
    let PublishOutcome::Stored { seq } = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        q.publish(1_500, 1, 1, with_id(2, "a")),
        Some(PublishOutcome::Duplicate { seq })
    );
    // Without an id nothing is deduplicated, even with the same payload.
    assert!(matches!(
        publish(&mut q, 1_600, 1),
        PublishOutcome::Stored { .. }
    ));
    assert!(matches!(
        publish(&mut q, 1_600, 1),
        PublishOutcome::Stored { .. }
    ));
    // Acking the message does not forget its id: the window is about what was published.
    q.subscribe(7, false);
    q.add_credit(7, 10);
    let out = dispatch(&mut q, 1_700);
    q.ack(1_700, 7, &out.iter().map(|o| o.tag).collect::<Vec<_>>());
    assert!(matches!(
        q.publish(1_800, 1, 2, with_id(3, "a")),
        Some(PublishOutcome::Duplicate { .. })
    ));
    // Two minutes later (the default window) it is new again.
    assert!(matches!(
        q.publish(1_000 + 120_000, 1, 3, with_id(4, "a")),
        Some(PublishOutcome::Stored { .. })
    ));
    let s = q.stats();
    assert_eq!(s.duplicates, 2);
    assert_eq!(s.published, 4, "duplicates are not publishes");
    assert!(s.is_balanced());
}

#[test]
fn a_refused_publish_leaves_its_id_free_for_a_retry() {
    let mut q = QueueState::new(
        QueueConfig {
            max_messages: 1,
            overflow: Overflow::Reject,
            ..cfg()
        },
        1,
    );
    let with_id = |n: u32, id: &str| msg(n).with_message_id(id.to_owned());
    assert!(matches!(
        q.publish(0, 1, 0, with_id(1, "a")),
        Some(PublishOutcome::Stored { .. })
    ));
    assert!(matches!(
        q.publish(0, 1, 1, with_id(2, "b")),
        Some(PublishOutcome::Rejected { .. })
    ));
    q.purge(0);
    assert!(matches!(
        q.publish(0, 1, 2, with_id(2, "b")),
        Some(PublishOutcome::Stored { .. })
    ));
}

#[test]
fn dedup_off_stores_every_copy() {
    let mut q = QueueState::new(
        QueueConfig {
            dedup: None,
            ..cfg()
        },
        1,
    );
    for i in 0..3 {
        assert!(matches!(
            q.publish(0, 1, i, msg(1).with_message_id("same")),
            Some(PublishOutcome::Stored { .. })
        ));
    }
}

#[test]
fn restored_ids_rebuild_the_window_with_their_publish_time() {
    let mut q = QueueState::new(cfg(), 10);
    q.restore_id(3, 1_000, b"a");
    assert_eq!(
        q.publish(60_000, 1, 0, msg(1).with_message_id("a")),
        Some(PublishOutcome::Duplicate { seq: 3 })
    );
    assert!(matches!(
        q.publish(121_000, 1, 1, msg(1).with_message_id("a")),
        Some(PublishOutcome::Stored { .. })
    ));
}

#[test]
fn an_extended_lease_moves_the_ack_deadline_and_an_ended_one_cannot_be_renewed() {
    let mut q = QueueState::new(
        QueueConfig {
            ack_timeout_ms: 1_000,
            ..cfg()
        },
        1,
    );
    publish(&mut q, 0, 1);
    q.subscribe(7, false);
    q.add_credit(7, 1);
    let tag = dispatch(&mut q, 0)[0].tag;
    assert!(q.extend(900, 7, &[tag], 5_000).is_empty());
    q.tick(1_000);
    assert_eq!(q.stats().unacked, 1, "the old deadline no longer applies");
    assert_eq!(q.next_deadline(), Some(5_900));
    // Another consumer cannot renew it.
    assert_eq!(
        q.extend(1_000, 8, &[tag], 5_000),
        vec![SettleError::UnknownTag(tag)]
    );
    // Extend 0 = the queue's ack timeout from now.
    assert!(q.extend(2_000, 7, &[tag], 0).is_empty());
    assert_eq!(q.next_deadline(), Some(3_000));
    q.tick(3_000);
    assert_eq!(q.stats().unacked, 0, "the lease ended: back in the queue");
    assert_eq!(
        q.extend(3_001, 7, &[tag], 5_000),
        vec![SettleError::UnknownTag(tag)]
    );
    assert!(q.stats().is_balanced());
}

#[test]
fn lowering_limits_drops_nothing_and_refuses_until_drained() {
    let mut q = QueueState::new(
        QueueConfig {
            overflow: Overflow::Reject,
            ..cfg()
        },
        1,
    );
    for i in 0..10 {
        publish(&mut q, 0, i);
    }
    let c = q.config().clone();
    q.reconfigure(
        0,
        QueueConfig {
            max_messages: 5,
            ..c.clone()
        },
    )
    .unwrap();
    assert_eq!(q.stats().ready, 10, "nothing dropped to fit");
    assert!(matches!(
        publish(&mut q, 0, 99),
        PublishOutcome::Rejected { .. }
    ));
    q.subscribe(7, false);
    q.add_credit(7, 6);
    let out = dispatch(&mut q, 0);
    q.ack(0, 7, &out.iter().map(|o| o.tag).collect::<Vec<_>>());
    assert_eq!(q.stats().ready, 4);
    assert!(matches!(
        publish(&mut q, 0, 100),
        PublishOutcome::Stored { .. }
    ));
    // Under an eviction policy a shrunk queue only swaps: it never grows.
    q.reconfigure(
        0,
        QueueConfig {
            max_messages: 2,
            overflow: Overflow::DropOldest,
            ..c.clone()
        },
    )
    .unwrap();
    assert_eq!(q.stats().ready, 5);
    publish(&mut q, 0, 101);
    assert_eq!(q.stats().ready, 5, "one in, the oldest out");
    assert!(q.stats().is_balanced());
    // Order, durability and conflation cannot change.
    for bad in [
        QueueConfig {
            order: Order::Priority,
            ..c.clone()
        },
        QueueConfig {
            overflow: Overflow::ConflateByKey,
            ..c.clone()
        },
        QueueConfig {
            durability: levee_proto::Durability::default(),
            ..c.clone()
        },
    ] {
        assert!(q.reconfigure(0, bad).is_err());
    }
}

#[test]
fn consumers_of_the_highest_priority_with_credit_get_the_messages() {
    let mut q = QueueState::new(cfg(), 1);
    q.subscribe(1, true);
    q.subscribe(2, true);
    q.subscribe(3, true);
    q.set_priority(2, 5);
    q.set_priority(3, 5);
    for c in 1..=3 {
        q.add_credit(c, 2);
    }
    for i in 0..6 {
        publish(&mut q, 0, i);
    }
    let out = dispatch(&mut q, 0);
    let to: Vec<u64> = out.iter().map(|o| o.consumer).collect();
    // The two priority-5 consumers take turns until their credit is used, then consumer 1.
    assert_eq!(to, vec![2, 3, 2, 3, 1, 1]);
    // Back to priority 0: plain round-robin over everyone.
    q.set_priority(2, 0);
    q.set_priority(3, 0);
    for c in 1..=3 {
        q.add_credit(c, 1);
    }
    for i in 0..3 {
        publish(&mut q, 0, i);
    }
    let out = dispatch(&mut q, 0);
    let mut to: Vec<u64> = out.iter().map(|o| o.consumer).collect();
    to.sort_unstable();
    assert_eq!(to, vec![1, 2, 3]);
}

#[test]
fn a_single_active_consumer_gets_everything_until_it_leaves() {
    let config = QueueConfig {
        single_active_consumer: true,
        ..cfg()
    };
    let mut q = QueueState::new(config, 1);
    q.subscribe(4, false);
    q.subscribe(9, false);
    q.add_credit(4, 2);
    q.add_credit(9, 10);
    for i in 0..5 {
        publish(&mut q, 0, i);
    }
    let out = dispatch(&mut q, 0);
    // Only the first subscriber, within its credit: the other waits though it has credit.
    assert_eq!(
        out.iter().map(|o| o.consumer).collect::<Vec<_>>(),
        vec![4, 4]
    );
    // It leaves: its two unacked messages return, and the next consumer takes over.
    q.unsubscribe(10, 4);
    let out = dispatch(&mut q, 10);
    assert_eq!(out.len(), 5);
    assert!(out.iter().all(|o| o.consumer == 9));
}

#[test]
fn a_queue_expires_after_going_unused_for_its_expires_ms() {
    let config = QueueConfig {
        expires_ms: Some(1_000),
        ..cfg()
    };
    let mut q = QueueState::new(config, 1);
    q.touch(0);
    assert_eq!(q.next_deadline(), Some(1_000));
    assert!(!q.take_expired(999));
    // A consumer stops the clock; it restarts when the last one leaves.
    q.subscribe(1, false);
    assert_eq!(q.next_deadline(), None);
    assert!(!q.take_expired(5_000));
    q.unsubscribe(5_000, 1);
    // A redeclare restarts it too.
    q.touch(5_500);
    assert!(!q.take_expired(6_000));
    assert!(q.take_expired(6_500));
    // Reported once.
    assert!(!q.take_expired(7_000));
    assert_eq!(q.next_deadline(), None);
}

#[test]
fn a_deep_durable_backlog_lets_go_of_the_bodies_it_made_durable() {
    let n = MEMORY_BODIES as u32 + 100;
    let mut q = QueueState::new(cfg(), 1);
    q.set_durable(1); // a disk queue: its watermark is managed
    for i in 0..n {
        publish(&mut q, 0, i);
    }
    let held = |q: &QueueState| {
        q.peek(n as usize)
            .iter()
            .filter(|(_, _, _, body)| body.is_some())
            .count()
    };
    assert_eq!(held(&q), n as usize, "not durable yet: every body stays");
    // The first half becomes durable while the queue is deep: those bodies go.
    q.set_durable(1 + u64::from(n / 2));
    assert_eq!(held(&q), n as usize - (n / 2) as usize);
    q.set_durable(1 + u64::from(n));
    assert_eq!(
        held(&q),
        0,
        "every durable message of a deep queue is read back from the log"
    );
    // A shallow queue keeps its bodies.
    let mut q = QueueState::new(cfg(), 1);
    q.set_durable(1);
    for i in 0..10 {
        publish(&mut q, 0, i);
    }
    q.set_durable(11);
    assert_eq!(held(&q), 10);
    // A memory queue (watermark never set) never lets go of a body.
    let mut q = QueueState::new(cfg(), 1);
    for i in 0..n {
        publish(&mut q, 0, i);
    }
    assert_eq!(held(&q), n as usize);
    assert!(q.stats().is_balanced());
}
