//! Removes what inference does not need: `Identity` and `Dropout` nodes, nodes whose outputs
//! nothing reads, unused initializers and stale value_info.

use crate::graph::edit::{bypass, remove_unused};
use crate::graph::index::node_label;
use crate::onnx::Model;
use crate::passes::{Pass, PassContext, PassError, PassReport, Preserves};

pub struct Cleanup;

impl Pass for Cleanup {
    fn name(&self) -> &'static str {
        "cleanup"
    }

    fn preserves(&self) -> Preserves {
        Preserves::Outputs
    }

    fn run(&self, model: &mut Model, _ctx: &PassContext<'_>) -> Result<PassReport, PassError> {
        let mut bypassed = Vec::new();
        for i in 0..model.graph().node.len() {
            let n = &model.graph().node[i];
            // Dropout is the identity at inference (its optional mask output must be unused).
            let identity = n.op_type == "Identity"
                || (n.op_type == "Dropout"
                    && n.output.iter().skip(1).all(|o| {
                        o.is_empty() || !crate::graph::edit::used_names(model.graph()).contains(o)
                    }));
            if identity && n.domain.is_empty() {
                let label = node_label(n, i);
                if bypass(model, i) {
                    bypassed.push(label);
                }
            }
        }
        let (nodes, inits) = remove_unused(model);
        Ok(PassReport {
            pass: self.name().into(),
            changed: nodes + inits > 0,
            details: serde_json::json!({ "bypassed": bypassed, "nodes_removed": nodes, "initializers_removed": inits }),
            notes: if nodes + inits > 0 {
                vec![format!(
                    "removed {nodes} node(s), {inits} unused initializer(s)"
                )]
            } else {
                vec![]
            },
        })
    }
}
