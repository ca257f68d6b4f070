//! What checking a JWT bearer token costs: a full verification (header, key by `kid`,
//! signature, claims) for RS256 (2048-bit), ES256 and EdDSA, against the cached path a client
//! re-sending its token takes (a keyed hash of the token and a per-core map lookup), a forged
//! token from an address whose budget of failed verifications is spent (refused before any
//! signature check), and an API key check (SHA-256 and a constant-time compare) for scale.

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
         [servers.auth]\napi_keys = [\"sha256:{}\"]\n[servers.auth.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\njwks_file = \"{}\"\n\
         [[servers]]\nname = \"f\"\npath = \"/f\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\n\
         [servers.auth.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\njwks_file = \"{1}\"\n\
         failure_budget = {{ burst = 1, rate = 0.001 }}\n",
        "ab".repeat(32),
        file.display()
    ))
    .unwrap();
    let _ = std::fs::remove_file(&file);
    let auth = &cfg.servers[0].auth;
    let verifier = auth.jwt.clone().unwrap();
    let hasher = ratelimit::KeyHasher::new([1, 2]);
    let ip = std::net::IpAddr::from([192, 0, 2, 1]);
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
        assert!(mcplb::auth::check(
            auth,
            Some(header.as_bytes()),
            None,
            ip,
            &hasher,
            &mut caller
        )
        .is_ok());
        c.bench_function(
            &format!("auth/jwt_check_cached_{alg:?}_{}B", token.len()),
            |b| {
                b.iter(|| {
                    black_box(
                        mcplb::auth::check(
                            auth,
                            Some(black_box(header.as_bytes())),
                            None,
                            ip,
                            &hasher,
                            &mut caller,
                        )
                        .is_ok(),
                    )
                })
            },
        );
    }
    // A flood of distinct forged tokens (each a real token's header and claims under another
    // token's signature) from one address whose budget of failed verifications is spent: each
    // costs a keyed hash, a cache miss and a budget peek instead of a signature check.
    let flooded = &cfg.servers[1].auth;
    let (alg, enc, _) = &keys[1];
    let mut h = Header::new(*alg);
    h.kid = Some(format!("{alg:?}"));
    let signed: Vec<String> = (0..257)
        .map(|i| {
            let mut cl = claims.clone();
            cl["sub"] = json!(format!("mallory-{i}"));
            jsonwebtoken::encode(&h, &cl, enc).unwrap()
        })
        .collect();
    let forged: Vec<String> = signed
        .windows(2)
        .map(|w| {
            let (input, _) = w[0].rsplit_once('.').unwrap();
            let (_, signature) = w[1].rsplit_once('.').unwrap();
            format!("Bearer {input}.{signature}")
        })
        .collect();
    let mut caller = mcplb::auth::Caller::default();
    let spend = mcplb::auth::check(
        flooded,
        Some(forged[0].as_bytes()),
        None,
        ip,
        &hasher,
        &mut caller,
    );
    assert_eq!(spend.map_err(|d| d.status), Err(401));
    let mut i = 0;
    c.bench_function(&format!("auth/jwt_forged_throttled_{alg:?}"), |b| {
        b.iter(|| {
            i = i % (forged.len() - 1) + 1;
            let r = mcplb::auth::check(
                flooded,
                Some(black_box(forged[i].as_bytes())),
                None,
                ip,
                &hasher,
                &mut caller,
            );
            black_box(r.map_err(|d| d.status) == Err(429))
        })
    });
    assert_eq!(caller.jwt, mcplb::auth::JwtCheck::Throttled);
    c.bench_function("auth/api_key_check_miss", |b| {
        b.iter(|| {
            black_box(
                mcplb::auth::check(
                    auth,
                    None,
                    Some(black_box(b"not-the-key-0123456789")),
                    ip,
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
