//! The matching rules of topic and headers exchanges: pure functions of a binding and a message.
//!
//! Topic: the routing key and the binding pattern are split into words on `.` (an empty string has
//! no words); `*` matches exactly one word, `#` zero or more, any other word only itself.
//! [`topic_matches`] runs in O(pattern words × key words) time and memory, never backtracking
//! exponentially (both are at most 255 bytes, so at most 128 words).
//!
//! Headers: a binding's arguments say what a message's headers must hold. `x-match` picks the
//! rule: `all` (the default: every argument present with an equal value), `any` (at least one),
//! `all-with-x` / `any-with-x` (the same, counting arguments whose names start with `x-` too;
//! plain `all`/`any` ignore those). Values compare as bytes. `all` with nothing to match matches
//! every message, `any` with nothing to match none (as RabbitMQ).

use bytes::Bytes;
use levee_proto::ProtoError;

/// Words of a topic key or pattern (an empty string has none).
fn words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

/// Whether the topic binding `pattern` matches `routing_key`.
pub(crate) fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let p = words(pattern);
    let k = words(routing_key);
    // row[j]: the pattern words seen so far match the first j key words.
    let mut row = vec![false; k.len() + 1];
    row[0] = true;
    for pw in &p {
        let mut next = vec![false; k.len() + 1];
        for j in 0..=k.len() {
            next[j] = match *pw {
                "#" => row[j] || (j > 0 && next[j - 1]),
                "*" => j > 0 && row[j - 1],
                w => j > 0 && row[j - 1] && k[j - 1] == w,
            };
        }
        row = next;
    }
    row[k.len()]
}

/// How a headers binding matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl XMatch {
    /// The `x-match` argument of a headers binding (`all` when absent).
    pub(crate) fn of(arguments: &[(String, Bytes)]) -> Result<XMatch, ProtoError> {
        let Some((_, v)) = arguments.iter().find(|(k, _)| k == "x-match") else {
            return Ok(XMatch::All);
        };
        match &v[..] {
            b"all" => Ok(XMatch::All),
            b"any" => Ok(XMatch::Any),
            b"all-with-x" => Ok(XMatch::AllWithX),
            b"any-with-x" => Ok(XMatch::AnyWithX),
            other => Err(ProtoError::InvalidConfig {
                field: "x-match",
                reason: format!(
                    "{:?}: expected all, any, all-with-x or any-with-x",
                    String::from_utf8_lossy(other)
                ),
            }),
        }
    }
}

/// Whether a message with `headers` matches a headers binding with `arguments`.
pub(crate) fn headers_match(
    how: XMatch,
    arguments: &[(String, Bytes)],
    headers: &[(String, Bytes)],
) -> bool {
    let with_x = matches!(how, XMatch::AllWithX | XMatch::AnyWithX);
    let mut wanted = arguments
        .iter()
        .filter(|(k, _)| k != "x-match" && (with_x || !k.starts_with("x-")));
    let present = |(k, v): &(String, Bytes)| headers.iter().any(|(hk, hv)| hk == k && hv == v);
    match how {
        XMatch::All | XMatch::AllWithX => wanted.all(present),
        XMatch::Any | XMatch::AnyWithX => wanted.any(present),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An independent reference: plain recursion over the word lists.
    fn reference(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| reference(rest, &k[i..])),
            Some((&"*", rest)) => !k.is_empty() && reference(rest, &k[1..]),
            Some((w, rest)) => k.first() == Some(w) && reference(rest, &k[1..]),
        }
    }

    #[test]
    fn topic_examples() {
        let yes = [
            ("a.b.c", "a.b.c"),
            ("a.*.c", "a.b.c"),
            ("a.#", "a"),
            ("a.#", "a.b.c"),
            ("#", ""),
            ("#", "a.b"),
            ("#.c", "c"),
            ("*.*", "a.b"),
            ("a.#.c", "a.c"),
            ("a.#.c", "a.x.y.c"),
            ("#.#", "a"),
            ("", ""),
        ];
        let no = [
            ("a.b", "a.b.c"),
            ("a.*", "a"),
            ("a.*", "a.b.c"),
            ("*", ""),
            ("a.#.c", "a.b"),
            ("", "a"),
            ("stock.usd", "stock.eur"),
        ];
        for (p, k) in yes {
            assert!(topic_matches(p, k), "{p} should match {k}");
        }
        for (p, k) in no {
            assert!(!topic_matches(p, k), "{p} should not match {k}");
        }
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string())
        ]
    }

    proptest! {
        #[test]
        fn topic_agrees_with_the_reference(
            pattern in proptest::collection::vec(
                prop_oneof![word(), Just("*".to_string()), Just("#".to_string())], 0..7),
            key in proptest::collection::vec(word(), 0..7),
        ) {
            let pattern = pattern.join(".");
            let key = key.join(".");
            let expected = reference(&words(&pattern), &words(&key));
            prop_assert_eq!(topic_matches(&pattern, &key), expected, "{} vs {}", pattern, key);
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Bytes)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
            .collect()
    }

    #[test]
    fn headers_all_and_any() {
        let args = h(&[("format", "pdf"), ("type", "report")]);
        let both = h(&[("format", "pdf"), ("type", "report"), ("extra", "1")]);
        let one = h(&[("format", "pdf")]);
        let wrong = h(&[("format", "png"), ("type", "log")]);
        assert!(headers_match(XMatch::All, &args, &both));
        assert!(!headers_match(XMatch::All, &args, &one));
        assert!(headers_match(XMatch::Any, &args, &one));
        assert!(!headers_match(XMatch::Any, &args, &wrong));
        // Nothing to match: all matches everything, any nothing.
        assert!(headers_match(XMatch::All, &[], &one));
        assert!(!headers_match(XMatch::Any, &[], &one));
    }

    #[test]
    fn x_arguments_count_only_with_x() {
        let mut args = h(&[("x-tenant", "acme"), ("kind", "a")]);
        args.push(("x-match".into(), Bytes::from_static(b"all")));
        let msg = h(&[("kind", "a")]);
        assert!(headers_match(XMatch::of(&args).unwrap(), &args, &msg));
        assert!(!headers_match(XMatch::AllWithX, &args, &msg));
        let msg = h(&[("kind", "a"), ("x-tenant", "acme")]);
        assert!(headers_match(XMatch::AllWithX, &args, &msg));
        assert_eq!(
            XMatch::of(&h(&[("x-match", "any-with-x")])).unwrap(),
            XMatch::AnyWithX
        );
        assert!(XMatch::of(&h(&[("x-match", "most")])).is_err());
    }
}
