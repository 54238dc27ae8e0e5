//! Subscription-tree micro-benchmarks: matching a topic against 1, 10k and 1M subscriptions, and
//! a wildcard-heavy tree. `cargo bench -p switchyard-bench --bench topic_match`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use switchyard_core::topic::{RetainedTree, TopicTree, TreeEntry};

struct Sub(String);

impl TreeEntry for Sub {
    fn key(&self) -> &str {
        &self.0
    }
}

fn exact_tree(n: usize) -> TopicTree<Sub> {
    let mut t = TopicTree::default();
    for i in 0..n {
        t.insert(
            &format!("devices/{}/{}/telemetry", i % 1000, i),
            None,
            Sub(format!("c{i}")),
        );
    }
    t
}

fn wildcard_tree(n: usize) -> TopicTree<Sub> {
    let mut t = TopicTree::default();
    for i in 0..n {
        let f = match i % 4 {
            0 => format!("devices/+/{i}/telemetry"),
            1 => format!("devices/{}/#", i % 1000),
            2 => format!("+/{}/+/telemetry", i % 1000),
            _ => format!("devices/{}/{i}/+", i % 1000),
        };
        t.insert(&f, None, Sub(format!("c{i}")));
    }
    t.insert("#", None, Sub("everything".into()));
    t
}

/// Times one match of `topic` against `tree`, as benchmark `n` of the group.
fn bench_match<T: TreeEntry>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    n: usize,
    tree: &TopicTree<T>,
    topic: &str,
) {
    g.bench_with_input(BenchmarkId::from_parameter(n), topic, |b, topic| {
        b.iter(|| {
            let mut hits = 0;
            tree.for_each_match(black_box(topic), |_| true, |_, _| hits += 1);
            black_box(hits)
        })
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("match_exact");
    for n in [1usize, 10_000, 1_000_000] {
        let t = exact_tree(n);
        let topic = format!("devices/{}/{}/telemetry", (n / 2) % 1000, n / 2);
        bench_match(&mut g, n, &t, &topic);
    }
    g.finish();

    let mut g = c.benchmark_group("match_wildcards");
    for n in [10_000usize, 100_000] {
        let t = wildcard_tree(n);
        let topic = format!("devices/{}/{}/telemetry", 7, 7007);
        bench_match(&mut g, n, &t, &topic);
    }
    g.finish();

    // A device subscribing to its own state among 100k retained device states.
    let mut retained = RetainedTree::default();
    for i in 0..100_000u32 {
        retained.insert(&format!("state/{}/{i}", i % 100), i);
    }
    let mut g = c.benchmark_group("retained_lookup_100k");
    for filter in ["state/42/4242", "state/42/+", "state/+/4242"] {
        g.bench_with_input(BenchmarkId::from_parameter(filter), filter, |b, f| {
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                retained.matching(black_box(f), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();

    c.bench_function("subscribe_unsubscribe_10k_tree", |b| {
        let mut t = exact_tree(10_000);
        b.iter(|| {
            t.insert("devices/1/new/telemetry", None, Sub("new".into()));
            black_box(t.remove("devices/1/new/telemetry", None, "new"));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
