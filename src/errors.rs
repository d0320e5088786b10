//! What kind of failure an error is, so the command line maps it to an exit code without
//! knowing every library error type.

/// The class of a failure (docs/cli.md, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A mistake in how the job was asked for (exit 2).
    Usage,
    /// An input is missing, malformed or unsupported (exit 3).
    BadInput,
    /// ONNX Runtime is missing or failed (exit 4).
    Runtime,
    /// An output could not be written (exit 5).
    Write,
    /// The result failed verification; nothing was written (exit 6).
    Verification,
    /// A network, device or storage failure that may pass: retrying is safe (exit 75,
    /// EX_TEMPFAIL).
    Transient,
    /// A device answered but refused the login (exit 7).
    Refused,
    /// Stopped by Ctrl-C (exit 130).
    Interrupted,
    /// Anything else (exit 1).
    Other,
}

impl ErrorClass {
    /// A short stable name (for JSON records of failures).
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Usage => "usage",
            ErrorClass::BadInput => "bad_input",
            ErrorClass::Runtime => "runtime",
            ErrorClass::Write => "write",
            ErrorClass::Verification => "verification",
            ErrorClass::Transient => "transient",
            ErrorClass::Refused => "refused",
            ErrorClass::Interrupted => "interrupted",
            ErrorClass::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::batch::shard::ShardError as S;
    use crate::bench::BenchError as B;
    use crate::container::ContainerError;
    use crate::runtime::inputs::InputError as I;
    use crate::runtime::placement::PlacementError as Pl;
    use crate::runtime::RuntimeError;
    use crate::tensor::DType;

    /// Every library error that says what input, size or setting is missing. The matches make a
    /// new variant a compile error here until it is rendered below.
    fn rendered() -> Vec<String> {
        let s = |x: &str| x.to_string();
        let inputs = [
            I::UnresolvedDims {
                input: s("x"),
                dims: s("h, w"),
                example: s("1x3x640x640"),
            },
            I::BadShapeArg(s("x=1xq")),
            I::UnknownInput {
                name: s("y"),
                inputs: s("x"),
            },
            I::ShapeConflict {
                name: s("x"),
                given: s("1x4"),
                fixed: s("1x3"),
            },
            I::UnknownRank(s("x")),
            I::UnsupportedType {
                name: s("x"),
                dtype: DType::Str,
            },
            I::NoRunnableSize {
                inputs: s("x"),
                symbols: s("h"),
            },
        ];
        let bench = [
            B::InputsDiffer {
                model: s("a.onnx"),
                other: s("b.onnx"),
                ours: s("x"),
                theirs: s("y"),
            },
            B::NoRuns,
        ];
        let shards = [
            S::NotIndexOfCount(s("3/3")),
            S::NotInteger {
                name: s("JOB_COMPLETION_INDEX"),
                value: s("a"),
            },
            S::CountMissing,
            S::SlurmMissing(s("SLURM_ARRAY_TASK_MIN")),
            S::NotContiguous {
                min: 1,
                max: 9,
                count: 3,
                step: 4,
            },
            S::CountDiffers { given: 4, slurm: 3 },
            S::NoScheduler,
        ];
        let mut out = Vec::new();
        for e in inputs {
            match e {
                I::UnresolvedDims { .. }
                | I::BadShapeArg(_)
                | I::UnknownInput { .. }
                | I::ShapeConflict { .. }
                | I::UnknownRank(_)
                | I::UnsupportedType { .. }
                | I::NoRunnableSize { .. }
                | I::Tensor(_) => out.push(e.to_string()),
            }
        }
        for e in bench {
            match e {
                B::InputsDiffer { .. } | B::NoRuns => out.push(e.to_string()),
                B::Onnx(_) | B::Runtime(_) | B::Input(_) | B::Npz(_) => {}
            }
        }
        for e in shards {
            out.push(crate::batch::BatchError::Shard(e).to_string());
        }
        out.push(
            Pl::Fallback {
                ep: s("cuda"),
                fell_back: 2,
                total: 9,
                ops: s("Resize"),
            }
            .to_string(),
        );
        let not_found = crate::runtime::locate_library(Some(std::path::Path::new("/nonexistent")));
        out.push(not_found.map(|_| ()).unwrap_err().to_string());
        out.push(
            RuntimeError::LibraryNotFound {
                searched: s(".ort"),
            }
            .to_string(),
        );
        out.push(ContainerError::NoTopology.to_string());
        out
    }

    #[test]
    fn library_errors_name_no_command_line_flag() {
        let all = rendered();
        assert!(all.len() >= 20, "{all:?}");
        for m in &all {
            assert!(!m.contains("--"), "a library error names a flag: {m}");
        }
        // What is missing is still said, with the typed data.
        assert!(
            all[0].contains("h, w") && all[0].contains("x=1x3x640x640"),
            "{}",
            all[0]
        );
    }
}
