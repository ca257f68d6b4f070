//! What a sealed session id costs per request: opening an id without an owner (groups without
//! authentication) and one with an owner (groups with it), the owner digest of a caller (an
//! HMAC-SHA256 of its identity, once per request in a group with authentication), and sealing
//! a new id (once per session).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use mcplb::session::{SessionSealer, SCRATCH};

fn session(c: &mut Criterion) {
    let sealer = SessionSealer::new(&[7; 32]);
    // A backend session id as the Python SDK makes them (32 hex digits).
    let sid = b"9f2c4e1a7b3d4c5e8f6a1b2c3d4e5f60";
    let digest = [0x5au8; 32];
    let owner = sealer.owner(&[b"api-key", &digest]);
    let (mut unowned, mut owned) = (Vec::new(), Vec::new());
    sealer.seal(0xdead_beef, None, sid, &mut unowned).unwrap();
    sealer
        .seal(0xdead_beef, Some(&owner), sid, &mut owned)
        .unwrap();
    let mut scratch = [0u8; SCRATCH];
    c.bench_function(&format!("session/open_unowned_{}B", unowned.len()), |b| {
        b.iter(|| black_box(sealer.open(black_box(&unowned), &mut scratch).is_some()))
    });
    c.bench_function(
        &format!("session/open_owned_and_check_{}B", owned.len()),
        |b| {
            b.iter(|| {
                let o = sealer.open(black_box(&owned), &mut scratch);
                black_box(o.and_then(|o| o.owner).is_some_and(|x| x.matches(&owner)))
            })
        },
    );
    c.bench_function("session/owner_of_api_key", |b| {
        b.iter(|| black_box(sealer.owner(&[b"api-key", black_box(&digest)])))
    });
    c.bench_function("session/owner_of_jwt", |b| {
        b.iter(|| {
            black_box(sealer.owner(&[
                b"jwt",
                black_box(b"https://auth.example.com"),
                black_box(b"user-1234@example.com"),
            ]))
        })
    });
    let mut out = Vec::with_capacity(256);
    c.bench_function("session/seal_owned", |b| {
        b.iter(|| {
            out.clear();
            black_box(sealer.seal(0xdead_beef, Some(&owner), black_box(sid), &mut out))
        })
    });
}

criterion_group!(benches, session);
criterion_main!(benches);
