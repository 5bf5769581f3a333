//! Answers of hot reads (a manifest by tag, a tag list, a blob's link), remembered until the
//! next commit, so a repeated GET or HEAD is served on the async thread without a trip to the
//! blocking pool (which cost more CPU than the read itself: two thread wake-ups).
//!
//! Every commit bumps a generation (`Shared::commits`) before anyone is answered; an answer
//! is remembered with the generation read *before* its read transaction began, and is used
//! only while the generation is unchanged. So a remembered answer is never older than the
//! last acknowledged write, which is exactly what a read transaction begun now would see.
//! It holds answers of one generation only, the newest it has been given: a commit makes every
//! older answer useless, so the first answer of a new generation empties it (otherwise a burst
//! of pushes, each commit a generation, left megabytes of dead answers in the process until
//! the budget was reached). Bounded in bytes as well; when full it is simply emptied.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Bytes of remembered answers (keys included) before the memo is emptied.
const BUDGET: usize = 4 << 20;
/// An answer bigger than this (a large manifest) is not remembered.
const MAX_ENTRY: usize = 64 << 10;

/// An answer's weight (as counted against `BUDGET`) and the answer.
type Entry = (usize, Arc<dyn Any + Send + Sync>);

#[derive(Default)]
pub(super) struct Memo {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Entry>,
    bytes: usize,
    /// The generation of every entry in `map`.
    generation: u64,
}

impl Memo {
    pub(super) fn get<V: Clone + 'static>(&self, key: &str, generation: u64) -> Option<V> {
        let e = self.inner.lock().expect("memo lock");
        match e.map.get(key) {
            Some((_, v)) if e.generation == generation => v.downcast_ref::<V>().cloned(),
            _ => None,
        }
    }

    pub(super) fn put<V: Send + Sync + 'static>(
        &self,
        key: String,
        generation: u64,
        weight: usize,
        value: V,
    ) {
        let weight = weight + key.len() + 64;
        if weight > MAX_ENTRY {
            return;
        }
        let mut e = self.inner.lock().expect("memo lock");
        if generation < e.generation {
            // Read before a commit that has since been answered: never servable.
            return;
        }
        if generation > e.generation {
            e.clear();
            e.generation = generation;
        }
        if let Some((w, _)) = e.map.remove(&key) {
            e.bytes -= w;
        }
        if e.bytes + weight > BUDGET {
            e.clear();
        }
        e.bytes += weight;
        e.map.insert(key, (weight, Arc::new(value)));
    }
}

impl Entries {
    /// Drops every entry, and the table too when it had grown: its size was set by a burst
    /// that is over.
    fn clear(&mut self) {
        if self.map.capacity() > 1024 {
            self.map = HashMap::new();
        } else {
            self.map.clear();
        }
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_used_only_in_its_generation_and_the_memo_stays_bounded() {
        let m = Memo::default();
        m.put("k".into(), 1, 10, 7u32);
        assert_eq!(m.get::<u32>("k", 1), Some(7));
        assert_eq!(m.get::<u32>("k", 2), None);
        assert_eq!(m.get::<u64>("k", 1), None);
        m.put("big".into(), 1, MAX_ENTRY, 1u32);
        assert_eq!(m.get::<u32>("big", 1), None);
        for i in 0..BUDGET / 1000 + 10 {
            m.put(format!("{i}"), 1, 900, i);
        }
        assert!(m.inner.lock().unwrap().bytes <= BUDGET);
        // A newer generation's first answer drops the older ones; an older one is not kept.
        m.put("new".into(), 2, 10, 1u32);
        assert_eq!(m.inner.lock().unwrap().map.len(), 1);
        m.put("late".into(), 1, 10, 1u32);
        assert_eq!(m.get::<u32>("late", 1), None);
        assert_eq!(m.get::<u32>("new", 2), Some(1));
    }
}
