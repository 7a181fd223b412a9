//! Byte ranges of one file written since its last fsync.
//!
//! Owned by a file's node in [`crate::state`]; `fsync` copies exactly these ranges (clipped to the
//! live length) into the durable copy. Invariant: ranges are sorted, disjoint and non-adjacent,
//! so the set stays small for append-heavy files; past [`MAX_RANGES`] it degrades to one
//! covering range, which is slower to sync but never wrong.

/// Above this many ranges the set collapses into one covering range.
const MAX_RANGES: usize = 256;

/// Sorted, disjoint, half-open byte ranges `[start, end)`.
#[derive(Debug, Default, Clone)]
pub struct Dirty {
    ranges: Vec<(u64, u64)>,
}

impl Dirty {
    /// Marks `[start, end)` as changed; empty ranges are ignored.
    pub fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // First range that could touch the new one (its end reaches `start`).
        let first = self.ranges.partition_point(|&(_, e)| e < start);
        let mut last = first;
        let (mut lo, mut hi) = (start, end);
        while last < self.ranges.len() && self.ranges[last].0 <= end {
            lo = lo.min(self.ranges[last].0);
            hi = hi.max(self.ranges[last].1);
            last += 1;
        }
        self.ranges.splice(first..last, [(lo, hi)]);
        if self.ranges.len() > MAX_RANGES {
            let lo = self.ranges[0].0;
            let hi = self.ranges[self.ranges.len() - 1].1;
            self.ranges = vec![(lo, hi)];
        }
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Forgets every range (after they were made durable).
    pub fn clear(&mut self) {
        self.ranges.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Dirty;

    #[test]
    fn merges_overlapping_and_adjacent_ranges() {
        let mut d = Dirty::default();
        d.add(10, 20);
        d.add(30, 40);
        d.add(0, 5);
        assert_eq!(d.ranges(), &[(0, 5), (10, 20), (30, 40)]);
        d.add(20, 30);
        assert_eq!(d.ranges(), &[(0, 5), (10, 40)]);
        d.add(3, 12);
        assert_eq!(d.ranges(), &[(0, 40)]);
        d.add(50, 50);
        assert_eq!(d.ranges(), &[(0, 40)]);
        d.clear();
        assert!(d.ranges().is_empty());
    }

    #[test]
    fn collapses_when_too_many() {
        let mut d = Dirty::default();
        for i in 0..=super::MAX_RANGES as u64 {
            d.add(i * 10, i * 10 + 1);
        }
        assert_eq!(d.ranges(), &[(0, super::MAX_RANGES as u64 * 10 + 1)]);
    }
}
