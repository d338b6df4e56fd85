//! Dynamic home address pools [RFC 2794 § 1, RFC 5944 § 3.6.1.2 (HoA 0.0.0.0)].
//!
//! A pool is a bitmap over an inclusive address range. Allocation always takes
//! the *lowest* free address and happens when a replicated command is
//! *applied*, never when it is proposed: every replica applies the same
//! commands in the same order, so every replica allocates the same address
//! without talking about it ([DESIGN.md § 4]).
//!
//! The pool does not know who holds an address. Idempotence for a NAI that
//! already holds one lives in the [`StateMachine`](crate::command::StateMachine),
//! which looks the NAI up in the binding table's NAI index before it asks
//! the pool; that avoids a second copy of every NAI here. So does address
//! affinity: for a NAI whose binding lapsed, the state machine first tries
//! to [`reserve`](AddressPool::reserve) the address the replay memory
//! remembers for it, and asks for the lowest free one only when that fails
//! (docs/decisions.md, "NAI address affinity"). The bitmap is
//! therefore derived state: a snapshot need not carry it, it is rebuilt from
//! the bindings.

use std::net::Ipv4Addr;

/// Pool failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every address is allocated (the engine replies code 130,
    /// "insufficient resources" [RFC 5944 § 3.4]).
    #[error("address pool exhausted")]
    Exhausted,
    /// The address is not in this pool.
    #[error("{0} is not in the pool")]
    OutOfRange(Ipv4Addr),
    /// The address is already allocated.
    #[error("{0} is already allocated")]
    InUse(Ipv4Addr),
}

/// A deterministic lowest-free-first address pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPool {
    first: u32,
    last: u32,
    /// Bit `i` set = `first + i` allocated.
    used: Vec<u64>,
    allocated: u32,
    /// Words below this index are all full: the search starts here.
    hint: usize,
}

impl AddressPool {
    /// A pool over `first..=last`; an inverted range gives an empty pool.
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Self {
        let (f, l) = (u32::from(first), u32::from(last));
        let size = if l >= f { u64::from(l - f) + 1 } else { 0 };
        let words = usize::try_from(size.div_ceil(64)).unwrap_or(0);
        Self {
            first: f,
            last: l,
            used: vec![0; words],
            allocated: 0,
            hint: 0,
        }
    }

    /// Number of addresses in the pool.
    pub fn size(&self) -> u64 {
        if self.last >= self.first {
            u64::from(self.last - self.first) + 1
        } else {
            0
        }
    }

    /// Number of allocated addresses.
    pub fn allocated(&self) -> u32 {
        self.allocated
    }

    /// Whether `a` is in the pool's range.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        self.index(a).is_some()
    }

    /// Whether `a` is allocated.
    pub fn is_allocated(&self, a: Ipv4Addr) -> bool {
        self.index(a).is_some_and(|i| self.bit(i))
    }

    fn index(&self, a: Ipv4Addr) -> Option<u64> {
        let a = u32::from(a);
        (self.last >= self.first && a >= self.first && a <= self.last)
            .then(|| u64::from(a - self.first))
    }

    fn bit(&self, i: u64) -> bool {
        let (w, b) = split(i);
        self.used.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    /// Allocates the lowest free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, PoolError> {
        let size = self.size();
        for w in self.hint..self.used.len() {
            let word = self.used.get(w).copied().unwrap_or(u64::MAX);
            if word == u64::MAX {
                continue;
            }
            let b = (!word).trailing_zeros();
            let i = (w as u64) * 64 + u64::from(b);
            if i >= size {
                break;
            }
            self.hint = w;
            let addr = Ipv4Addr::from(self.first + i as u32);
            self.set(i, true);
            return Ok(addr);
        }
        self.hint = self.used.len();
        Err(PoolError::Exhausted)
    }

    /// Marks a specific address allocated (an MN asking again for the
    /// address it was given, or a snapshot being restored).
    pub fn reserve(&mut self, a: Ipv4Addr) -> Result<(), PoolError> {
        let i = self.index(a).ok_or(PoolError::OutOfRange(a))?;
        if self.bit(i) {
            return Err(PoolError::InUse(a));
        }
        self.set(i, true);
        Ok(())
    }

    /// Returns `a` to the pool; false if it was not allocated.
    pub fn release(&mut self, a: Ipv4Addr) -> bool {
        match self.index(a) {
            Some(i) if self.bit(i) => {
                self.set(i, false);
                true
            }
            _ => false,
        }
    }

    /// Frees every address.
    pub fn clear(&mut self) {
        self.used.iter_mut().for_each(|w| *w = 0);
        self.allocated = 0;
        self.hint = 0;
    }

    fn set(&mut self, i: u64, on: bool) {
        let (w, b) = split(i);
        if let Some(word) = self.used.get_mut(w) {
            if on {
                *word |= 1 << b;
                self.allocated += 1;
            } else {
                *word &= !(1 << b);
                self.allocated -= 1;
                self.hint = self.hint.min(w);
            }
        }
    }
}

fn split(i: u64) -> (usize, u32) {
    (
        usize::try_from(i / 64).unwrap_or(usize::MAX),
        (i % 64) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, last)
    }

    #[test]
    fn lowest_first_and_exhaustion() {
        let mut p = AddressPool::new(a(10), a(12));
        assert_eq!(p.size(), 3);
        assert_eq!(p.allocate(), Ok(a(10)));
        assert_eq!(p.allocate(), Ok(a(11)));
        assert_eq!(p.allocate(), Ok(a(12)));
        assert_eq!(p.allocate(), Err(PoolError::Exhausted));
        assert_eq!(p.allocated(), 3);
        assert!(p.release(a(11)));
        assert!(!p.release(a(11)), "double release is a no-op");
        assert_eq!(p.allocate(), Ok(a(11)), "lowest free is reused");
        assert_eq!(p.allocate(), Err(PoolError::Exhausted));
    }

    #[test]
    fn deterministic_across_replicas() {
        // Two replicas applying the same sequence of operations end equal.
        let ops: Vec<Option<u8>> = vec![None, None, None, Some(1), None, Some(0), None, None];
        let run = || {
            let mut p = AddressPool::new(a(1), a(200));
            let mut got = Vec::new();
            for op in &ops {
                match op {
                    None => got.push(p.allocate().expect("free")),
                    Some(i) => {
                        let x = got[usize::from(*i)];
                        assert!(p.release(x));
                    }
                }
            }
            (p, got)
        };
        let (p1, g1) = run();
        let (p2, g2) = run();
        assert_eq!(g1, g2);
        assert_eq!(p1, p2);
        assert_eq!(g1, vec![a(1), a(2), a(3), a(2), a(1), a(4)]);
    }

    #[test]
    fn crosses_word_boundaries() {
        let mut p = AddressPool::new(Ipv4Addr::new(198, 19, 0, 0), Ipv4Addr::new(198, 19, 0, 199));
        for i in 0..200u32 {
            assert_eq!(
                p.allocate(),
                Ok(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i))
            );
        }
        assert_eq!(p.allocate(), Err(PoolError::Exhausted));
        assert!(p.release(Ipv4Addr::new(198, 19, 0, 70)));
        assert_eq!(p.allocate(), Ok(Ipv4Addr::new(198, 19, 0, 70)));
    }

    #[test]
    fn reserve_and_range() {
        let mut p = AddressPool::new(a(10), a(20));
        assert_eq!(p.reserve(a(10)), Ok(()));
        assert_eq!(p.reserve(a(10)), Err(PoolError::InUse(a(10))));
        assert_eq!(p.reserve(a(9)), Err(PoolError::OutOfRange(a(9))));
        assert!(!p.contains(a(21)));
        assert!(p.is_allocated(a(10)));
        assert_eq!(p.allocate(), Ok(a(11)));
        p.clear();
        assert_eq!(p.allocated(), 0);
        assert_eq!(p.allocate(), Ok(a(10)));
        let mut empty = AddressPool::new(a(20), a(10));
        assert_eq!(empty.size(), 0);
        assert_eq!(empty.allocate(), Err(PoolError::Exhausted));
    }
}
