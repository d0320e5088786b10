//! Copies an .npz without its `labels` array (calibration data whose metric is then top-1
//! agreement with the original model). Usage: strip_labels IN.npz OUT.npz
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arrays = nnzip::npz::read_npz(std::path::Path::new(&a[1])).expect("input .npz");
    let kept: Vec<_> = arrays.into_iter().filter(|(n, _)| n != "labels").collect();
    nnzip::npz::write_npz(std::path::Path::new(&a[2]), &kept).expect("output .npz");
}
