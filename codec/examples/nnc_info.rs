//! Prints the NNR units of NNC bitstreams: `cargo run -p nnc-codec --example nnc_info -- FILE...`
// Developer tools: a bad argument or file ends the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn main() {
    for path in std::env::args().skip(1) {
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        println!("{path}: {} bytes", data.len());
        match nnc_codec::units(&data) {
            Ok(units) => {
                for u in units {
                    print!(
                        "  {:>8} {:<8} {:>8} B",
                        u.offset,
                        u.unit_type.name(),
                        u.size
                    );
                    if let Some(n) = &u.ndu {
                        print!(
                            "  {} {:?} {:?} qp={:?} dq={} cb={:?} scan={} eps={}",
                            n.name,
                            n.shape,
                            n.payload_type,
                            n.qp,
                            n.dq,
                            n.codebook_size,
                            n.scan_order,
                            n.entry_points
                        );
                    }
                    if let Some((s, c)) = u.formats {
                        print!("  storage={s} compression={c}");
                    }
                    println!();
                }
            }
            Err(e) => println!("  error: {e}"),
        }
    }
}
