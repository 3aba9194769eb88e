//! Node labels as the node cache keeps them: one shared, sorted slice of interned keys and
//! values per node. A fleet's nodes carry the same few keys and mostly the same values
//! (`kubernetes.io/os=linux`, a pool, an instance type), so each distinct text is kept once
//! for the whole fleet instead of once per node, and a node's labels are one allocation
//! that the start gate's and steering's copies of the node share.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

/// Reading a label by key, from a node's [`Labels`] or an object's label map.
pub trait LabelMap {
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelMap for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A node's labels, sorted by key; cloning shares them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Labels(Arc<[(Arc<str>, Arc<str>)]>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy as a plain map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl LabelMap for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Labels {
        let mut strings = STRINGS.lock().unwrap_or_else(|e| e.into_inner());
        // A BTreeMap iterates in key order, so the slice is sorted.
        Labels(
            map.iter()
                .map(|(k, v)| (strings.intern(k), strings.intern(v)))
                .collect(),
        )
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Labels {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Labels {
        Labels::from(
            iter.into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

static STRINGS: Mutex<Interner> = Mutex::new(Interner {
    set: None,
    purge_at: PURGE_FLOOR,
});

/// Below this many texts the interner never looks for unused ones.
const PURGE_FLOOR: usize = 1024;

/// The texts of every node's labels, each once. A text no node holds any more (a removed
/// node's hostname, a changed value) is dropped when the set has doubled since the last
/// look, so the set stays within twice what the nodes use.
struct Interner {
    set: Option<HashSet<Arc<str>>>,
    purge_at: usize,
}

impl Interner {
    fn intern(&mut self, text: &str) -> Arc<str> {
        let set = self.set.get_or_insert_with(HashSet::new);
        if let Some(shared) = set.get(text) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(text);
        set.insert(Arc::clone(&shared));
        if set.len() >= self.purge_at {
            set.retain(|s| Arc::strong_count(s) > 1);
            set.shrink_to_fit();
            self.purge_at = (set.len() * 2).max(PURGE_FLOOR);
        }
        shared
    }
}

#[cfg(test)]
fn interned() -> usize {
    let strings = STRINGS.lock().unwrap_or_else(|e| e.into_inner());
    strings.set.as_ref().map_or(0, HashSet::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_read_as_the_map_they_came_from() {
        let source = map(&[
            ("kubernetes.io/os", "linux"),
            ("a", "1"),
            ("zone", ""),
            ("kubernetes.io/hostname", "node-7"),
        ]);
        let labels = Labels::from(source.clone());
        for (k, v) in &source {
            assert_eq!(labels.get(k), Some(v.as_str()));
            assert!(labels.contains_key(k));
        }
        assert_eq!(labels.get("b"), None);
        assert_eq!(labels.get(""), None);
        assert!(!labels.contains_key("kubernetes.io"));
        assert_eq!(labels.len(), 4);
        assert_eq!(labels.to_map(), source);
        assert_eq!(
            labels.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["a", "kubernetes.io/hostname", "kubernetes.io/os", "zone"]
        );
        assert!(Labels::default().is_empty());
    }

    #[test]
    fn nodes_share_each_text() {
        let one = Labels::from(map(&[("shared-key-x", "shared-value-x"), ("h", "one")]));
        let two = Labels::from(map(&[("shared-key-x", "shared-value-x"), ("h", "two")]));
        assert!(Arc::ptr_eq(&one.0[1].0, &two.0[1].0));
        assert!(Arc::ptr_eq(&one.0[1].1, &two.0[1].1));
        assert_eq!(one.get("h"), Some("one"));
        assert_eq!(two.get("h"), Some("two"));
        assert_ne!(one, two);
    }

    #[test]
    fn texts_no_node_holds_are_dropped() {
        // Many nodes come and go, each with its own hostname: the interner does not keep
        // the hostnames of the nodes that are gone.
        let kept: Vec<Labels> = (0..100)
            .map(|i| Labels::from(map(&[("purge-test-host", &format!("kept-{i}"))])))
            .collect();
        for i in 0..20 * PURGE_FLOOR {
            drop(Labels::from(map(&[(
                "purge-test-host",
                &format!("gone-{i}"),
            )])));
        }
        // Other tests intern at the same time; none holds thousands of texts.
        assert!(interned() < 4 * PURGE_FLOOR, "{} texts kept", interned());
        for (i, labels) in kept.iter().enumerate() {
            assert_eq!(
                labels.get("purge-test-host"),
                Some(format!("kept-{i}").as_str())
            );
        }
    }
}
