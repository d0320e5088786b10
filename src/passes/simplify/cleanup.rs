//! Removes what inference does not need: `Identity` and `Dropout` nodes, nodes whose outputs
//! nothing reads, unused initializers and stale value_info.

use serde::{Deserialize, Serialize};

use crate::graph::editor::Editor;
use crate::graph::groups::label;
use crate::graph::ops::Op;
use crate::passes::{Pass, PassContext, PassDetails, PassError, PassReport, Preserves};

pub struct Cleanup;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CleanupDetails {
    pub bypassed: Vec<String>,
    pub nodes_removed: usize,
    pub initializers_removed: usize,
}

impl Pass for Cleanup {
    fn name(&self) -> &'static str {
        "cleanup"
    }

    fn preserves(&self) -> Preserves {
        Preserves::Outputs
    }

    fn run(&self, ed: &mut Editor, _ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        // Identity, and Dropout whose optional mask output nothing reads (the identity at
        // inference).
        let candidates: Vec<_> = {
            let a = ed.analysis();
            a.order()
                .iter()
                .copied()
                .filter(|&id| {
                    let (Some(n), Some(Op::Unary(_))) = (ed.node(id), a.valid_op(id)) else {
                        return false;
                    };
                    n.op_type == "Identity"
                        || (n.op_type == "Dropout"
                            && n.output.iter().skip(1).all(|o| {
                                o.is_empty() || a.consumers(o).is_empty() && !a.is_graph_output(o)
                            }))
                })
                .collect()
        };
        let mut bypassed = Vec::new();
        for id in candidates {
            let l = label(ed, id);
            if ed.bypass(id) {
                bypassed.push(l);
            }
        }
        let (nodes, inits) = ed.sweep();
        let changed = nodes + inits > 0;
        Ok(PassReport {
            pass: self.name().into(),
            preserves: self.preserves(),
            changed,
            notes: if changed {
                vec![format!(
                    "removed {nodes} node(s), {inits} unused initializer(s)"
                )]
            } else {
                vec![]
            },
            details: PassDetails::Cleanup(CleanupDetails {
                bypassed,
                nodes_removed: nodes,
                initializers_removed: inits,
            }),
        })
    }
}
