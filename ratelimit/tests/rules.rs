//! Rule matching (server, method, tool glob, resource prefix), key sources, multi-rule
//! decisions and concurrency permits, through the public API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use mcplb_ratelimit::{
    ConcurrencyLimit, Decision, Glob, KeySource, LimitError, RateLimits, RequestInfo, Rule,
};

const SEC: u64 = 1_000_000_000;

fn rule(key: KeySource, rate: f64, burst: u32) -> Rule {
    Rule {
        server: None,
        method: None,
        tool: None,
        resource_prefix: None,
        key,
        rate,
        burst,
    }
}

fn call<'a>(server: &'a str, tool: &'a str) -> RequestInfo<'a> {
    RequestInfo {
        server,
        method: "tools/call",
        tool: Some(tool),
        uri: None,
    }
}

#[test]
fn filters_match_server_method_tool_and_prefix() {
    let r = Rule {
        server: Some("demo".into()),
        method: Some("tools/call".into()),
        tool: Some(Glob::new("search*")),
        ..rule(KeySource::Global, 1.0, 1)
    };
    assert!(r.matches(&call("demo", "search")));
    assert!(r.matches(&call("demo", "search_web")));
    assert!(!r.matches(&call("demo", "web_search")));
    assert!(!r.matches(&call("other", "search")));
    let list = RequestInfo {
        server: "demo",
        method: "tools/list",
        tool: None,
        uri: None,
    };
    assert!(!r.matches(&list));
    // A tool filter never matches a request without a tool.
    let no_tool = RequestInfo {
        tool: None,
        ..call("demo", "x")
    };
    assert!(!r.matches(&no_tool));

    let res = Rule {
        resource_prefix: Some("file:///secret/".into()),
        ..rule(KeySource::Global, 1.0, 1)
    };
    let read = |uri| RequestInfo {
        server: "demo",
        method: "resources/read",
        tool: None,
        uri,
    };
    assert!(res.matches(&read(Some("file:///secret/a.txt"))));
    assert!(!res.matches(&read(Some("file:///public/a.txt"))));
    assert!(!res.matches(&read(None)));

    // No filter at all: everything matches.
    assert!(rule(KeySource::Global, 1.0, 1).matches(&list));
}

#[test]
fn key_sources_parse_from_config_spelling() {
    assert_eq!("global".parse::<KeySource>(), Ok(KeySource::Global));
    assert_eq!("session".parse::<KeySource>(), Ok(KeySource::Session));
    assert_eq!("client-ip".parse::<KeySource>(), Ok(KeySource::ClientIp));
    assert_eq!(
        "header:X-Api-Key".parse::<KeySource>(),
        Ok(KeySource::Header("x-api-key".into()))
    );
    for bad in ["header:", "header:a b", "ip", ""] {
        assert!(
            matches!(
                bad.parse::<KeySource>(),
                Err(LimitError::InvalidKeySource(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn invalid_rules_are_all_reported_with_their_index() {
    let rules = vec![
        rule(KeySource::Global, 0.0, 1),
        rule(KeySource::Global, 1.0, 1),
        rule(KeySource::Header("bad name".into()), 1.0, 1),
        rule(KeySource::Session, 1.0, 0),
    ];
    let err = RateLimits::new(rules, 16).unwrap_err();
    let LimitError::InvalidRules(problems) = &err else {
        panic!("{err:?}");
    };
    let indexes: Vec<usize> = problems.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, vec![0, 2, 3]);
    let text = err.to_string();
    assert!(text.contains("limits[0]: rate"), "{text}");
    assert!(text.contains("limits[3]: burst"), "{text}");
}

#[test]
fn header_names_are_lowercased() {
    let limits = RateLimits::new(
        vec![rule(KeySource::Header("X-Api-Key".into()), 1.0, 1)],
        16,
    )
    .unwrap();
    assert_eq!(
        limits.rule(0).map(|r| &r.key),
        Some(&KeySource::Header("x-api-key".into()))
    );
}

#[test]
fn only_the_caller_over_its_limit_on_that_tool_is_rejected() {
    let limits = RateLimits::new(
        vec![Rule {
            tool: Some(Glob::new("search*")),
            ..rule(KeySource::Header("x-api-key".into()), 1.0, 2)
        }],
        64,
    )
    .unwrap();
    let alice = |_: &KeySource| Some(1);
    let bob = |_: &KeySource| Some(2);
    let t = 10 * SEC;
    assert_eq!(
        limits.check(&call("demo", "search"), alice, t),
        Decision::Admit
    );
    assert_eq!(
        limits.check(&call("demo", "search"), alice, t),
        Decision::Admit
    );
    assert_eq!(
        limits.check(&call("demo", "search"), alice, t + SEC / 4),
        Decision::Reject {
            rule: 0,
            retry_after_ns: 3 * SEC / 4
        }
    );
    assert_eq!(
        limits.check(&call("demo", "search"), bob, t),
        Decision::Admit
    );
    assert_eq!(
        limits.check(&call("demo", "fetch"), alice, t),
        Decision::Admit
    );
    assert_eq!(limits.admissions(0), 3);
    assert_eq!(limits.rejections(0), 1);
    assert_eq!(limits.tracked_keys(0), 2);
    // Out-of-range rule indexes read as zero rather than panicking.
    assert_eq!(limits.rejections(9), 0);
}

#[test]
fn requests_without_a_key_share_one_bucket() {
    let limits = RateLimits::new(vec![rule(KeySource::header("x-api-key"), 1.0, 1)], 16).unwrap();
    let anon = |_: &KeySource| None;
    assert_eq!(limits.check(&call("s", "t"), anon, 0), Decision::Admit);
    assert!(matches!(
        limits.check(&call("s", "t"), anon, 0),
        Decision::Reject { rule: 0, .. }
    ));
    assert_eq!(
        limits.check(&call("s", "t"), |_| Some(5), 0),
        Decision::Admit
    );
}

#[test]
fn all_matching_rules_must_admit_and_rejections_spend_nothing() {
    // Rule 0: per caller on any tool, burst 5. Rule 1: global on search*, burst 2.
    let limits = RateLimits::new(
        vec![
            rule(KeySource::ClientIp, 1.0, 5),
            Rule {
                tool: Some(Glob::new("search*")),
                ..rule(KeySource::Global, 0.5, 2)
            },
        ],
        64,
    )
    .unwrap();
    let ip = |_: &KeySource| Some(77);
    assert_eq!(limits.check(&call("s", "search"), ip, 0), Decision::Admit);
    assert_eq!(limits.check(&call("s", "search"), ip, 0), Decision::Admit);
    // The global search rule is empty: rejected by rule 1, with its 2 s interval...
    for _ in 0..10 {
        assert_eq!(
            limits.check(&call("s", "search"), ip, 0),
            Decision::Reject {
                rule: 1,
                retry_after_ns: 2 * SEC
            }
        );
    }
    // ...and those ten rejections took nothing from the caller's rule 0 bucket: 3 left.
    for _ in 0..3 {
        assert_eq!(limits.check(&call("s", "fetch"), ip, 0), Decision::Admit);
    }
    assert!(matches!(
        limits.check(&call("s", "fetch"), ip, 0),
        Decision::Reject { rule: 0, .. }
    ));
    assert_eq!(limits.admissions(0), 5);
    assert_eq!(limits.admissions(1), 2);
    assert_eq!(limits.rejections(1), 10);
    assert_eq!(limits.rejections(0), 1);
}

#[test]
fn when_several_rules_reject_the_longest_wait_is_reported() {
    let limits = RateLimits::new(
        vec![
            rule(KeySource::Session, 1.0, 1),
            rule(KeySource::Global, 0.1, 1),
        ],
        16,
    )
    .unwrap();
    assert_eq!(
        limits.check(&call("s", "t"), |_| Some(1), 0),
        Decision::Admit
    );
    assert_eq!(
        limits.check(&call("s", "t"), |_| Some(1), 0),
        Decision::Reject {
            rule: 1,
            retry_after_ns: 10 * SEC
        }
    );
}

#[test]
fn no_rules_admit_everything() {
    let limits = RateLimits::new(Vec::new(), 16).unwrap();
    assert!(limits.is_empty());
    assert_eq!(
        limits.check(&call("s", "t"), |_| Some(1), 0),
        Decision::Admit
    );
}

#[test]
fn concurrency_n_acquire_then_the_next_fails_until_a_drop() {
    let limit = ConcurrencyLimit::new(3, 16, 0).unwrap();
    let permits: Vec<_> = (0..3).map(|_| limit.try_acquire(9)).collect();
    assert!(permits.iter().all(Option::is_some));
    assert!(limit.try_acquire(9).is_none());
    assert_eq!(limit.in_flight(9), 3);
    // Another key is independent.
    assert!(limit.try_acquire(10).is_some());
    drop(permits);
    assert_eq!(limit.in_flight(9), 0);
    let again = limit.try_acquire(9);
    assert!(again.is_some());
    assert_eq!(limit.in_flight(9), 1);
}

#[test]
fn concurrency_permits_move_across_threads() {
    let limit = ConcurrencyLimit::new(2, 16, 0).unwrap();
    let released = AtomicU64::new(0);
    std::thread::scope(|s| {
        let a = limit.try_acquire(1).unwrap();
        let b = limit.try_acquire(1).unwrap();
        assert!(limit.try_acquire(1).is_none());
        s.spawn(|| {
            drop(a);
            released.fetch_add(1, Ordering::Release);
        });
        s.spawn(|| {
            drop(b);
            released.fetch_add(1, Ordering::Release);
        });
    });
    assert_eq!(released.load(Ordering::Acquire), 2);
    assert_eq!(limit.in_flight(1), 0);
}

#[test]
fn concurrency_idle_keys_are_reclaimed_but_busy_ones_are_not() {
    let limit = ConcurrencyLimit::new(1, 8, 0).unwrap();
    let held: Vec<_> = (1..=8u64).map(|k| limit.try_acquire(k)).collect();
    assert!(held.iter().all(Option::is_some));
    // Every slot is busy: a ninth key is refused (fails closed) and counted.
    assert!(limit.try_acquire(100).is_none());
    assert_eq!(limit.overflows(), 1);
    drop(held);
    assert!(limit.try_acquire(100).is_some());
    assert_eq!(limit.evictions(), 1);
    assert_eq!(limit.tracked_keys(), 8);
}

#[test]
fn waiter_queue_is_bounded_and_drops_leave_it() {
    let limit = std::sync::Arc::new(ConcurrencyLimit::new(1, 8, 2).unwrap());
    let held = limit.try_acquire_owned(1).unwrap();
    let a = limit.acquire_owned(1);
    let b = limit.acquire_owned(1);
    assert!(a.is_some() && b.is_some());
    assert!(limit.acquire_owned(1).is_none());
    assert_eq!(limit.waiters(), 2);
    drop(a);
    assert_eq!(limit.waiters(), 1);
    assert!(limit.acquire_owned(1).is_some());
    drop((b, held));
    assert_eq!((limit.waiters(), limit.in_flight(1)), (0, 0));
    let never = std::sync::Arc::new(ConcurrencyLimit::new(1, 8, 0).unwrap());
    let _held = never.try_acquire_owned(1).unwrap();
    assert!(never.acquire_owned(1).is_none());
}
