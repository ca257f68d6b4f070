//! Limit rules: what a rule matches (server group, method, tool glob, resource URI prefix),
//! what it keys on, and [`RateLimits`], the compiled set a proxy checks each request against.
//!
//! Several rules can apply to one request; all must admit it. To keep a request rejected by
//! rule B from spending a token of rule A, [`RateLimits::check`] first *peeks* at every matching
//! rule (plain loads, nothing taken) and rejects if any would; only then does it take a token
//! from each, in order. If a take still fails (another core took the last token between peek
//! and take), the tokens already taken are refunded by compare-and-swap. A refund succeeds
//! whenever nobody touched that bucket in between, restoring it exactly; if someone did, the
//! token stays spent — the bucket is one token short for one interval, erring towards fewer
//! admissions, so the bound `rate × window + burst` holds for every rule in every case.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::counter::{Padded, StripedCounter};
use crate::gcra::{Gcra, RetryAfter};
use crate::glob::Glob;
use crate::keyed::{KeyedLimiter, Taken};
use crate::LimitError;

/// What a rule keys its buckets on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// One bucket for every request the rule matches.
    Global,
    /// One bucket per MCP session (`Mcp-Session-Id`).
    Session,
    /// One bucket per client IP address.
    ClientIp,
    /// One bucket per value of this request header (name lowercased); values are hashed.
    Header(String),
    /// One bucket per authenticated caller: the identity a verified token or API key gives
    /// (the proxy supplies its hash); requests without one share a bucket.
    Identity,
}

impl KeySource {
    /// A header key source, lowercasing `name` as HTTP header names are case-insensitive.
    pub fn header(name: &str) -> Self {
        KeySource::Header(name.to_ascii_lowercase())
    }
}

impl FromStr for KeySource {
    type Err = LimitError;

    /// Parses the config spelling: `global`, `session`, `client-ip`, `identity` or `header:NAME`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "global" => Ok(KeySource::Global),
            "session" => Ok(KeySource::Session),
            "client-ip" => Ok(KeySource::ClientIp),
            "identity" => Ok(KeySource::Identity),
            _ => match s.strip_prefix("header:") {
                Some(name) if is_header_name(name) => Ok(KeySource::header(name)),
                _ => Err(LimitError::InvalidKeySource(s.to_owned())),
            },
        }
    }
}

/// An HTTP token (RFC 9110): what a header name may be made of.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The routing facts of one request that rules match on; all borrowed, nothing allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    /// The server group the request is routed to.
    pub server: &'a str,
    /// The JSON-RPC method (`tools/call`, `resources/read`...).
    pub method: &'a str,
    /// `params.name` of a `tools/call`, if any.
    pub tool: Option<&'a str>,
    /// `params.uri` of a resource request, if any.
    pub uri: Option<&'a str>,
}

/// One limit: a filter (every `None` matches everything), a key and a rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Only requests to this server group.
    pub server: Option<String>,
    /// Only this JSON-RPC method.
    pub method: Option<String>,
    /// Only tool calls whose tool name matches; requests without a tool never match.
    pub tool: Option<Glob>,
    /// Only requests whose resource URI starts with this; requests without a URI never match.
    pub resource_prefix: Option<String>,
    /// What the buckets are keyed on.
    pub key: KeySource,
    /// Tokens per second.
    pub rate: f64,
    /// Tokens available at once.
    pub burst: u32,
}

impl Rule {
    /// Whether this rule applies to `req`.
    pub fn matches(&self, req: &RequestInfo<'_>) -> bool {
        self.server.as_deref().is_none_or(|s| s == req.server)
            && self.method.as_deref().is_none_or(|m| m == req.method)
            && self
                .tool
                .as_ref()
                .is_none_or(|glob| req.tool.is_some_and(|tool| glob.matches(tool)))
            && self
                .resource_prefix
                .as_deref()
                .is_none_or(|prefix| req.uri.is_some_and(|uri| uri.starts_with(prefix)))
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every matching rule admitted it (tokens taken).
    Admit,
    /// Over a limit: nothing was taken from any rule.
    Reject {
        /// Index of the rule that rejected (in the order given to [`RateLimits::new`]).
        rule: usize,
        /// Nanoseconds until that rule has a token for this caller.
        retry_after_ns: u64,
    },
}

/// A rule with its buckets and counters.
#[derive(Debug)]
struct CompiledRule {
    rule: Rule,
    gcra: Gcra,
    /// The bucket of a `Global` rule, and of keyed rules' requests that have no key (say, no
    /// `X-Api-Key` header): those share one bucket rather than escaping the limit.
    shared: Padded<AtomicU64>,
    /// Per-key buckets; `None` for a `Global` rule.
    keyed: Option<KeyedLimiter>,
    admissions: StripedCounter,
    rejections: StripedCounter,
}

impl CompiledRule {
    fn key(&self, key_of: &impl Fn(&KeySource) -> Option<u64>) -> Option<u64> {
        match self.rule.key {
            KeySource::Global => None,
            ref source => key_of(source),
        }
    }

    fn peek(
        &self,
        key_of: &impl Fn(&KeySource) -> Option<u64>,
        now: u64,
    ) -> Result<(), RetryAfter> {
        match (self.key(key_of), &self.keyed) {
            (Some(key), Some(keyed)) => keyed.peek(key, now),
            _ => self.gcra.peek(&self.shared.0, now),
        }
    }

    fn take(
        &self,
        key_of: &impl Fn(&KeySource) -> Option<u64>,
        now: u64,
    ) -> Result<Taken<'_>, RetryAfter> {
        match (self.key(key_of), &self.keyed) {
            (Some(key), Some(keyed)) => keyed.take(key, now),
            _ => {
                let cell = &self.shared.0;
                let mut current = cell.load(Ordering::Acquire);
                loop {
                    let next = self.gcra.decide(current, now)?;
                    match cell.compare_exchange_weak(
                        current,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(Taken::new(cell, current, next)),
                        Err(actual) => current = actual,
                    }
                }
            }
        }
    }
}

/// A compiled set of [`Rule`]s, shared by every core; see the module docs.
#[derive(Debug)]
pub struct RateLimits {
    rules: Vec<CompiledRule>,
}

impl RateLimits {
    /// Compiles `rules`; keyed rules track up to `max_keys_per_rule` keys each (16 bytes per
    /// key, allocated here). Header key names are lowercased.
    ///
    /// # Errors
    /// [`LimitError::InvalidRules`] listing every invalid rule with its index.
    pub fn new(rules: Vec<Rule>, max_keys_per_rule: usize) -> Result<Self, LimitError> {
        let mut problems = Vec::new();
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, mut rule) in rules.into_iter().enumerate() {
            if let KeySource::Header(name) = &rule.key {
                if !is_header_name(name) {
                    problems.push((
                        index,
                        LimitError::InvalidKeySource(format!("header:{name}")),
                    ));
                    continue;
                }
                rule.key = KeySource::header(name);
            }
            match Gcra::new(rule.rate, rule.burst) {
                Ok(gcra) => compiled.push(CompiledRule {
                    keyed: (rule.key != KeySource::Global)
                        .then(|| KeyedLimiter::new(gcra, max_keys_per_rule)),
                    rule,
                    gcra,
                    shared: Padded(AtomicU64::new(0)),
                    admissions: StripedCounter::default(),
                    rejections: StripedCounter::default(),
                }),
                Err(error) => problems.push((index, error)),
            }
        }
        if problems.is_empty() {
            Ok(RateLimits { rules: compiled })
        } else {
            Err(LimitError::InvalidRules(problems))
        }
    }

    /// Checks `req` against every matching rule at `now_ns`, taking one token from each if
    /// all admit and none otherwise.
    ///
    /// `key_of` gives the key hash of a [`KeySource`] for this request (see
    /// [`KeyHasher`](crate::KeyHasher)), or `None` when the request has none (no such header):
    /// such requests share one bucket per rule. It may be called twice per rule, so it should
    /// return precomputed hashes.
    pub fn check(
        &self,
        req: &RequestInfo<'_>,
        key_of: impl Fn(&KeySource) -> Option<u64>,
        now_ns: u64,
    ) -> Decision {
        let mut matching = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, compiled)| compiled.rule.matches(req));
        let Some((first, _)) = matching.next() else {
            return Decision::Admit;
        };
        // Peeking only pays off when a second rule could reject after the first took a token.
        if matching.next().is_some() {
            let mut worst: Option<(usize, u64)> = None;
            for (index, compiled) in self.matching(req, first) {
                if let Err(retry) = compiled.peek(&key_of, now_ns) {
                    if worst.is_none_or(|(_, nanos)| retry.nanos > nanos) {
                        worst = Some((index, retry.nanos));
                    }
                }
            }
            if let Some((rule, retry_after_ns)) = worst {
                return self.reject(rule, retry_after_ns);
            }
        }
        match self.take_from(first, req, &key_of, now_ns) {
            Ok(()) => Decision::Admit,
            Err((rule, retry)) => self.reject(rule, retry.nanos),
        }
    }

    fn matching<'s, 'r>(
        &'s self,
        req: &'r RequestInfo<'r>,
        from: usize,
    ) -> impl Iterator<Item = (usize, &'s CompiledRule)> + use<'s, 'r> {
        self.rules
            .iter()
            .enumerate()
            .skip(from)
            .filter(move |(_, compiled)| compiled.rule.matches(req))
    }

    /// Takes a token from every matching rule from index `from` on; on failure, refunds the
    /// ones taken (innermost first) and names the rule that failed.
    fn take_from(
        &self,
        from: usize,
        req: &RequestInfo<'_>,
        key_of: &impl Fn(&KeySource) -> Option<u64>,
        now: u64,
    ) -> Result<(), (usize, RetryAfter)> {
        let Some((index, compiled)) = self.matching(req, from).next() else {
            return Ok(());
        };
        let taken = compiled.take(key_of, now).map_err(|retry| (index, retry))?;
        match self.take_from(index + 1, req, key_of, now) {
            Ok(()) => {
                compiled.admissions.add(1);
                Ok(())
            }
            Err(failure) => {
                taken.refund();
                Err(failure)
            }
        }
    }

    fn reject(&self, rule: usize, retry_after_ns: u64) -> Decision {
        if let Some(compiled) = self.rules.get(rule) {
            compiled.rejections.add(1);
        }
        Decision::Reject {
            rule,
            retry_after_ns,
        }
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules (every request is admitted).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rule `rule` as compiled (header names lowercased).
    pub fn rule(&self, rule: usize) -> Option<&Rule> {
        self.rules.get(rule).map(|compiled| &compiled.rule)
    }

    /// Requests admitted by every rule that matched them, counted on each such rule.
    pub fn admissions(&self, rule: usize) -> u64 {
        self.rules.get(rule).map_or(0, |c| c.admissions.sum())
    }

    /// Requests rejected, counted on the rule named in the [`Decision::Reject`].
    pub fn rejections(&self, rule: usize) -> u64 {
        self.rules.get(rule).map_or(0, |c| c.rejections.sum())
    }

    /// Idle keys of `rule` whose slot went to a new key (0 for a global rule).
    pub fn evictions(&self, rule: usize) -> u64 {
        self.keyed(rule).map_or(0, KeyedLimiter::evictions)
    }

    /// New keys of `rule` rejected because the key table had no reclaimable slot.
    pub fn overflows(&self, rule: usize) -> u64 {
        self.keyed(rule).map_or(0, KeyedLimiter::overflows)
    }

    /// Keys `rule` currently tracks (approximate; 0 for a global rule).
    pub fn tracked_keys(&self, rule: usize) -> usize {
        self.keyed(rule).map_or(0, KeyedLimiter::tracked_keys)
    }

    fn keyed(&self, rule: usize) -> Option<&KeyedLimiter> {
        self.rules.get(rule)?.keyed.as_ref()
    }
}
