//! Prints the channel groups of a model (a development aid for the pruning analysis).
#![allow(clippy::unwrap_used)]
fn main() {
    let p = std::env::args().nth(1).expect("usage: groups MODEL");
    let m = nnzip::onnx::Model::load(&p).unwrap();
    let ix = nnzip::graph::index::GraphIndex::new(&m);
    let shapes = nnzip::inspect::mac_shapes(&m, &[]).unwrap();
    let s = nnzip::graph::shapes::infer(&m, &shapes);
    for g in nnzip::graph::groups::channel_groups(&m, &ix, &s) {
        println!(
            "{} ch={} sources={:?} consumers={:?} blocked={:?}",
            g.name, g.channels, g.sources, g.consumers, g.blocked
        );
        for p in &g.params {
            println!("    {:?} {} {:?}", p.role, p.name, p.place);
        }
    }
}
