//! Reading back `f64` fields that may be NaN or infinite: serde_json writes those as `null`, and
//! a saved report must still load (`nnzip report`). Use on such fields with
//! `#[serde(deserialize_with = "crate::jsonf64::or_nan")]`.

use serde::{Deserialize, Deserializer};

/// A number, or NaN for `null`.
pub fn or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::or_nan")]
        x: f64,
    }

    #[test]
    fn null_reads_as_nan_and_numbers_as_themselves() {
        let t: T = serde_json::from_str(r#"{"x": null}"#).unwrap();
        assert!(t.x.is_nan());
        let t: T = serde_json::from_str(r#"{"x": 0.1}"#).unwrap();
        assert_eq!(t.x, 0.1);
    }
}
