//! Registers whose concurrent writes compose deterministically: the building block of the state
//! p11kms keeps on the token (see [`super::doc`]).
//!
//! PKCS#11 has no compare-and-swap, so two replicas can change one key at the same moment and
//! neither can stop the other. Instead of choosing one write and losing the other, every write is
//! kept with a [`Stamp`] (a Lamport clock, then the writer's replica id, then a random change id:
//! a total order that respects "this writer had seen that write") and with `seen`, the highest
//! stamp the writer had seen *in this register*. A write *supersedes* every entry whose stamp is
//! at most its `seen`: it was made knowing them. Entries nobody superseded are the register's
//! current entries; more than one means their writers did not see each other, a real conflict,
//! which each register type resolves with its own rule (the later stamp, or the safer value).
//!
//! Merging is a set union followed by dropping superseded entries: commutative, associative and
//! idempotent, so replicas that read the same writes in any order, split into any objects,
//! compute the same state, and a snapshot of merged writes can replace them at any time.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// The order of writes: Lamport clock, then replica id, then the write's own random id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp(pub u64, pub String, pub String);

impl Stamp {
    /// The Lamport clock.
    pub fn clock(&self) -> u64 {
        self.0
    }
}

/// One write of a register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<T> {
    /// The value written.
    #[serde(rename = "v")]
    pub value: T,
    /// When, in the order of writes.
    #[serde(rename = "s")]
    pub stamp: Stamp,
    /// The highest stamp of this register the writer had seen (`None`: it saw none).
    #[serde(rename = "seen", default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<Stamp>,
}

/// A register: its current (mutually unseen) writes, in stamp order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Register<T> {
    entries: Vec<Entry<T>>,
}

impl<T> Default for Register<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<T: Clone + PartialEq> Register<T> {
    /// A register holding one write.
    pub fn written(value: T, stamp: Stamp, seen: Option<Stamp>) -> Self {
        Self {
            entries: vec![Entry { value, stamp, seen }],
        }
    }

    /// True when nothing was ever written.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The current writes, oldest stamp first.
    pub fn entries(&self) -> &[Entry<T>] {
        &self.entries
    }

    /// The highest stamp among the current writes: what a writer that read this register has
    /// seen.
    pub fn top(&self) -> Option<&Stamp> {
        self.entries.last().map(|e| &e.stamp)
    }

    /// A write of `value` by a writer that has read this register as it is now: it supersedes
    /// every current entry. Returns the one-entry register that records the write, to be stored.
    pub fn write(&mut self, value: T, stamp: Stamp) -> Register<T> {
        let write = Register::written(value, stamp, self.top().cloned());
        self.merge(&write);
        write
    }

    /// Adds `other`'s writes and drops every superseded one.
    pub fn merge(&mut self, other: &Register<T>) {
        for e in &other.entries {
            if !self.entries.iter().any(|mine| mine.stamp == e.stamp) {
                self.entries.push(e.clone());
            }
        }
        let seen: Vec<Option<Stamp>> = self.entries.iter().map(|e| e.seen.clone()).collect();
        self.entries.retain(|e| {
            !seen
                .iter()
                .flatten()
                .any(|s| s.cmp(&e.stamp) != Ordering::Less)
        });
        self.entries.sort_by(|a, b| a.stamp.cmp(&b.stamp));
    }

    /// The value of the latest write (the highest stamp wins a conflict).
    pub fn latest(&self) -> Option<&T> {
        self.entries.last().map(|e| &e.value)
    }

    /// The value a conflict resolves to under `prefer`, which picks the safer of two values
    /// (ties and non-conflicts: the latest write).
    pub fn resolve(&self, prefer: impl Fn(&T, &T) -> bool) -> Option<&T> {
        let mut best = self.entries.last()?;
        for e in self.entries.iter().rev().skip(1) {
            if prefer(&e.value, &best.value) {
                best = e;
            }
        }
        Some(&best.value)
    }
}

/// A map of registers, merged key by key: concurrent writes to different keys both survive.
pub type RegisterMap<K, T> = BTreeMap<K, Register<T>>;

/// Merges `other` into `mine`, key by key.
pub fn merge_map<K: Ord + Clone, T: Clone + PartialEq>(
    mine: &mut RegisterMap<K, T>,
    other: &RegisterMap<K, T>,
) {
    for (k, r) in other {
        mine.entry(k.clone()).or_default().merge(r);
    }
}

/// The highest clock in a register.
pub fn max_clock<T>(r: &Register<T>) -> u64 {
    r.entries.iter().map(|e| e.stamp.clock()).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(clock: u64, replica: &str) -> Stamp {
        Stamp(clock, replica.into(), format!("{replica}{clock}"))
    }

    #[test]
    fn a_write_that_saw_another_supersedes_it() {
        let mut r = Register::default();
        r.write("a", st(1, "x"));
        let w = r.write("b", st(2, "y"));
        assert_eq!(r.entries().len(), 1);
        assert_eq!(r.latest(), Some(&"b"));
        // Replaying the first write changes nothing: it was superseded.
        r.merge(&Register::written("a", st(1, "x"), None));
        assert_eq!(r.entries().len(), 1);
        assert_eq!(w.entries()[0].seen, Some(st(1, "x")));
    }

    #[test]
    fn writes_that_did_not_see_each_other_both_stay_and_resolve_by_rule() {
        let base = Register::written(true, st(1, "x"), None);
        let a = Register::written(false, st(2, "a"), Some(st(1, "x")));
        let b = Register::written(true, st(2, "b"), Some(st(1, "x")));
        let mut ab = base.clone();
        ab.merge(&a);
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&base);
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.entries().len(), 2);
        assert_eq!(ab.latest(), Some(&true));
        // "false is safer": the conflict resolves to false whatever the stamps.
        assert_eq!(ab.resolve(|x, y| !*x && *y), Some(&false));
        // A later write that saw both settles the conflict.
        let mut settled = ab.clone();
        settled.write(true, st(3, "c"));
        assert_eq!(settled.entries().len(), 1);
        assert_eq!(settled.resolve(|x, y| !*x && *y), Some(&true));
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent() {
        // Every order and grouping of a set of writes gives the same register.
        let writes = [
            Register::written(1, st(1, "a"), None),
            Register::written(2, st(2, "b"), Some(st(1, "a"))),
            Register::written(3, st(2, "c"), Some(st(1, "a"))),
            Register::written(4, st(3, "a"), Some(st(2, "b"))),
            Register::written(5, st(5, "d"), Some(st(4, "z"))),
        ];
        let mut reference = Register::default();
        for w in &writes {
            reference.merge(w);
        }
        let n = writes.len();
        let mut order: Vec<usize> = (0..n).collect();
        // All permutations (Heap's algorithm), each also merged twice.
        let mut c = vec![0; n];
        let check = |order: &[usize]| {
            let mut r = Register::default();
            for &i in order {
                r.merge(&writes[i]);
                r.merge(&writes[i]);
            }
            assert_eq!(r, reference, "order {order:?}");
        };
        check(&order);
        let mut i = 0;
        while i < n {
            if c[i] < i {
                if i % 2 == 0 {
                    order.swap(0, i);
                } else {
                    order.swap(c[i], i);
                }
                check(&order);
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
        // Grouping: merging two partial merges.
        let mut left = Register::default();
        left.merge(&writes[0]);
        left.merge(&writes[3]);
        let mut right = Register::default();
        right.merge(&writes[4]);
        right.merge(&writes[1]);
        right.merge(&writes[2]);
        left.merge(&right);
        assert_eq!(left, reference);
    }

    #[test]
    fn map_keys_merge_independently() {
        let mut a: RegisterMap<String, bool> = BTreeMap::new();
        a.insert(
            "carol".into(),
            Register::written(false, st(5, "a"), Some(st(1, "x"))),
        );
        let mut b: RegisterMap<String, bool> = BTreeMap::new();
        b.insert("bob".into(), Register::written(true, st(5, "b"), None));
        let mut m = a.clone();
        merge_map(&mut m, &b);
        assert_eq!(m["carol"].latest(), Some(&false));
        assert_eq!(m["bob"].latest(), Some(&true));
    }
}
