//! Per-tool policy on the data path (the decisions themselves are `crate::policy`'s pure
//! functions): a request the caller's policy denies is answered like one for an unknown tool,
//! with its id, before rate limits, permits or any backend; a list answer loses the entries
//! the caller may not use. Callers' classes are cached per core, and each class remembers
//! the decisions it made on tool and prompt names and on methods: a request pays two hash
//! lookups, and the rules of its class only the first time its name is seen on that core.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use protocol::{Envelope, MessageKind, Method};

use crate::auth::Caller;
use crate::data_path::request::Refusal;
use crate::policy::lists::{self, ListKind};
use crate::policy::{Class, Decision, Effect, GroupPolicy, Subject, Target};
use crate::runtime::core::Core;

/// Classes of the callers this core has seen, by group and caller class key.
pub(crate) type ClassCache = RefCell<HashMap<(usize, u64), Rc<CallerClass>>>;

/// Most classes cached per core and state; when full, all are forgotten (a flood of
/// identities costs recomputation, never memory).
const MAX_CLASSES: usize = 1024;

/// Most decisions a class remembers per kind (tools, prompts, methods); when full, all are
/// forgotten. Names longer than [`MAX_MEMO_NAME`] are decided anew each time.
const MAX_MEMO: usize = 256;
const MAX_MEMO_NAME: usize = 128;

/// A caller class on this core, with the decisions it has made (a pure function of the
/// class and the name, so they stay right until the state, and its policy, is replaced).
pub(crate) struct CallerClass {
    class: Class,
    /// Decisions by name: `[tools/call, prompts/get, methods without a target]`.
    memo: RefCell<[HashMap<Box<str>, Decision>; 3]>,
}

impl CallerClass {
    /// The decision on `method` targeting `target`, remembered where it can be.
    fn decide(&self, policy: &GroupPolicy, method: &str, target: Target<'_>) -> Decision {
        let (slot, name) = match target {
            Target::Tool(n) => (0, n),
            Target::Prompt(n) => (1, n),
            Target::Method => (2, method),
            // Resources: URIs are many and the method varies (read, subscribe).
            Target::Resource(_) => return policy.decide(&self.class, method, target),
        };
        if let Some(d) = self.memo.borrow().get(slot).and_then(|m| m.get(name)) {
            return *d;
        }
        let d = policy.decide(&self.class, method, target);
        if name.len() <= MAX_MEMO_NAME {
            if let Some(m) = self.memo.borrow_mut().get_mut(slot) {
                if m.len() >= MAX_MEMO {
                    m.clear();
                }
                m.insert(name.into(), d);
            }
        }
        d
    }
}

/// A list answer to filter: which list, and for which caller class.
pub(crate) struct ListFilter {
    kind: ListKind,
    gi: usize,
    class: Rc<CallerClass>,
}

impl ListFilter {
    /// The rules of the caller's class: callers with the same rules see the same lists.
    pub(crate) fn class_rules(&self) -> &[u16] {
        self.class.class.rules()
    }
}

/// The policy class of `caller` in group `gi`, from this core's cache or computed once.
fn class_of(core: &Core, gi: usize, policy: &GroupPolicy, caller: &Caller) -> Rc<CallerClass> {
    let key = (gi, caller.class_key);
    if let Some(c) = core.policy_classes.borrow().get(&key) {
        return c.clone();
    }
    let attrs = caller.attrs.as_deref();
    let subject = Subject {
        identity: &caller.name,
        scopes: attrs.map_or(&[], |a| &a.scopes),
        claims: attrs.map_or(&[], |a| &a.claims),
    };
    let class = Rc::new(CallerClass {
        class: policy.classify(&subject),
        memo: Default::default(),
    });
    let mut cache = core.policy_classes.borrow_mut();
    if cache.len() >= MAX_CLASSES {
        cache.clear();
    }
    cache.insert(key, class.clone());
    class
}

/// The class a connection's last caller had, kept with the connection: a kept-alive client
/// pays no class lookup while its caller, group and configuration state stay the same.
pub(crate) struct ConnClass {
    gi: usize,
    class_key: u64,
    generation: u64,
    class: Rc<CallerClass>,
}

/// What the policy made of a request.
#[derive(Default)]
pub(crate) struct Checked {
    /// The decision (`None` where the group has no policy, and for notifications and
    /// responses, which carry no operation a policy names).
    pub decision: Option<Decision>,
    /// For an allowed list request: the filter its answer goes through.
    pub filter: Option<ListFilter>,
    /// For a refused request: its answer.
    pub refusal: Option<Refusal>,
}

/// Applies the group's policy to a JSON-RPC request of `caller` (`kind`: its method, as the
/// envelope stage read it; `last`: the connection's class of its previous request).
pub(crate) fn check(
    core: &Core,
    caller: &Caller,
    last: &mut Option<ConnClass>,
    gi: usize,
    env: &Envelope<'_>,
    kind: Method,
) -> Checked {
    let mut out = Checked::default();
    let Some(group) = core.shared.config.servers.get(gi) else {
        return out;
    };
    let policy = &group.policy;
    if !policy.is_active() && !group.confirm_destructive {
        return out;
    }
    match env.kind {
        MessageKind::Request => {}
        // A batch (2025-03-26) would carry calls past the decision on one message.
        MessageKind::Batch => {
            out.refusal = Some(Refusal::new(
                400,
                -32600,
                "JSON-RPC batches are not accepted by a server with per-tool policies; send one message per request",
            ));
            return out;
        }
        MessageKind::Notification | MessageKind::Response => return out,
    }
    let method = env.method.map(|m| m.decode()).unwrap_or_default();
    let name = env.name.or(env.uri).map(|n| n.decode());
    let same = |l: &ConnClass| {
        l.gi == gi && l.class_key == caller.class_key && l.generation == core.generation
    };
    let class = match last {
        Some(l) if same(l) => &l.class,
        _ => {
            let l = last.insert(ConnClass {
                gi,
                class_key: caller.class_key,
                generation: core.generation,
                class: class_of(core, gi, policy, caller),
            });
            &l.class
        }
    };
    let target = Target::of(&method, name.as_deref());
    let mut decision = class.decide(policy, &method, target);
    if let (Effect::Allow, Target::Tool(tool), true) =
        (decision.effect, target, group.confirm_destructive)
    {
        decision = destructive(core, gi, tool).unwrap_or(decision);
    }
    out.decision = Some(decision);
    match decision.effect {
        Effect::Allow => {
            // Without rules (`confirm_destructive` alone) only tool lists are read: to learn
            // their annotations.
            let read = |k: &ListKind| policy.is_active() || *k == ListKind::Tools;
            out.filter = ListKind::of(kind).filter(read).map(|kind| ListFilter {
                kind,
                gi,
                class: class.clone(),
            });
        }
        // Asked later (`data_path::confirm`), once the session and era are known.
        Effect::Confirm => {}
        Effect::Deny => {
            out.refusal = Some(match target {
                Target::Tool(_) => Refusal::new(200, -32602, "Unknown tool"),
                Target::Prompt(_) => Refusal::new(200, -32602, "Unknown prompt"),
                Target::Resource(_) => Refusal::new(200, -32602, "Unknown resource"),
                Target::Method => Refusal::new(200, -32601, "Method not found"),
            });
        }
    }
    out
}

/// A `confirm` decision for a call of `tool` in group `gi` (`confirm_destructive`) unless
/// the group's backends listed it as harmless.
fn destructive(core: &Core, gi: usize, tool: &str) -> Option<Decision> {
    let hints = core.shared.tool_hints.get(gi)?.as_ref()?;
    hints.needs_approval(tool).then_some(Decision {
        effect: Effect::Confirm,
        rule: Some(usize::from(crate::policy::confirm::DESTRUCTIVE_RULE)),
    })
}

/// Keeps the entries of a list the caller of `filter` may use (a virtual server's merged list,
/// answered without a backend's answer to filter).
pub(crate) fn retain_visible(core: &Core, filter: &ListFilter, items: &mut Vec<serde_json::Value>) {
    match core.shared.config.servers.get(filter.gi) {
        Some(g) => {
            let class = &filter.class.class;
            lists::retain_entries(items, filter.kind, |n| {
                g.policy.visible(class, filter.kind, n)
            });
        }
        None => items.clear(),
    }
}

/// Most policed list answers a core keeps filtered ([`SeenLists`]); past it, or past
/// [`MAX_SEEN_BYTES`], all are forgotten.
const MAX_SEEN: usize = 64;
/// Most bytes (answers as they came and as filtered) a core keeps in its [`SeenLists`].
const MAX_SEEN_BYTES: usize = 4 << 20;

/// The policed list answers of this core's last backend answers, by group, list and the rules
/// of the caller class (callers with the same rules see the same list): the backend's answer
/// as it came and as the class may see it, so the next answer with the same bytes (but for
/// the request's id) is not parsed, filtered and written again. A backend whose list changed
/// answers other bytes, which are filtered anew and replace the entry; a reload starts empty
/// (built with each per-core state). Without a response cache every list still goes to the
/// backend; with one, `data_path::cache` keeps its cached lists filtered per class itself.
#[derive(Default)]
pub(crate) struct SeenLists {
    entries: RefCell<Vec<SeenList>>,
}

/// One filtered list answer (see [`SeenLists`]).
struct SeenList {
    gi: usize,
    kind: ListKind,
    rules: Box<[u16]>,
    /// The backend's answer (JSON or SSE) and where the request's id is in it.
    source: Vec<u8>,
    source_id: std::ops::Range<usize>,
    /// The answer as the class may see it, and where the id is in it.
    filtered: Vec<u8>,
    filtered_id: std::ops::Range<usize>,
    /// What a `tools/list` said of each tool's annotations (learned again at each use: a
    /// `list_changed` may have made them unknown).
    hints: Vec<(String, bool)>,
}

impl SeenList {
    fn bytes(&self) -> usize {
        self.source.len() + self.filtered.len()
    }

    /// Whether `body` is this entry's source with `id` in place of the id it had.
    fn same_answer(&self, body: &[u8], id: &[u8]) -> bool {
        let (at, end) = (self.source_id.start, self.source_id.end);
        body.len() + (end - at) == self.source.len() + id.len()
            && body.get(..at) == self.source.get(..at)
            && body.get(at..at + id.len()) == Some(id)
            && body.get(at + id.len()..) == self.source.get(end..)
    }

    /// The filtered answer with `id` in place of the id it had.
    fn for_id(&self, id: &[u8]) -> Vec<u8> {
        let (at, end) = (self.filtered_id.start, self.filtered_id.end);
        let mut out = Vec::with_capacity(self.filtered.len() + id.len());
        out.extend_from_slice(self.filtered.get(..at).unwrap_or_default());
        out.extend_from_slice(id);
        out.extend_from_slice(self.filtered.get(end..).unwrap_or_default());
        out
    }
}

/// Where the id `id` of the JSON-RPC response in `body` (JSON, or SSE whose `data:` lines each
/// hold one message) is, or `None`.
fn id_in(body: &[u8], id: &[u8]) -> Option<std::ops::Range<usize>> {
    let lines = body
        .split(|b| *b == b'\n')
        .filter_map(|l| l.strip_prefix(b"data:"));
    std::iter::once(body)
        .chain(lines)
        .find_map(|m| {
            let env = protocol::parse_message(m.trim_ascii()).ok()?;
            (env.kind == MessageKind::Response && env.id == Some(id)).then_some(env.id)?
        })
        .map(|at| crate::data_path::request::offset_of(body, at))
}

/// [`filter_body`] for the backend's answer `body` to the request with id `id`, through this
/// core's [`SeenLists`]: the bytes made last time for the same answer and caller class, or
/// filtered now and kept.
pub(crate) fn filter_seen(
    core: &Core,
    filter: &ListFilter,
    body: Vec<u8>,
    is_sse: bool,
    id: Option<&[u8]>,
) -> Result<Vec<u8>, Refusal> {
    let Some(id) = id else {
        return filter_body(core, filter, body, is_sse);
    };
    let rules = filter.class_rules();
    let hints = core
        .shared
        .tool_hints
        .get(filter.gi)
        .and_then(Option::as_ref);
    {
        let seen = core.seen_lists.entries.borrow();
        let entry = seen
            .iter()
            .find(|e| e.gi == filter.gi && e.kind == filter.kind && *e.rules == *rules);
        if let Some(e) = entry.filter(|e| e.same_answer(&body, id)) {
            if let Some(h) = hints {
                h.learn_if_new(&e.hints);
            }
            return Ok(e.for_id(id));
        }
    }
    let source = body.clone();
    let filtered = filter_body(core, filter, body, is_sse)?;
    core.rec
        .borrow_mut()
        .count(crate::control::stats::Counter::ListsFiltered, 1);
    let (Some(source_id), Some(filtered_id)) = (id_in(&source, id), id_in(&filtered, id)) else {
        return Ok(filtered);
    };
    let hints = match hints {
        Some(_) if filter.kind == ListKind::Tools => lists::messages(&source, is_sse)
            .iter()
            .flat_map(|m| crate::policy::confirm::tool_hints(m))
            .collect(),
        _ => Vec::new(),
    };
    let entry = SeenList {
        gi: filter.gi,
        kind: filter.kind,
        rules: rules.into(),
        source,
        source_id,
        filtered: filtered.clone(),
        filtered_id,
        hints,
    };
    let mut seen = core.seen_lists.entries.borrow_mut();
    seen.retain(|e| !(e.gi == filter.gi && e.kind == filter.kind && *e.rules == *rules));
    let held: usize = seen.iter().map(SeenList::bytes).sum();
    if seen.len() >= MAX_SEEN || held + entry.bytes() > MAX_SEEN_BYTES {
        seen.clear();
    }
    if entry.bytes() <= MAX_SEEN_BYTES {
        seen.push(entry);
    }
    Ok(filtered)
}

/// The list answer `body` (JSON, or an SSE stream) as the caller of `filter` may see it.
pub(crate) fn filter_body(
    core: &Core,
    filter: &ListFilter,
    body: Vec<u8>,
    is_sse: bool,
) -> Result<Vec<u8>, Refusal> {
    let policy = core
        .shared
        .config
        .servers
        .get(filter.gi)
        .map(|g| g.policy.clone())
        .unwrap_or_default();
    if filter.kind == ListKind::Tools {
        if let Some(h) = core
            .shared
            .tool_hints
            .get(filter.gi)
            .and_then(Option::as_ref)
        {
            for m in lists::messages(&body, is_sse) {
                h.learn(&crate::policy::confirm::tool_hints(&m));
            }
        }
    }
    let visible = |n: &str| policy.visible(&filter.class.class, filter.kind, n);
    let filtered = lists::filter_answer(&body, is_sse, filter.kind, visible).map_err(|_| {
        Refusal::new(
            502,
            -32603,
            "list answer from backend could not be read to filter it",
        )
    })?;
    Ok(filtered.unwrap_or(body))
}
