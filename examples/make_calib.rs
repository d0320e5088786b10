//! Makes calibration data for an image model from the MNIST held-out fixture: digits scaled
//! (nearest neighbour) to the model's input size, grey in every channel, no labels (so the
//! metric is top-1 agreement with the original model). For benchmarks on real models that ship
//! without data. Usage: make_calib MODEL.onnx OUT.npz [N] [NAME=DIMS]
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = nnzip::onnx::Model::load(&args[1]).expect("model");
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200);
    let given: Vec<(String, Vec<usize>)> = args
        .get(4)
        .map(|s| vec![nnzip::runtime::inputs::parse_shape_arg(s).unwrap()])
        .unwrap_or_default();
    let vi = &model.inputs()[0];
    let dims = nnzip::runtime::inputs::resolve_shapes(std::slice::from_ref(vi), &given)
        .unwrap()
        .remove(0);
    let (c, h, w) = (dims[1], dims[2], dims[3]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mnist_test.npz");
    let arrays = nnzip::npz::read_npz(&root).unwrap();
    let x = arrays
        .iter()
        .find(|(k, _)| k == "input")
        .unwrap()
        .1
        .to_f32()
        .unwrap();
    let mut out = Vec::with_capacity(n * c * h * w);
    for s in 0..n {
        let img = &x[s * 784..(s + 1) * 784];
        for _ in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    // centre the digit in a square of the shorter side, white paper, dark ink
                    let side = h.min(w);
                    let (oy, ox) = ((h - side) / 2, (w - side) / 2);
                    let v = if y >= oy && y < oy + side && xx >= ox && xx < ox + side {
                        img[((y - oy) * 28 / side) * 28 + (xx - ox) * 28 / side]
                    } else {
                        0.0
                    };
                    out.push((1.0 - v - 0.5) / 0.5);
                }
            }
        }
    }
    let t = nnzip::tensor::Tensor::from_f32(vec![n, c, h, w], &out).unwrap();
    nnzip::npz::write_npz(std::path::Path::new(&args[2]), &[(vi.name.clone(), t)]).unwrap();
    eprintln!("{n} samples of {c}x{h}x{w} -> {}", args[2]);
}
