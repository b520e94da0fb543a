//! Micro benchmarks of the per-message hot paths:
//! - decoding a client `send` frame (simd-json, in place),
//! - encoding a `msg` event into a WebSocket frame (once per node),
//! - fanning one encoded message out to N local connection queues (the
//!   shard's inner loop, `gateway::hub::fan_out`),
//! - minting a message id,
//! - recording one delivery's publish-to-deliver latency (once per message
//!   per connection, `gateway::metrics::delivery`).
//!
//! `cargo bench -p benches --bench hot_paths`; results are indicative on a
//! shared 2-core box.

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway::hub::{ConnHandle, Outgoing, QueueLimits, fan_out};
use protocol::encode::{MsgView, msg_event};

fn decode(c: &mut Criterion) {
    let frame = br#"{"op":"send","id":123,"room":"team-42:general","body":{"text":"hello there, how is everyone doing today?","t":1700000000123456}}"#;
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("send_frame", |b| {
        let mut buf = frame.to_vec();
        b.iter(|| {
            buf.copy_from_slice(frame);
            black_box(protocol::parse_request(black_box(&mut buf)).unwrap());
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let body = r#"{"text":"hello there, how is everyone doing today?","t":1700000000123456}"#;
    let view = MsgView {
        room: "team-42:general",
        id: 7_131_000_000_000_000_123,
        from: "user-12345",
        ts: 1_700_000_000_123,
        body,
        reply_to: None,
        change: None,
        state: None,
    };
    c.bench_function("encode/msg_event_frame", |b| {
        b.iter(|| black_box(gateway::ws::text_frame(&msg_event(black_box(view)))))
    });
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fan_out");
    let frame = gateway::ws::text_frame(&msg_event(MsgView {
        room: "r",
        id: 1,
        from: "u",
        ts: 1,
        body: r#""hi""#,
        reply_to: None,
        change: None,
        state: None,
    }));
    for n in [10usize, 1_000, 10_000] {
        let members: Vec<Arc<ConnHandle>> = (0..n as u64)
            .map(|id| {
                Arc::new(ConnHandle::detached(
                    id + 1,
                    QueueLimits {
                        deliveries: 1 << 20,
                        bytes: usize::MAX,
                    },
                ))
            })
            .collect();
        let out = Arc::new(Outgoing {
            room: "r".into(),
            msg_id: 1,
            skip_conn: 0,
            frame: frame.clone(),
        });
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            // Queues are drained between iterations (as connections would
            // write them), outside the timing.
            b.iter_batched(
                || {
                    for m in &members {
                        m.drain();
                    }
                },
                |()| fan_out(black_box(&out), &members),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn ids(c: &mut Criterion) {
    c.bench_function("id/next_after", |b| {
        let mut last = 0;
        b.iter(|| {
            last = protocol::id::next_after(black_box(last), black_box(1_700_000_000_000));
            last
        })
    });
}

fn delivery_latency(c: &mut Criterion) {
    use gateway::metrics::delivery::{LATENCY, clock_ms, tick};
    tick();
    let id = protocol::id::pack(clock_ms() - 3, 0);
    c.bench_function("metrics/delivery_observe", |b| {
        b.iter(|| LATENCY.observe(black_box(id), black_box(clock_ms())))
    });
}

criterion_group!(benches, decode, encode, fanout, ids, delivery_latency);
criterion_main!(benches);
