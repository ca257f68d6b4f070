//! The measurements behind the choice of hashing scheme in the crate docs: balance (max/mean
//! over 1M keys) and the share of keys that move when one of N backends leaves or joins.
//! Ignored by default (it takes a few seconds in release):
//! `cargo test -p mcplb-lb --release --test measure -- --ignored --nocapture`.

use mcplb_lb::{hash_key, HashRing, HashScheme};

const KEYS: usize = 1_000_000;

fn tags(n: u32) -> Vec<(u32, u32)> {
    (0..n)
        .map(|i| (hash_key(format!("10.0.0.{i}:8080").as_bytes()) as u32, 1))
        .collect()
}

/// Tag each key lands on.
fn assign(ring: &HashRing, backends: &[(u32, u32)], keys: &[u64]) -> Vec<u32> {
    keys.iter()
        .map(|&k| {
            ring.pick(k, |_| true)
                .and_then(|i| backends.get(i))
                .map_or(u32::MAX, |b| b.0)
        })
        .collect()
}

fn moved(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

#[test]
#[ignore = "measurement, run by hand in release"]
fn scheme_table() {
    let keys: Vec<u64> = (0..KEYS)
        .map(|i| hash_key(format!("mcp-session-{i:016x}").as_bytes()))
        .collect();
    println!("| scheme | N | max/mean | moved on leave | moved on join | 1/N |");
    println!("|---|---|---|---|---|---|");
    for scheme in [HashScheme::Rendezvous, HashScheme::MAGLEV, HashScheme::RING] {
        for n in [3u32, 10, 100] {
            let all = tags(n + 1);
            let base = &all[..n as usize];
            let ring = HashRing::with_scheme(scheme, base);
            let before = assign(&ring, base, &keys);
            let mut counts = vec![0usize; n as usize];
            for &k in &keys {
                if let Some(i) = ring.pick(k, |_| true) {
                    counts[i] += 1;
                }
            }
            let max = *counts.iter().max().unwrap_or(&0) as f64;
            let balance = max / (KEYS as f64 / f64::from(n));
            let mut left = base.to_vec();
            left.remove(n as usize / 2);
            let leave = moved(
                &before,
                &assign(&HashRing::with_scheme(scheme, &left), &left, &keys),
            );
            let join = moved(
                &before,
                &assign(&HashRing::with_scheme(scheme, &all), &all, &keys),
            );
            println!(
                "| {scheme:?} | {n} | {balance:.3} | {:.2} % | {:.2} % | {:.2} % |",
                leave * 100.0,
                join * 100.0,
                100.0 / f64::from(n)
            );
        }
    }
}
