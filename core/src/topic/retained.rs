//! Retained messages indexed by topic level, so a new subscription finds its retained messages
//! by walking the levels its filter can match instead of testing every stored topic.

use std::collections::HashMap;

type Children<T> = HashMap<Box<str>, RetainedNode<T>, foldhash::fast::RandomState>;

struct RetainedNode<T> {
    children: Children<T>,
    value: Option<T>,
}

impl<T> Default for RetainedNode<T> {
    fn default() -> Self {
        Self {
            children: Children::default(),
            value: None,
        }
    }
}

pub struct RetainedTree<T> {
    root: RetainedNode<T>,
    len: usize,
}

impl<T> Default for RetainedTree<T> {
    fn default() -> Self {
        Self {
            root: RetainedNode::default(),
            len: 0,
        }
    }
}

impl<T: Clone> RetainedTree<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` for `topic`, replacing what was there.
    pub fn insert(&mut self, topic: &str, value: T) {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.value.replace(value).is_none() {
            self.len += 1;
        }
    }

    /// Removes the value for `topic`; prunes levels left empty.
    pub fn remove(&mut self, topic: &str) -> Option<T> {
        let removed = remove_at(&mut self.root, topic.split('/'));
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    pub fn get(&self, topic: &str) -> Option<&T> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    /// Every value whose topic matches `filter` (`$`-topics only by filters naming them).
    pub fn matching(&self, filter: &str, out: &mut Vec<T>) {
        collect(&self.root, filter.split('/'), true, out);
    }
}

fn remove_at<T>(node: &mut RetainedNode<T>, mut levels: std::str::Split<'_, char>) -> Option<T> {
    match levels.next() {
        None => node.value.take(),
        Some(level) => {
            let child = node.children.get_mut(level)?;
            let removed = remove_at(child, levels);
            if child.value.is_none() && child.children.is_empty() {
                node.children.remove(level);
            }
            removed
        }
    }
}

fn collect<T: Clone>(
    node: &RetainedNode<T>,
    mut levels: std::str::Split<'_, char>,
    first: bool,
    out: &mut Vec<T>,
) {
    match levels.next() {
        None => out.extend(node.value.clone()),
        Some("#") => {
            // "a/#" matches "a" itself and everything below it.
            if !first {
                out.extend(node.value.clone());
            }
            for (name, child) in &node.children {
                if !(first && name.starts_with('$')) {
                    collect_all(child, out);
                }
            }
        }
        Some("+") => {
            for (name, child) in &node.children {
                if !(first && name.starts_with('$')) {
                    collect(child, levels.clone(), false, out);
                }
            }
        }
        Some(level) => {
            if let Some(child) = node.children.get(level) {
                collect(child, levels, false, out);
            }
        }
    }
}

fn collect_all<T: Clone>(node: &RetainedNode<T>, out: &mut Vec<T>) {
    out.extend(node.value.clone());
    for child in node.children.values() {
        collect_all(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;

    #[test]
    fn lookups_agree_with_filter_matching() {
        let topics = [
            "a", "a/b", "a/b/c", "a/c", "b/b", "$SYS/x", "$SYS/x/y", "/lead", "trail/", "a//b",
        ];
        let filters = [
            "#", "+", "a/#", "a/+", "+/b", "+/+/+", "$SYS/#", "+/x", "a", "/+", "+/", "a//b",
            "a/+/+",
        ];
        let mut t = RetainedTree::default();
        for topic in topics {
            t.insert(topic, topic.to_string());
        }
        assert_eq!(t.len(), topics.len());
        for f in filters {
            let mut got = Vec::new();
            t.matching(f, &mut got);
            got.sort();
            let mut want: Vec<String> = topics
                .iter()
                .filter(|t| matches(f, t))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            assert_eq!(got, want, "filter {f}");
        }
    }

    #[test]
    fn replace_and_remove_keep_the_count() {
        let mut t = RetainedTree::default();
        t.insert("x/y", 1);
        t.insert("x/y", 2);
        assert_eq!((t.len(), t.get("x/y")), (1, Some(&2)));
        assert_eq!(t.remove("x/y"), Some(2));
        assert_eq!(t.remove("x/y"), None);
        assert!(t.is_empty() && t.root.children.is_empty());
    }
}
