//! Hostile ONNX bytes through everything that reads a model without running it: the loader and
//! its validation, `inspect`, symbolic shape inference, MAC counting, channel analysis, and the
//! passes that need no ONNX Runtime (cleanup, BatchNorm folding, structured and magnitude
//! pruning). Any panic is a bug; errors are fine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nnzip::graph::editor::Editor;
use nnzip::passes::prune::{Filter, MagnitudePrune, Norm, StructuredPrune};
use nnzip::passes::simplify::{cleanup::Cleanup, fold_bn::FoldBatchNorm};
use nnzip::passes::{Pass, PassContext};

fuzz_target!(|data: &[u8]| {
    let Ok(model) = nnzip::onnx::Model::from_bytes(data) else {
        return;
    };
    let _ = nnzip::inspect::inspect(&model, std::path::Path::new("fuzz.onnx"), &[]);
    let dims = nnzip::inspect::mac_dims(&model, &[]).unwrap_or_default();
    let _ = nnzip::inspect::count_macs(&model, &dims);
    let mut ed = Editor::new(model, Default::default());
    let _ = nnzip::graph::groups::channel_groups(&ed);
    let ctx = PassContext::default();
    let _ = Cleanup.run(&mut ed, &ctx);
    let _ = FoldBatchNorm.run(&mut ed, &ctx);
    let structured = StructuredPrune {
        fraction: 0.5,
        global: false,
        norm: Norm::L1,
        round_to: 1,
        filter: Filter::default(),
    };
    let _ = structured.prune(&mut ed);
    let magnitude = MagnitudePrune {
        sparsity: 0.5,
        global: true,
        filter: Filter::default(),
    };
    let _ = magnitude.prune(&mut ed);
    let _ = nnzip::graph::groups::channel_groups(&ed);
});
