//! No allocation made while decoding is sized from an untrusted length or count beyond what the
//! frame actually holds. A counting global allocator records the largest single allocation made on
//! the decoding thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, BytesMut};
use levee_proto::*;

struct Tracking;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged,
// so this allocator upholds `GlobalAlloc`'s contract exactly as `System` does.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's arguments, forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's arguments, forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's arguments, forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Largest allocation made while decoding `buf` as a client frame.
fn largest_allocation_decoding(
    mut buf: BytesMut,
) -> (usize, Result<Option<ClientFrame>, ProtoError>) {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let r = ClientFrame::decode(&mut buf, DEFAULT_MAX_FRAME);
    ARMED.with(|a| a.set(false));
    (LARGEST.with(Cell::get), r)
}

fn frame(ty: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32_le(body.len() as u32 + 1);
    b.put_u8(ty);
    b.extend_from_slice(body);
    b
}

#[test]
fn lying_counts_and_lengths_allocate_nothing_big() {
    let mut lies = Vec::new();
    // Ack claiming the maximum number of tags while holding 16 bytes.
    let mut body = 1u64.to_le_bytes().to_vec();
    body.extend_from_slice(&(MAX_TAGS as u32).to_le_bytes());
    body.extend_from_slice(&[0; 16]);
    lies.push(frame(frame_type::ACK, &body));
    // Publish claiming MAX_BATCH messages while holding one byte each.
    let mut body = 1u64.to_le_bytes().to_vec();
    body.extend_from_slice(&[1, b'q']);
    body.extend_from_slice(&(MAX_BATCH as u32).to_le_bytes());
    body.extend_from_slice(&[0; 64]);
    lies.push(frame(frame_type::PUBLISH, &body));
    // A message claiming a 4 GiB payload.
    let mut body = 1u64.to_le_bytes().to_vec();
    body.extend_from_slice(&[1, b'q']);
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    lies.push(frame(frame_type::PUBLISH, &body));
    // A Hello claiming a 64 KiB client name.
    let mut body = MAGIC.to_vec();
    body.extend_from_slice(&[1, 0, 1, 0, 0xff, 0xff]);
    lies.push(frame(frame_type::HELLO, &body));

    for buf in lies {
        let wire_len = buf.len();
        let (largest, result) = largest_allocation_decoding(buf);
        assert!(result.is_err(), "lying frame must be refused: {result:?}");
        assert!(
            largest <= 4 * wire_len.max(64),
            "allocated {largest} bytes for a {wire_len}-byte frame"
        );
    }
}

#[test]
fn oversized_prefix_allocates_nothing() {
    let mut buf = BytesMut::with_capacity(8);
    buf.put_u32_le(u32::MAX);
    buf.put_u8(frame_type::PUBLISH);
    let (largest, result) = largest_allocation_decoding(buf);
    assert!(matches!(result, Err(ProtoError::FrameTooLarge { .. })));
    assert_eq!(largest, 0, "refused before any allocation");
}

#[test]
fn incomplete_frame_allocates_nothing() {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u32_le(DEFAULT_MAX_FRAME as u32);
    buf.put_u8(frame_type::PUBLISH);
    buf.extend_from_slice(&[0; 32]);
    let (largest, result) = largest_allocation_decoding(buf);
    assert_eq!(result, Ok(None));
    assert_eq!(largest, 0, "waiting for bytes reserves nothing");
}

#[test]
fn tracking_sees_allocations_a_real_frame_needs() {
    // Guards the other tests: the allocator hook must observe the 80 KB tag vector of a real Ack.
    let mut buf = BytesMut::new();
    ClientFrame::Ack {
        subscription: 1,
        tags: (0..10_000).collect(),
    }
    .encode(&mut buf)
    .unwrap();
    let (largest, result) = largest_allocation_decoding(buf);
    assert!(matches!(result, Ok(Some(ClientFrame::Ack { .. }))));
    assert!(largest >= 80_000, "largest allocation seen: {largest}");
}
