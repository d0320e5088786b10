//! Work keys: the full sha256 over everything that decides an item's result, so equal keys
//! mean equal work and a changed model, option, calibration file or version redoes the item.

use std::io::Read;

use sha2::{Digest, Sha256};

/// The versions that enter every key.
pub fn versions() -> String {
    format!(
        "nnzip {} nnc-codec {}",
        env!("CARGO_PKG_VERSION"),
        nnc_codec::VERSION
    )
}

/// Streams `r` through sha256 (bounded memory); returns the hex digest and the byte count.
pub fn sha256_reader(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of one item: sha256 of the model bytes' digest, the canonical options, the
/// calibration bytes' digest and the versions, each length-prefixed so no two inputs collide by
/// concatenation.
pub fn work_key(model_sha: &str, canonical_options: &str, calib_sha: Option<&str>) -> String {
    let mut h = Sha256::new();
    for part in [
        "nnzip-batch-key/1",
        &versions(),
        model_sha,
        canonical_options,
        calib_sha.unwrap_or("-"),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

/// The key of an item whose inputs cannot be read: from their resolved locations (see
/// `store::resolve`), so a rerun keeps its failure until the inputs appear, and the runner and
/// `batch status` (which reads the resolved manifest) agree on it.
pub fn unreadable_key(model: &str, canonical_options: &str, calib: Option<&str>) -> String {
    work_key(&format!("unreadable:{model}"), canonical_options, calib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_full_digests_and_change_with_each_part() {
        let (m, n) = sha256_reader(&b"abc"[..]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            m,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let k = work_key(&m, "{}", None);
        assert_eq!(k.len(), 64);
        assert_ne!(k, work_key(&m, "{\"qp\":1}", None));
        assert_ne!(k, work_key(&m, "{}", Some(&m)));
        assert_ne!(k, work_key("00", "{}", None));
        assert_eq!(k, work_key(&m, "{}", None));
    }
}
