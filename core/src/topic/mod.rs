//! Topic names and filters: validation, matching, shared-subscription parsing, and the
//! subscription tree the router matches every publish against.

mod retained;
mod tree;

pub use retained::RetainedTree;
pub use tree::{TopicTree, TreeEntry};

/// Longest topic the protocol can carry (a two-byte length prefix).
const MAX_TOPIC_LEN: usize = 65_535;

/// A topic name a client may publish to: no wildcards, not empty.
pub fn valid_topic_name(topic: &str) -> bool {
    // A byte loop: a `contains` with a char array decodes every char (4x the instructions).
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && !topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// A topic a party other than the broker may publish to — a client's PUBLISH or will, a
/// message hook's patch, a rule's republish: a valid name, not one of the broker's `$` topics,
/// no deeper than `max_levels`. One definition, so no source is checked less than the others.
pub fn publishable(topic: &str, max_levels: usize) -> bool {
    valid_topic_name(topic) && !topic.starts_with('$') && !too_deep(topic, max_levels)
}

/// A topic filter: `+` fills a whole level, `#` is a whole last level.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// The most levels `max_topic_levels` may allow: the topic trees are walked level by level, and
/// this keeps every walk far from the end of a thread's stack.
pub const MAX_TOPIC_LEVELS: usize = 1024;

pub fn level_count(topic: &str) -> usize {
    topic.bytes().filter(|b| *b == b'/').count() + 1
}

/// Whether `topic` has more than `max` levels. A topic of fewer bytes than `max` cannot, and
/// is not scanned (the common case, checked for every publish).
pub fn too_deep(topic: &str, max: usize) -> bool {
    topic.len() >= max && level_count(topic) > max
}

/// Splits `$share/{group}/{filter}` into the group and the filter.
/// Returns `Some(Err(()))` for a `$share` filter that is malformed.
pub fn parse_shared(filter: &str) -> Option<Result<(&str, &str), ()>> {
    let rest = filter.strip_prefix("$share/")?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err(()));
    };
    if group.is_empty() || group.contains(['+', '#']) || !valid_topic_filter(inner) {
        return Some(Err(()));
    }
    Some(Ok((group, inner)))
}

/// Whether `topic` (a name) matches `filter`. `$`-topics are not matched by a leading wildcard.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic matched by `inner` is also matched by `outer`.
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic name is matched by both filters.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishable_is_a_valid_name_outside_dollar_within_the_level_limit() {
        assert!(publishable("a/b", 2));
        assert!(!publishable("a/b/c", 2), "too deep");
        assert!(publishable("a/b", 3), "fewer bytes than levels allowed");
        assert!(!publishable("/////", 5), "six empty levels");
        assert!(publishable("////", 5));
        assert!(!publishable("$SYS/x", 8), "the broker's");
        assert!(!publishable("a/+", 8), "a filter, not a name");
        assert!(!publishable("", 8));
    }

    #[test]
    fn names_and_filters_are_validated() {
        assert!(valid_topic_name("a/b"));
        assert!(valid_topic_name("/"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name("a/#"));
        assert!(valid_topic_filter("#"));
        assert!(valid_topic_filter("+/a/+"));
        assert!(valid_topic_filter("a/#"));
        assert!(!valid_topic_filter("a/#/b"));
        assert!(!valid_topic_filter("a#"));
        assert!(!valid_topic_filter("a/b+"));
        assert!(!valid_topic_filter(""));
    }

    #[test]
    fn wildcards_match_levels_and_skip_dollar_topics() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "x/y"));
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/broker", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker"));
        assert!(matches("+", ""));
        assert!(!matches("a/b", "a/b/c"));
    }

    #[test]
    fn shared_filters_are_parsed() {
        assert_eq!(parse_shared("$share/g/a/+"), Some(Ok(("g", "a/+"))));
        assert_eq!(parse_shared("$share/g"), Some(Err(())));
        assert_eq!(parse_shared("$share//a"), Some(Err(())));
        assert_eq!(parse_shared("a/b"), None);
    }

    #[test]
    fn cover_and_overlap() {
        assert!(filter_covers("a/#", "a/b/+"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(filter_covers("+/b", "x/b"));
        assert!(filters_overlap("#", "secret/x"));
        assert!(filters_overlap("a/+/c", "a/b/#"));
        assert!(!filters_overlap("a/b", "a/c"));
    }
}
