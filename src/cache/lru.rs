//! The store's LRU: entries in a slab of nodes linked from the most to the least recently
//! used, found through an open-addressed table of node indices. A store at its size drops its
//! oldest entry for every one it takes, so each miss makes one entry and evicts another; the
//! table is laid out for that:
//! - a slot is the entry's hash (high half) and node index in 64 bits, placed by that hash: a
//!   lookup or a removal reads one line of the table, and a removal shifts the slots after it
//!   back without reading their nodes (no tombstones to clean up later);
//! - the new entry takes the node the eviction has just read (no allocation per entry);
//! - the next entry to evict is known: its slot's line is fetched ahead, at this eviction.
//!
//! A map of boxed nodes allocates a node for each entry, frees one, cold, for each eviction,
//! and reads two lines of its table (control bytes, then the bucket) for each lookup.

/// A node's place in the slab.
type Index = u32;

/// No node: the end of a list.
const NIL: Index = Index::MAX;

/// Nodes per chunk: the slab grows a chunk at a time, and no node ever moves.
const CHUNK: usize = 1024;

/// The most entries an [`Lru`] holds (its indices are 32 bits). A store's entries count at
/// least 512 bytes each against its `max_size`, which no size setting puts over 1TiB: at
/// most 2^31 entries.
const MAX_ENTRIES: usize = NIL as usize;

/// A key that is a hash already (the store's keys are keyed hashes of the cache key).
pub trait Hashed: Eq {
    fn hash(&self) -> u64;
}

/// What an eviction reads first: the links and the key, in the node's first line.
#[repr(C)]
struct Node<K, V> {
    prev: Index,
    next: Index,
    key: K,
    /// `None` while the node is free (then linked through `next`).
    value: Option<V>,
}

/// See the module's doc.
pub struct Lru<K, V> {
    table: Table,
    chunks: Vec<Vec<Node<K, V>>>,
    /// The most recently used.
    head: Index,
    /// The least recently used.
    tail: Index,
    /// The free nodes, the last freed first.
    free: Index,
}

fn node<K, V>(chunks: &[Vec<Node<K, V>>], i: Index) -> &Node<K, V> {
    &chunks[i as usize / CHUNK][i as usize % CHUNK]
}

/// An empty slot (its index part is [`NIL`], which no node has).
const EMPTY: u64 = u64::MAX;

/// The table: slots of `hash >> 32 << 32 | index`, at most half full, each at or after
/// its home (its hash's high half, masked), with no empty slot in between.
struct Table {
    slots: Vec<u64>,
    mask: usize,
    len: usize,
}

fn high(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl Table {
    fn new() -> Self {
        Table {
            slots: vec![EMPTY; 16],
            mask: 15,
            len: 0,
        }
    }

    fn home(&self, high: u32) -> usize {
        high as usize & self.mask
    }

    /// The node under `hash` that `eq` accepts.
    fn find(&self, hash: u64, mut eq: impl FnMut(Index) -> bool) -> Option<Index> {
        let h = high(hash);
        let mut at = self.home(h);
        loop {
            let s = self.slots[at];
            if s == EMPTY {
                return None;
            }
            if high(s) == h && eq(s as Index) {
                return Some(s as Index);
            }
            at = (at + 1) & self.mask;
        }
    }

    /// Add node `i` under `hash` (which it is not under yet).
    fn insert(&mut self, hash: u64, i: Index) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        self.put(u64::from(high(hash)) << 32 | u64::from(i));
        self.len += 1;
    }

    fn put(&mut self, slot: u64) {
        let mut at = self.home(high(slot));
        while self.slots[at] != EMPTY {
            at = (at + 1) & self.mask;
        }
        self.slots[at] = slot;
    }

    fn grow(&mut self) {
        let bigger = vec![EMPTY; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, bigger);
        self.mask = self.slots.len() - 1;
        for s in old.into_iter().filter(|&s| s != EMPTY) {
            self.put(s);
        }
    }

    /// Remove node `i`, which is under `hash`: each slot after it moves back into the gap
    /// when that is not before its home.
    fn remove(&mut self, hash: u64, i: Index) {
        let want = u64::from(high(hash)) << 32 | u64::from(i);
        let mut hole = self.home(high(hash));
        loop {
            match self.slots[hole] {
                EMPTY => return,
                s if s == want => break,
                _ => hole = (hole + 1) & self.mask,
            }
        }
        let mut at = hole;
        loop {
            at = (at + 1) & self.mask;
            let s = self.slots[at];
            if s == EMPTY {
                break;
            }
            let from_home = at.wrapping_sub(self.home(high(s))) & self.mask;
            if from_home >= at.wrapping_sub(hole) & self.mask {
                self.slots[hole] = s;
                hole = at;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
    }

    /// Have the line where `hash`'s slots start fetched ahead of its use.
    fn prefetch(&self, hash: u64) {
        prefetch(&self.slots[self.home(high(hash))]);
    }
}

/// Ask the CPU to fetch `p`'s cache line ahead of a use.
#[inline]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing the program sees, and cannot fault.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((p as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl<K: Hashed, V> Lru<K, V> {
    pub fn new() -> Self {
        Lru {
            table: Table::new(),
            chunks: Vec::new(),
            head: NIL,
            tail: NIL,
            free: NIL,
        }
    }

    fn node(&self, i: Index) -> &Node<K, V> {
        node(&self.chunks, i)
    }

    fn node_mut(&mut self, i: Index) -> &mut Node<K, V> {
        &mut self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    #[inline]
    fn find(&self, key: &K) -> Option<Index> {
        let chunks = &self.chunks;
        self.table.find(key.hash(), |i| node(chunks, i).key == *key)
    }

    /// `key`'s value, its place in the order untouched.
    pub fn peek(&self, key: &K) -> Option<&V> {
        let i = self.find(key)?;
        self.node(i).value.as_ref()
    }

    /// As [`Lru::peek`], to change the value.
    pub fn peek_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.find(key)?;
        self.node_mut(i).value.as_mut()
    }

    /// `key`'s value, made the most recently used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        let i = self.find(key)?;
        self.promote(i);
        self.node(i).value.as_ref()
    }

    /// Make node `i` the most recently used (a hot key's hits find it so already).
    fn promote(&mut self, i: Index) {
        if i != self.head {
            self.unlink(i);
            self.link_front(i);
        }
    }

    /// Put `value` under `key` as the most recently used: the value it replaces.
    ///
    /// # Panics
    /// With [`MAX_ENTRIES`] entries held.
    pub fn push(&mut self, key: K, value: V) -> Option<V> {
        if let Some(i) = self.find(&key) {
            self.promote(i);
            return self.node_mut(i).value.replace(value);
        }
        let hash = key.hash();
        let i = self.place(key, value);
        self.table.insert(hash, i);
        self.link_front(i);
        None
    }

    /// Drop the least recently used entry: its value. The next one's slot is fetched
    /// ahead (its node, the one just unlinked from this, is read already).
    pub fn pop_lru(&mut self) -> Option<V> {
        if self.tail == NIL {
            return None;
        }
        let value = self.remove_at(self.tail);
        if self.tail != NIL {
            self.table.prefetch(self.node(self.tail).key.hash());
        }
        Some(value)
    }

    /// Drop `key`'s entry: its value.
    pub fn pop(&mut self, key: &K) -> Option<V> {
        let i = self.find(key)?;
        Some(self.remove_at(i))
    }

    /// Drop every entry `keep` says no to.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let mut i = self.head;
        while i != NIL {
            let n = self.node(i);
            let next = n.next;
            if !n.value.as_ref().is_some_and(&mut keep) {
                self.remove_at(i);
            }
            i = next;
        }
    }

    /// A node for `key` and `value`: the last one freed, or a new one.
    fn place(&mut self, key: K, value: V) -> Index {
        if self.free != NIL {
            let i = self.free;
            let n = self.node_mut(i);
            let next = n.next;
            (n.key, n.value) = (key, Some(value));
            self.free = next;
            return i;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            assert!((self.chunks.len() + 1) * CHUNK <= MAX_ENTRIES, "LRU full");
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let at = self.chunks.len() - 1;
        let chunk = &mut self.chunks[at];
        let i = (at * CHUNK + chunk.len()) as Index;
        chunk.push(Node {
            prev: NIL,
            next: NIL,
            key,
            value: Some(value),
        });
        i
    }

    fn remove_at(&mut self, i: Index) -> V {
        let hash = self.node(i).key.hash();
        self.table.remove(hash, i);
        self.unlink(i);
        let free = self.free;
        let n = self.node_mut(i);
        n.next = free;
        let value = n.value.take();
        self.free = i;
        value.expect("a linked node holds a value")
    }

    fn unlink(&mut self, i: Index) {
        let (prev, next) = {
            let n = self.node(i);
            (n.prev, n.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.node_mut(p).next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.node_mut(n).prev = prev,
        }
    }

    fn link_front(&mut self, i: Index) {
        let head = self.head;
        let n = self.node_mut(i);
        (n.prev, n.next) = (NIL, head);
        match head {
            NIL => self.tail = i,
            h => self.node_mut(h).prev = i,
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(PartialEq, Eq, Debug)]
    struct K(u64);

    /// Keys from this one on all hash to one home and one fingerprint: the table's probing
    /// and the key comparisons are exercised, not just the hash.
    const COLLIDING: u64 = 1 << 40;

    impl Hashed for K {
        fn hash(&self) -> u64 {
            match self.0 {
                k if k >= COLLIDING => k % 7,
                k => k.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            }
        }
    }

    /// The values from the most to the least recently used.
    fn order(l: &Lru<K, u64>) -> Vec<u64> {
        let mut out = Vec::new();
        let mut i = l.head;
        while i != NIL {
            out.push(*l.node(i).value.as_ref().unwrap());
            i = l.node(i).next;
        }
        let mut back = Vec::new();
        let mut i = l.tail;
        while i != NIL {
            back.push(*l.node(i).value.as_ref().unwrap());
            i = l.node(i).prev;
        }
        back.reverse();
        assert_eq!(out, back, "the links agree both ways");
        assert_eq!(out.len(), l.table.len, "every linked node is in the table");
        out
    }

    #[test]
    fn entries_leave_least_recently_used_first() {
        let mut l = Lru::new();
        let k = |n: u64| K(COLLIDING + n);
        for n in 0..5 {
            assert_eq!(l.push(k(n), n * 10), None);
        }
        assert_eq!(order(&l), [40, 30, 20, 10, 0]);
        assert_eq!(l.get(&k(1)), Some(&10));
        assert_eq!(l.peek(&k(3)), Some(&30), "a peek leaves the order");
        assert_eq!(order(&l), [10, 40, 30, 20, 0]);
        assert_eq!(l.pop_lru(), Some(0));
        assert_eq!(l.pop_lru(), Some(20));
        assert_eq!(l.push(k(4), 41), Some(40), "a push replaces and promotes");
        assert_eq!(order(&l), [41, 10, 30]);
        assert_eq!(l.pop(&k(10)), None);
        assert_eq!(l.pop(&k(1)), Some(10));
        *l.peek_mut(&k(3)).unwrap() = 31;
        assert_eq!(order(&l), [41, 31]);
        assert_eq!(
            (l.pop_lru(), l.pop_lru(), l.pop_lru()),
            (Some(31), Some(41), None)
        );
        assert!(order(&l).is_empty());
        assert_eq!(l.peek(&k(4)), None);
    }

    #[test]
    fn a_freed_node_takes_the_next_entry_and_the_slab_grows_by_chunks() {
        let mut l = Lru::new();
        let n = 3 * CHUNK as u64 + 5;
        for k in 0..n {
            l.push(K(k), k);
        }
        assert_eq!(l.chunks.len(), 4);
        assert_eq!(l.pop_lru(), Some(0));
        let freed = l.free;
        l.push(K(n), n);
        assert_eq!(l.find(&K(n)), Some(freed), "the evicted node is reused");
        assert_eq!(l.chunks.len(), 4);
        l.retain(|v| v % 2 == 0);
        let kept = order(&l);
        assert_eq!(kept.len() as u64, n / 2);
        assert!(kept.iter().all(|v| v % 2 == 0));
        for k in 0..=n {
            assert_eq!(l.peek(&K(k)).is_some(), k % 2 == 0 && k != 0, "{k}");
        }
        l.retain(|_| false);
        assert_eq!((l.table.len, l.head, l.tail), (0, NIL, NIL));
        for k in 0..n {
            l.push(K(k), k);
        }
        assert_eq!(l.chunks.len(), 4, "freed nodes are used before new ones");
        assert_eq!(order(&l).len() as u64, n);
    }

    /// Random pushes, uses, drops and evictions against a list kept in order by hand, with
    /// keys spread over the table and keys that all collide, through growth and wrap-around.
    #[test]
    fn it_keeps_the_order_a_plain_list_keeps() {
        for keys in [0..300, COLLIDING..COLLIDING + 40] {
            let mut rng = fastrand::Rng::with_seed(keys.start ^ 7);
            let mut l = Lru::new();
            let mut model: Vec<(u64, u64)> = Vec::new();
            for step in 0..20_000u64 {
                let key = rng.u64(keys.clone());
                let at = model.iter().position(|&(k, _)| k == key);
                match rng.u8(0..10) {
                    0..=3 => {
                        let old = at.map(|i| model.remove(i).1);
                        model.insert(0, (key, step));
                        assert_eq!(l.push(K(key), step), old);
                    }
                    4..=5 => {
                        let v = at.map(|i| model.remove(i));
                        if let Some(e) = v {
                            model.insert(0, e);
                        }
                        assert_eq!(l.get(&K(key)).copied(), v.map(|e| e.1));
                    }
                    6 => {
                        let v = at.map(|i| model.remove(i).1);
                        assert_eq!(l.pop(&K(key)), v);
                    }
                    7 => assert_eq!(l.pop_lru(), model.pop().map(|e| e.1)),
                    _ => assert_eq!(l.peek(&K(key)).copied(), at.map(|i| model[i].1)),
                }
            }
            let want: Vec<u64> = model.iter().map(|e| e.1).collect();
            assert_eq!(order(&l), want);
            for k in keys {
                let v = model.iter().find(|e| e.0 == k).map(|e| e.1);
                assert_eq!(l.peek(&K(k)).copied(), v, "{k}");
            }
        }
    }
}
