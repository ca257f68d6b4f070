//! [`Glob`]: the tiny wildcard matcher for tool names in limit rules (`*` and `?` only, no
//! regex dependency, no allocation when matching).

/// A pattern where `*` matches any run of characters (also none) and `?` exactly one
/// character; every other character matches itself. There is no escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    pattern: String,
}

impl Glob {
    /// A glob from its pattern text (every string is a valid pattern).
    pub fn new(pattern: impl Into<String>) -> Self {
        Glob {
            pattern: pattern.into(),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `text` matches the whole pattern. Linear-time backtracking on the last `*` only,
    /// so a hostile tool name cannot make this exponential (O(pattern × text) worst case).
    pub fn matches(&self, text: &str) -> bool {
        let pattern = self.pattern.as_bytes();
        let text = text.as_bytes();
        let (mut p, mut t) = (0usize, 0usize);
        // Where the last `*` was in the pattern, and the text position it currently absorbs to.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match pattern.get(p) {
                Some(b'*') => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(b'?') => {
                    p += 1;
                    t += char_len(text, t);
                    continue;
                }
                Some(&c) if text.get(t) == Some(&c) => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
            // Mismatch: let the last `*` absorb one more character, or fail.
            match star {
                Some((star_p, star_t)) => {
                    let absorbed = star_t + char_len(text, star_t);
                    star = Some((star_p, absorbed));
                    p = star_p + 1;
                    t = absorbed;
                }
                None => return false,
            }
        }
        pattern
            .get(p..)
            .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
    }
}

impl std::fmt::Display for Glob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// Bytes in the UTF-8 character starting at `at` (1 past the end or on a stray byte), so `?`
/// and `*` step over whole characters and literal bytes always compare from a boundary.
fn char_len(text: &[u8], at: usize) -> usize {
    match text.get(at) {
        Some(&b) if b >= 0xF0 => 4,
        Some(&b) if b >= 0xE0 => 3,
        Some(&b) if b >= 0xC0 => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious recursive definition, on characters.
    fn reference(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some(('?', rest)) => !t.is_empty() && reference(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }

    #[test]
    fn examples() {
        let g = |p: &str, t: &str| Glob::new(p).matches(t);
        assert!(g("search*", "search"));
        assert!(g("search*", "search_web"));
        assert!(!g("search*", "web_search"));
        assert!(g("*search", "web_search"));
        assert!(g("*_*", "a_b"));
        assert!(!g("*_*", "ab"));
        assert!(g("get_?", "get_x"));
        assert!(!g("get_?", "get_"));
        assert!(!g("get_?", "get_xy"));
        assert!(g("?é?", "aéb"));
        assert!(g("é?", "éü"));
        assert!(g("*", ""));
        assert!(g("", ""));
        assert!(!g("", "a"));
        assert!(g("a*b*c", "aXbYbZc"));
        assert!(!g("a*b*c", "aXbYbZ"));
        assert!(g("exact", "exact"));
        assert!(!g("exact", "exactly"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(0x610b), cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn agrees_with_reference(pattern in "[ab*?é]{0,8}", text in "[abé]{0,10}") {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(Glob::new(pattern.as_str()).matches(&text), reference(&p, &t));
        }
    }
}
