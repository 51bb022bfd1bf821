//! One process's live goroutines by goid, on the per-goroutine event path.
//!
//! A process hands out goids in increasing order (16 at a time per P), so
//! the goroutines a churn creates and ends are a run of recent goids. An
//! array indexed by the goid's low bits holds them without hashing; a
//! goroutine still alive when a goid one lap newer takes its place (a
//! long-lived one) moves to a hash map. The array grows (up to
//! `MAX_SLOTS`) while goroutines keep exiting from the map: the run of
//! goids alive at once is longer than it.

use rustc_hash::FxHashMap;

/// Slots to start with: 8 KiB per process with 24-byte values.
const MIN_SLOTS: usize = 256;
/// Slots at most: the array stops growing at 512 KiB per process.
const MAX_SLOTS: usize = 1 << 14;

#[derive(Clone, Copy, Default)]
struct Slot<V> {
    /// 0: free (no goroutine the runtime creates has goid 0; one that
    /// did would go to the map).
    goid: u64,
    v: V,
}

pub(super) struct LiveTable<V> {
    /// A power of two long.
    slots: Vec<Slot<V>>,
    moved: FxHashMap<u64, V>,
    /// No goid above this was ever moved to the map: a creation above it
    /// (every one, but for a duplicate) need not look there.
    moved_max: u64,
    len: usize,
    /// Exits found in the map since the array last grew.
    exits_moved: usize,
}

impl<V: Copy + Default> Default for LiveTable<V> {
    fn default() -> Self {
        LiveTable {
            slots: vec![Slot::default(); MIN_SLOTS],
            moved: FxHashMap::default(),
            moved_max: 0,
            len: 0,
            exits_moved: 0,
        }
    }
}

impl<V: Copy + Default> LiveTable<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    fn index(&self, goid: u64) -> usize {
        goid as usize & (self.slots.len() - 1)
    }

    /// Enters `goid`; returns what it replaced if it was there already.
    pub fn insert(&mut self, goid: u64, v: V) -> Option<V> {
        let old = if goid <= self.moved_max {
            self.moved.remove(&goid)
        } else {
            None
        };
        if goid == 0 {
            self.moved_max = self.moved_max.max(goid);
            let old = self.moved.insert(goid, v).or(old);
            self.len += usize::from(old.is_none());
            return old;
        }
        let i = self.index(goid);
        let s = self.slots[i];
        let old = if s.goid == goid {
            Some(s.v)
        } else {
            if s.goid != 0 {
                self.move_out(s);
            }
            old
        };
        self.slots[i] = Slot { goid, v };
        self.len += usize::from(old.is_none());
        old
    }

    fn move_out(&mut self, s: Slot<V>) {
        self.moved_max = self.moved_max.max(s.goid);
        self.moved.insert(s.goid, s.v);
    }

    /// Takes `goid` out.
    pub fn remove(&mut self, goid: u64) -> Option<V> {
        let i = self.index(goid);
        let s = self.slots[i];
        let v = if s.goid == goid && goid != 0 {
            self.slots[i].goid = 0;
            Some(s.v)
        } else if self.moved.is_empty() {
            None
        } else {
            let v = self.moved.remove(&goid);
            if v.is_some() {
                self.exits_moved += 1;
                if self.exits_moved > self.slots.len() / 4 && self.slots.len() < MAX_SLOTS {
                    self.grow();
                }
            }
            v
        };
        self.len -= usize::from(v.is_some());
        v
    }

    /// Doubles the array, placing its goroutines anew (those that still
    /// collide go to the map).
    fn grow(&mut self) {
        let doubled = vec![Slot::default(); self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        self.exits_moved = 0;
        for s in old.into_iter().filter(|s| s.goid != 0) {
            let i = self.index(s.goid);
            let t = self.slots[i];
            // Keep the newer one in the array.
            if t.goid == 0 || t.goid < s.goid {
                if t.goid != 0 {
                    self.move_out(t);
                }
                self.slots[i] = s;
            } else {
                self.move_out(s);
            }
        }
    }

    pub fn contains_key(&self, goid: u64) -> bool {
        (goid != 0 && self.slots[self.index(goid)].goid == goid) || self.moved.contains_key(&goid)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.slots
            .iter()
            .filter(|s| s.goid != 0)
            .map(|s| &s.v)
            .chain(self.moved.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A small deterministic generator (xorshift), for the model test.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn behaves_as_a_map_under_churn_long_lives_duplicates_and_odd_goids() {
        let mut t = LiveTable::<u64>::default();
        let mut m = HashMap::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let mut next = 1u64;
        let mut alive: Vec<u64> = Vec::new();
        for step in 0..400_000u64 {
            let r = rng(&mut seed);
            match r % 16 {
                // Creations in goid order, now and then a jump ahead.
                0..=6 => {
                    if r.is_multiple_of(997) {
                        next += r % 100_000;
                    }
                    let goid = next;
                    next += 1;
                    assert_eq!(t.insert(goid, step), m.insert(goid, step));
                    alive.push(goid);
                }
                // Exits, mostly of recent goroutines, some of old ones.
                7..=13 if !alive.is_empty() => {
                    let back = if r.is_multiple_of(8) {
                        (r >> 8) as usize % alive.len()
                    } else {
                        (r >> 8) as usize % alive.len().min(64)
                    };
                    let goid = alive.swap_remove(alive.len() - 1 - back);
                    assert_eq!(t.remove(goid), m.remove(&goid), "goid {goid}");
                }
                // A duplicate creation, an exit never created, goid 0.
                14 if !alive.is_empty() => {
                    let goid = alive[(r >> 8) as usize % alive.len()];
                    assert_eq!(t.insert(goid, step), m.insert(goid, step));
                }
                15 => {
                    let goid = if r.is_multiple_of(3) { 0 } else { next + 5 };
                    assert_eq!(t.remove(goid), m.remove(&goid));
                    if goid == 0 && r.is_multiple_of(2) {
                        assert_eq!(t.insert(0, step), m.insert(0, step));
                        if !alive.contains(&0) {
                            alive.push(0);
                        }
                    }
                }
                _ => {}
            }
            assert_eq!(t.len(), m.len());
        }
        for (&g, v) in &m {
            assert!(t.contains_key(g));
            assert_eq!(t.remove(g), Some(*v));
        }
        assert_eq!(t.len(), 0);
        assert_eq!(t.values().count(), 0);
        // It grew for the old goroutines that kept exiting from the map.
        assert!(t.slots.len() > MIN_SLOTS);
    }

    #[test]
    fn values_are_every_live_goroutine_once() {
        let mut t = LiveTable::<u64>::default();
        for goid in 1..=5_000u64 {
            t.insert(goid, goid);
        }
        for goid in (1..=5_000u64).filter(|g| g % 3 == 0) {
            t.remove(goid);
        }
        let mut v: Vec<u64> = t.values().copied().collect();
        v.sort_unstable();
        let want: Vec<u64> = (1..=5_000u64).filter(|g| g % 3 != 0).collect();
        assert_eq!(v, want);
        assert_eq!(t.len(), want.len());
    }
}
