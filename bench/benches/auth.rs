//! What checking a JWT bearer token costs: a full verification (header, key by `kid`,
//! signature, claims) for RS256 (2048-bit), ES256 and EdDSA, against the cached path a client
//! re-sending its token takes (a keyed hash of the token and a per-core map lookup), and an API
//! key check (SHA-256 and a constant-time compare) for scale.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const ISS: &str = "https://auth.bench.example";
const AUD: &str = "https://mcp.bench.example/mcp";

fn keys() -> Vec<(Algorithm, EncodingKey, serde_json::Value)> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::traits::PublicKeyParts as _;
    let mut rng = rand::thread_rng();
    let rs = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let es = p256::ecdsa::SigningKey::random(&mut rng);
    let ed = ed25519_dalek::SigningKey::generate(&mut rng);
    let point = es.verifying_key().to_encoded_point(false);
    vec![
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_der(rs.to_pkcs1_der().unwrap().as_bytes()),
            json!({"kty": "RSA", "kid": "RS256", "n": B64.encode(rs.n().to_bytes_be()),
                "e": B64.encode(rs.e().to_bytes_be())}),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_der(es.to_pkcs8_der().unwrap().as_bytes()),
            json!({"kty": "EC", "crv": "P-256", "kid": "ES256",
                "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap())}),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(ed.to_pkcs8_der().unwrap().as_bytes()),
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "EdDSA",
                "x": B64.encode(ed.verifying_key().as_bytes())}),
        ),
    ]
}

fn auth(c: &mut Criterion) {
    let keys = keys();
    let jwks = json!({"keys": keys.iter().map(|k| k.2.clone()).collect::<Vec<_>>()});
    let file = std::env::temp_dir().join(format!("mcplb-bench-jwks-{}.json", std::process::id()));
    std::fs::write(&file, jwks.to_string()).unwrap();
    let cfg = mcplb::Config::parse(&format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"b\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\n\
         [servers.auth]\napi_keys = [\"sha256:{}\"]\n[servers.auth.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\njwks_file = \"{}\"\n",
        "ab".repeat(32),
        file.display()
    ))
    .unwrap();
    let _ = std::fs::remove_file(&file);
    let auth = &cfg.servers[0].auth;
    let verifier = auth.jwt.clone().unwrap();
    let hasher = ratelimit::KeyHasher::new([1, 2]);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({"iss": ISS, "aud": AUD, "sub": "user-1234", "exp": exp,
        "scope": "mcp:tools mcp:read", "iat": exp - 3600});
    for (alg, enc, _) in &keys {
        let mut h = Header::new(*alg);
        h.kid = Some(format!("{alg:?}"));
        let token = jsonwebtoken::encode(&h, &claims, enc).unwrap();
        c.bench_function(&format!("auth/jwt_verify_full_{alg:?}"), |b| {
            b.iter(|| {
                black_box(mcplb::auth::verify(&verifier, black_box(token.as_bytes())).is_ok())
            })
        });
        let header = format!("Bearer {token}");
        let mut caller = mcplb::auth::Caller::default();
        assert!(
            mcplb::auth::check(auth, Some(header.as_bytes()), None, &hasher, &mut caller).is_ok()
        );
        c.bench_function(
            &format!("auth/jwt_check_cached_{alg:?}_{}B", token.len()),
            |b| {
                b.iter(|| {
                    black_box(
                        mcplb::auth::check(
                            auth,
                            Some(black_box(header.as_bytes())),
                            None,
                            &hasher,
                            &mut caller,
                        )
                        .is_ok(),
                    )
                })
            },
        );
    }
    let mut caller = mcplb::auth::Caller::default();
    c.bench_function("auth/api_key_check_miss", |b| {
        b.iter(|| {
            black_box(
                mcplb::auth::check(
                    auth,
                    None,
                    Some(black_box(b"not-the-key-0123456789")),
                    &hasher,
                    &mut caller,
                )
                .is_err(),
            )
        })
    });
}

criterion_group!(benches, auth);
criterion_main!(benches);
