//! Scan orders (`scan_order`, clause 9.3.2.2): raster, or blocks of 8×8 .. 64×64 visited block
//! row by block row, blocks left to right, rows of a block top to bottom. A block row is the unit
//! of entry points. Row skipping works on "segments": the part of one tensor row inside a block.

use crate::ScanOrder;

/// Geometry of a tensor seen as a `height × width` matrix under a scan order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanGeometry {
    /// Rows (first dimension).
    pub height: usize,
    /// Elements per row.
    pub width: usize,
    block_w: usize,
    block_h: usize,
}

/// The part `x0..x1` of tensor row `row` that lies in one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Tensor row.
    pub row: usize,
    /// First column.
    pub x0: usize,
    /// One past the last column.
    pub x1: usize,
}

impl ScanGeometry {
    /// Geometry of `num` elements in rows of `width` under `scan_order`.
    pub fn new(num: usize, width: usize, scan_order: ScanOrder) -> Self {
        let width = width.max(1);
        let height = num / width;
        let (block_w, block_h) = match scan_order.block_size() {
            None => (width, height.max(1)),
            Some(b) => (b, b),
        };
        ScanGeometry {
            height,
            width,
            block_w,
            block_h,
        }
    }

    /// Rows per block row.
    pub fn block_height(&self) -> usize {
        self.block_h
    }

    /// Number of block rows (1 for raster scan; 0 for an empty tensor).
    pub fn num_block_rows(&self) -> usize {
        if self.height == 0 {
            0
        } else {
            self.height.div_ceil(self.block_h)
        }
    }

    /// Segments of block row `br` in scan order.
    pub fn segments(&self, br: usize) -> impl Iterator<Item = Segment> + '_ {
        let y0 = br * self.block_h;
        let y1 = (y0 + self.block_h).min(self.height);
        let bw = self.block_w;
        let w = self.width;
        (0..w.div_ceil(bw)).flat_map(move |bx| {
            let x0 = bx * bw;
            let x1 = (x0 + bw).min(w);
            (y0..y1).map(move |row| Segment { row, x0, x1 })
        })
    }

    /// All positions (row-major indices) in scan order.
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.num_block_rows()).flat_map(move |br| {
            self.segments(br)
                .flat_map(move |s| (s.x0..s.x1).map(move |x| s.row * self.width + x))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_scan_visits_every_position_once() {
        for &(h, w, so) in &[
            (20usize, 19usize, ScanOrder::Blocks8),
            (8, 8, ScanOrder::Blocks8),
            (3, 70, ScanOrder::Blocks16),
            (65, 1, ScanOrder::Blocks64),
            (0, 5, ScanOrder::Blocks8),
        ] {
            let g = ScanGeometry::new(h * w, w, so);
            let mut seen = vec![false; h * w];
            for p in g.positions() {
                assert!(!seen[p]);
                seen[p] = true;
            }
            assert!(seen.iter().all(|&s| s));
        }
        let g = ScanGeometry::new(16 * 10, 10, ScanOrder::Blocks8);
        let first: Vec<usize> = g.positions().take(10).collect();
        // The first block is 8 wide: row 0 columns 0..8, then row 1.
        assert_eq!(first, vec![0, 1, 2, 3, 4, 5, 6, 7, 10, 11]);
        assert_eq!(g.num_block_rows(), 2);
    }
}
