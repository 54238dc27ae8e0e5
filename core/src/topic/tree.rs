//! The subscription tree: one node per topic level (`+` and `#` children in fields of their
//! own), shared subscription groups kept at the node of their filter. Matching walks the tree
//! without allocating.

use std::collections::HashMap;

/// Topic levels come from clients, so the map keeps a randomly seeded hasher (no hash
/// flooding), but a fast one: SipHash was 15% of the broker's instructions per publish.
type LevelMap<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What the tree stores: anything with a stable key (the client id) so a resubscribe replaces.
pub trait TreeEntry {
    fn key(&self) -> &str;
}

struct SharedGroup<T> {
    name: Box<str>,
    members: Vec<T>,
    /// Round-robin cursor; atomic so matching needs only a shared borrow of the tree.
    next: AtomicUsize,
}

struct Node<T> {
    /// Children by literal level. The wildcard levels have fields of their own: every match
    /// asks for them at every level, and a field costs a pointer test, not a hash lookup.
    children: LevelMap<Node<T>>,
    plus: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    subscribers: Vec<T>,
    shared: Vec<SharedGroup<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            children: LevelMap::default(),
            plus: None,
            hash: None,
            subscribers: Vec::new(),
            shared: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
            && self.shared.is_empty()
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<T> {
        match level {
            "+" => self.plus.get_or_insert_with(Default::default),
            "#" => self.hash.get_or_insert_with(Default::default),
            _ => self.children.entry(level.into()).or_default(),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<T>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.children.remove(level);
            }
        }
    }
}

/// The levels of a topic name, split at `/` by a plain byte search (`str::split` with a char
/// pattern costs more than the whole tree walk for short topics).
#[derive(Clone, Copy)]
struct Levels<'a> {
    rest: Option<&'a str>,
}

impl<'a> Levels<'a> {
    fn new(topic: &'a str) -> Self {
        Self { rest: Some(topic) }
    }
}

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == b'/') {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

pub struct TopicTree<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for TopicTree<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: TreeEntry> TopicTree<T> {
    /// Number of subscriptions (shared members included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces the entry with the same key at `filter` (in `share` group if given).
    /// Returns the entry it replaced.
    pub fn insert(&mut self, filter: &str, share: Option<&str>, entry: T) -> Option<T> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_or_insert(level);
        }
        let list = match share {
            None => &mut node.subscribers,
            Some(group) => {
                let idx = match node.shared.iter().position(|g| &*g.name == group) {
                    Some(i) => i,
                    None => {
                        node.shared.push(SharedGroup {
                            name: group.into(),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[idx].members
            }
        };
        match list.iter_mut().find(|e| e.key() == entry.key()) {
            Some(slot) => Some(std::mem::replace(slot, entry)),
            None => {
                list.push(entry);
                self.len += 1;
                None
            }
        }
    }

    /// Removes the entry with `key` at `filter`; prunes nodes left empty.
    pub fn remove(&mut self, filter: &str, share: Option<&str>, key: &str) -> Option<T> {
        let removed = remove_at(&mut self.root, filter.split('/'), share, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Calls `visit` once for every subscription matching `topic`. For a shared group, only one
    /// member is visited: the next in round-robin order for which `available` holds, or the next
    /// one at all if none is available.
    pub fn for_each_match(
        &self,
        topic: &str,
        available: impl Fn(&T) -> bool,
        mut visit: impl FnMut(&T, Option<&str>),
    ) {
        let dollar = topic.starts_with('$');
        walk(
            &self.root,
            Levels::new(topic),
            true,
            dollar,
            &available,
            &mut visit,
        );
    }
}

fn remove_at<T: TreeEntry>(
    node: &mut Node<T>,
    mut levels: std::str::Split<'_, char>,
    share: Option<&str>,
    key: &str,
) -> Option<T> {
    match levels.next() {
        None => match share {
            None => {
                let i = node.subscribers.iter().position(|e| e.key() == key)?;
                Some(node.subscribers.swap_remove(i))
            }
            Some(group) => {
                let gi = node.shared.iter().position(|g| &*g.name == group)?;
                let members = &mut node.shared[gi].members;
                let i = members.iter().position(|e| e.key() == key)?;
                let removed = members.remove(i);
                if members.is_empty() {
                    node.shared.swap_remove(gi);
                }
                Some(removed)
            }
        },
        Some(level) => {
            let child = node.child_mut(level)?;
            let removed = remove_at(child, levels, share, key);
            if removed.is_some() && child.is_empty() {
                node.remove_child(level);
            }
            removed
        }
    }
}

fn visit_node<T>(
    node: &Node<T>,
    available: &impl Fn(&T) -> bool,
    visit: &mut impl FnMut(&T, Option<&str>),
) {
    for e in &node.subscribers {
        visit(e, None);
    }
    for g in &node.shared {
        let n = g.members.len();
        if n == 0 {
            continue;
        }
        let start = g.next.fetch_add(1, Ordering::Relaxed);
        let chosen = (0..n)
            .map(|i| &g.members[(start + i) % n])
            .find(|m| available(m))
            .unwrap_or(&g.members[start % n]);
        visit(chosen, Some(&g.name));
    }
}

fn walk<T>(
    node: &Node<T>,
    mut levels: Levels<'_>,
    first: bool,
    dollar: bool,
    available: &impl Fn(&T) -> bool,
    visit: &mut impl FnMut(&T, Option<&str>),
) {
    let wildcards_allowed = !(first && dollar);
    match levels.next() {
        None => {
            visit_node(node, available, visit);
            // "a/#" also matches "a".
            if let Some(hash) = &node.hash {
                visit_node(hash, available, visit);
            }
        }
        Some(level) => {
            if wildcards_allowed {
                if let Some(hash) = &node.hash {
                    visit_node(hash, available, visit);
                }
                if let Some(plus) = &node.plus {
                    walk(plus, levels, false, dollar, available, visit);
                }
            }
            if node.children.is_empty() {
                return;
            }
            if let Some(child) = node.children.get(level) {
                walk(child, levels, false, dollar, available, visit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct E(&'static str);
    impl TreeEntry for E {
        fn key(&self) -> &str {
            self.0
        }
    }

    fn matched(t: &TopicTree<E>, topic: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        t.for_each_match(topic, |_| true, |e, _| out.push(e.0));
        out.sort();
        out
    }

    #[test]
    fn matches_exact_plus_and_hash() {
        let mut t = TopicTree::default();
        t.insert("a/b", None, E("exact"));
        t.insert("a/+", None, E("plus"));
        t.insert("a/#", None, E("hash"));
        t.insert("#", None, E("all"));
        t.insert("b/#", None, E("other"));
        assert_eq!(matched(&t, "a/b"), vec!["all", "exact", "hash", "plus"]);
        assert_eq!(matched(&t, "a"), vec!["all", "hash"]);
        assert_eq!(matched(&t, "$SYS/x"), Vec::<&str>::new());
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn insert_replaces_same_key_and_remove_prunes() {
        let mut t = TopicTree::default();
        assert!(t.insert("x/y", None, E("c")).is_none());
        assert!(t.insert("x/y", None, E("c")).is_some());
        assert_eq!(t.len(), 1);
        assert!(t.remove("x/y", None, "c").is_some());
        assert!(t.remove("x/y", None, "c").is_none());
        assert!(t.root.is_empty());
        assert!(t.is_empty());
        // Wildcard children live in fields of their own: pruned the same way.
        t.insert("x/+/#", None, E("w"));
        t.insert("+", Some("g"), E("s"));
        assert!(t.remove("x/+/#", None, "w").is_some());
        assert!(t.remove("+", Some("g"), "s").is_some());
        assert!(t.root.is_empty(), "wildcard nodes left behind");
    }

    #[test]
    fn shared_groups_round_robin() {
        let mut t = TopicTree::default();
        t.insert("s/+", Some("g"), E("m1"));
        t.insert("s/+", Some("g"), E("m2"));
        let mut seen = Vec::new();
        for _ in 0..4 {
            t.for_each_match(
                "s/1",
                |_| true,
                |e, g| {
                    assert_eq!(g, Some("g"));
                    seen.push(e.0)
                },
            );
        }
        assert_eq!(seen.iter().filter(|s| **s == "m1").count(), 2);
        assert_eq!(seen.iter().filter(|s| **s == "m2").count(), 2);
        let mut only = Vec::new();
        t.for_each_match("s/1", |e| e.0 == "m2", |e, _| only.push(e.0));
        assert_eq!(only, vec!["m2"]);
    }
}
