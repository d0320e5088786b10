//! Prints the channel groups of a model: `cargo run --example groups -- MODEL.onnx`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
fn main() {
    let path = std::env::args().nth(1).expect("usage: groups MODEL.onnx");
    let m = nnzip::onnx::Model::load(&path).unwrap();
    let ed = nnzip::graph::editor::Editor::new(m, Default::default());
    for g in nnzip::graph::groups::channel_groups(&ed) {
        println!(
            "{:40} {:4} ch  {:2} src  {:2} cons  {}",
            g.name,
            g.channels,
            g.sources.len(),
            g.consumers.len(),
            if g.prunable() {
                "prunable".to_string()
            } else {
                g.blocked.join("; ")
            }
        );
    }
}
