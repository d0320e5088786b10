//! The command line's small promises (docs/cli.md): exit codes, outputs checked before the work,
//! nothing half-written, clear refusals, quiet ONNX Runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn missing_inputs_exit_3_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.nnc");
    let out_onnx = dir.path().join("x.onnx");
    for args in [
        vec!["decompress", s(&missing), "-o", s(&out_onnx)],
        vec!["codec", "info", s(&missing)],
        vec!["codec", "decode", s(&missing), "-o", "x.npz"],
    ] {
        let o = nnzip(&args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("missing.nnc"), "{}", stderr(&o));
    }
    assert!(!out_onnx.exists());
}

#[test]
fn unwritable_outputs_exit_5_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("cnn.onnx");
    let a_dir = dir.path().join("a_dir");
    std::fs::create_dir(&a_dir).unwrap();
    let nowhere = dir.path().join("no/such/dir/x.nnc");
    let good = dir.path().join("good.nnc");
    let bad_html = dir.path().join("no/such/dir/r.html");
    for args in [
        vec!["compress", s(&model), "-o", s(&nowhere)],
        vec!["compress", s(&model), "-o", s(&a_dir)],
        vec![
            "compress",
            s(&model),
            "-o",
            s(&good),
            "--html",
            s(&bad_html),
        ],
    ] {
        let o = nnzip(&args);
        assert_eq!(o.status.code(), Some(5), "{args:?}: {}", stderr(&o));
        // Refused before loading the model: no stage ran, so no stage line was printed.
        assert!(!stderr(&o).contains("] loading"), "{}", stderr(&o));
        assert!(stderr(&o).contains("cannot write"), "{}", stderr(&o));
    }
    // The failed --html run left no bitstream behind, and the directory is untouched.
    assert!(!good.exists());
    assert_eq!(std::fs::read_dir(&a_dir).unwrap().count(), 0);
    let npz = fixture("mnist_test.npz");
    let o = nnzip(&["codec", "encode", s(&npz), "-o", s(&nowhere)]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
}

/// `--shape` naming an input the model lacks, or contradicting its fixed dims, is refused by
/// every command that takes it, before any data is read (the calibration file here does not
/// exist, which would be exit 3) and with the model's inputs named.
#[test]
fn sizes_for_inputs_the_model_lacks_are_usage_errors_at_the_door() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("cnn.onnx");
    let missing_calib = dir.path().join("missing.npz");
    let out = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let (nnc, onnx, pruned) = (out("x.nnc"), out("x.onnx"), out("p.onnx"));
    let calib = s(&missing_calib);
    for shape in ["nope=1x3", "input=1x2x28x28"] {
        for args in [
            vec!["inspect", s(&model)],
            vec!["compress", s(&model), "-o", &nnc, "--calib", calib],
            vec!["simplify", s(&model), "-o", &onnx, "--calib", calib],
            vec!["prune", s(&model), "-o", &pruned, "--method", "magnitude"],
            vec!["prune", s(&model), "-o", &pruned, "--calib", calib],
            vec!["bench", s(&model), "--runs", "1"],
        ] {
            let mut args = args.clone();
            args.extend(["-q", "--shape", shape]);
            let o = nnzip(&args);
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
            let named = if shape.starts_with("nope") {
                e.contains("'nope'") && e.contains("inputs: input")
            } else {
                e.contains("'input'") && e.contains("batchx1x28x28")
            };
            assert!(named, "{args:?}: {e}");
            assert!(e.contains("hint: check --shape NAME=DIMS"), "{args:?}: {e}");
        }
    }
    for f in [&nnc, &onnx, &pruned] {
        assert!(!Path::new(f).exists(), "{f} written");
    }
}

#[test]
fn pruning_flags_without_prune_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.nnc");
    let model = fixture("cnn.onnx");
    for extra in [["--sparsity", "0.5"], ["--round-to", "8"], ["--norm", "l2"]] {
        let mut args = vec!["compress", s(&model), "-o", s(&out)];
        args.extend(extra);
        let o = nnzip(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("--prune"), "{}", stderr(&o));
    }
    assert!(!out.exists());
}

#[test]
fn wrong_kinds_of_input_say_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let o = nnzip(&["inspect", s(dir.path())]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    // An NNC bitstream given where a model is expected points to the commands that read it.
    let nnc = dir.path().join("m.nnc");
    let o = nnzip(&["compress", s(&fixture("mlp.onnx")), "-o", s(&nnc), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = nnzip(&["inspect", s(&nnc)]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("nnzip codec info"), "{}", stderr(&o));
}

#[test]
fn calibration_arrays_of_the_wrong_kind_name_the_file_and_the_array() {
    let dir = tempfile::tempdir().unwrap();
    let (x, _) = held_out_batch("mnist_test.npz", 8);
    let wrong_dtype = dir.path().join("wrong_dtype.npz");
    let as_i64: Vec<i64> = x.to_f32().unwrap().iter().map(|v| *v as i64).collect();
    let t = nnzip::tensor::Tensor::from_i64(x.dims.clone(), &as_i64).unwrap();
    nnzip::npz::write_npz(&wrong_dtype, &[("input".to_string(), t)]).unwrap();
    let wrong_len = dir.path().join("wrong_len.npz");
    let short = nnzip::tensor::Tensor::from_f32(vec![8, 100], &vec![0.5; 800]).unwrap();
    nnzip::npz::write_npz(&wrong_len, &[("input".to_string(), short)]).unwrap();
    let out = dir.path().join("x.nnc");
    for (file, what) in [(&wrong_dtype, "int64"), (&wrong_len, "[8, 100]")] {
        let o = nnzip(&[
            "compress",
            s(&fixture("cnn.onnx")),
            "-o",
            s(&out),
            "--calib",
            s(file),
        ]);
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        let e = stderr(&o);
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            e.contains(name) && e.contains("'input'") && e.contains(what),
            "{e}"
        );
    }
    assert!(!out.exists());
}

#[cfg(unix)]
#[test]
fn outputs_get_the_usual_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let nnc = dir.path().join("m.nnc");
    let back = dir.path().join("m.onnx");
    // The umask of the test process is the one the children inherit; compare against it.
    let umask = {
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"").unwrap();
        0o666 & !std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777
    };
    let o = nnzip(&["compress", s(&fixture("mlp.onnx")), "-o", s(&nnc), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = nnzip(&["decompress", s(&nnc), "-o", s(&back)]);
    assert!(o.status.success(), "{}", stderr(&o));
    for p in [&nnc, &back] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask, "{}: {mode:o}", p.display());
    }
}

/// A model whose declared output shape is wrong: ONNX Runtime warns about it (as it flooded
/// stderr with `VerifyOutputSizes` on a real OCR model).
fn misdeclared_model(dir: &Path) -> std::path::PathBuf {
    let mut m = tiny_linear();
    m.graph.as_mut().unwrap().output[0] = value_info("y", &[1, 7]);
    let p = dir.join("misdeclared.onnx");
    write_proto(&p, &m);
    p
}

#[test]
fn onnx_runtime_warnings_only_with_verbose() {
    let dir = tempfile::tempdir().unwrap();
    let p = misdeclared_model(dir.path());
    let run = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nnzip"));
        c.env_remove("ORT_LOG")
            .args(["bench", s(&p), "--runs", "5", "-q"])
            .args(extra);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let quiet = run(&[]);
    assert!(!quiet.contains("W:onnxruntime"), "{quiet}");
    let verbose = run(&["-v"]);
    assert!(verbose.contains("W:onnxruntime"), "{verbose}");
}
