//! One JSON Web Key (RFC 7517/7518), parsed strictly into a public key that `ring` verifies
//! with, and the JWS signature algorithms mcplb accepts.
//!
//! `ring` is the crypto library rustls already links for TLS, so one library serves the whole
//! binary. Its RSA verification takes 2048- to 8192-bit moduli; a JWKS key outside that range
//! is skipped when the set is loaded (with the reason in the log), not at the first token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature as sig;
use serde_json::{Map, Value};

/// A JWS signature algorithm mcplb verifies (RFC 7518 §3). Public-key only: HMAC is never
/// accepted, so a public key can never serve as an HMAC secret; `none` is not an algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256 (MGF1 SHA-256, 32-byte salt).
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// Ed25519 (RFC 8037).
    EdDsa,
}

impl Alg {
    /// Every algorithm, in the order the docs list them.
    pub const ALL: [Alg; 9] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::EdDsa,
    ];

    /// The JOSE name (`RS256`, `EdDSA`...).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The algorithm of a JOSE name; names are case-sensitive (RFC 7515 §4.1.1).
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    fn rsa_params(self) -> Option<&'static sig::RsaParameters> {
        Some(match self {
            Alg::Rs256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Alg::Rs384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Alg::Rs512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            Alg::Ps256 => &sig::RSA_PSS_2048_8192_SHA256,
            Alg::Ps384 => &sig::RSA_PSS_2048_8192_SHA384,
            Alg::Ps512 => &sig::RSA_PSS_2048_8192_SHA512,
            Alg::Es256 | Alg::Es384 | Alg::EdDsa => return None,
        })
    }
}

/// A public key, as `ring` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PublicKey {
    /// RSA modulus and exponent, big-endian, without leading zeros.
    Rsa { n: Box<[u8]>, e: Box<[u8]> },
    /// A P-256 point, uncompressed (`04 || x || y`).
    P256(Box<[u8]>),
    /// A P-384 point, uncompressed.
    P384(Box<[u8]>),
    /// An Ed25519 public key.
    Ed25519([u8; 32]),
}

impl PublicKey {
    /// Whether a signature of `alg` can be made with this key.
    pub(super) fn fits(&self, alg: Alg) -> bool {
        match self {
            PublicKey::Rsa { .. } => alg.rsa_params().is_some(),
            PublicKey::P256(_) => alg == Alg::Es256,
            PublicKey::P384(_) => alg == Alg::Es384,
            PublicKey::Ed25519(_) => alg == Alg::EdDsa,
        }
    }

    /// Whether `signature` is `alg`'s signature of `message` under this key. Never panics:
    /// every length and encoding is checked by `ring`.
    pub(super) fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        let unparsed = |algorithm: &'static dyn sig::VerificationAlgorithm, key: &[u8]| {
            sig::UnparsedPublicKey::new(algorithm, key)
                .verify(message, signature)
                .is_ok()
        };
        match (self, alg) {
            (PublicKey::Rsa { n, e }, alg) => match alg.rsa_params() {
                Some(params) => sig::RsaPublicKeyComponents {
                    n: &n[..],
                    e: &e[..],
                }
                .verify(params, message, signature)
                .is_ok(),
                None => false,
            },
            (PublicKey::P256(point), Alg::Es256) => unparsed(&sig::ECDSA_P256_SHA256_FIXED, point),
            (PublicKey::P384(point), Alg::Es384) => unparsed(&sig::ECDSA_P384_SHA384_FIXED, point),
            (PublicKey::Ed25519(x), Alg::EdDsa) => unparsed(&sig::ED25519, x),
            _ => false,
        }
    }
}

/// One verification key of a JWKS.
#[derive(Debug)]
pub(super) struct Jwk {
    /// `kid`, when the key has one.
    pub(super) kid: Option<String>,
    /// `alg`, when the key is bound to one algorithm.
    pub(super) alg: Option<Alg>,
    /// The key itself.
    pub(super) key: PublicKey,
}

impl Jwk {
    /// Whether a token signed with `alg` may be checked with this key.
    pub(super) fn usable_for(&self, alg: Alg) -> bool {
        self.key.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// Decodes unpadded base64url, refusing padding, other alphabets and non-zero trailing bits
/// (so each value has exactly one encoding).
pub(super) fn b64url(text: &[u8]) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Parses one JWK object into a verification key, or says why it cannot be used. Symmetric
/// keys, encryption keys (`use` other than `sig`, `key_ops` without `verify`), curves and key
/// sizes `ring` does not verify, and an `alg` that does not fit the key are refused.
pub(super) fn parse(k: &Map<String, Value>) -> Result<Jwk, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match k.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("`{name}` is not a string")),
        }
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let s = text(name)?.ok_or_else(|| format!("`{name}` is missing"))?;
        b64url(s.as_bytes()).ok_or_else(|| format!("`{name}` is not unpadded base64url"))
    };
    let kty = text("kty")?.ok_or("`kty` is missing")?;
    if kty == "oct" {
        return Err("symmetric keys are never accepted".into());
    }
    match text("use")? {
        None | Some("sig") => {}
        Some(_) => return Err("not a signature key (`use`)".into()),
    }
    if let Some(ops) = k.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !verifies {
            return Err("not a signature key (`key_ops` lacks \"verify\")".into());
        }
    }
    let alg =
        match text("alg")? {
            None => None,
            Some(name) => Some(Alg::from_name(name).ok_or_else(|| {
                format!("`alg` {name} is not a signature algorithm mcplb verifies")
            })?),
        };
    let key = match kty {
        "RSA" => {
            let n = strip_zeros(bytes("n")?);
            let e = strip_zeros(bytes("e")?);
            let bits = match n.first() {
                Some(b) => n.len() * 8 - b.leading_zeros() as usize,
                None => 0,
            };
            if !(2048..=8192).contains(&bits) {
                return Err(format!(
                    "RSA modulus of {bits} bits (2048 to 8192 are accepted)"
                ));
            }
            // ring takes odd exponents from 3 to 2^33 - 1.
            let small = e.len() <= 4 && e.last().is_some_and(|b| b & 1 == 1) && e != [1];
            if !small {
                return Err("RSA exponent out of range (an odd number from 3 to 2^32 - 1)".into());
            }
            PublicKey::Rsa {
                n: n.into(),
                e: e.into(),
            }
        }
        "EC" => {
            let (len, p384) = match text("crv")?.ok_or("`crv` is missing")? {
                "P-256" => (32, false),
                "P-384" => (48, true),
                crv => return Err(format!("curve {crv} is not supported (P-256, P-384)")),
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != len || y.len() != len {
                return Err(format!("`x` and `y` must be {len} bytes each"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            if p384 {
                PublicKey::P384(point.into())
            } else {
                PublicKey::P256(point.into())
            }
        }
        "OKP" => match text("crv")?.ok_or("`crv` is missing")? {
            "Ed25519" => PublicKey::Ed25519(
                bytes("x")?
                    .try_into()
                    .map_err(|_| "`x` must be 32 bytes".to_string())?,
            ),
            crv => return Err(format!("curve {crv} is not supported (Ed25519)")),
        },
        other => return Err(format!("key type {other:?} is not supported")),
    };
    if alg.is_some_and(|a| !key.fits(a)) {
        return Err("key type and `alg` disagree".into());
    }
    Ok(Jwk {
        kid: text("kid")?.map(str::to_string),
        alg,
        key,
    })
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|&&b| b == 0).count();
    v.drain(..zeros);
    v
}
