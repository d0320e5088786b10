//! The fleet manifest: JSON Lines, one model a line (`{"id", "model", "options"}`), with an
//! optional TOML defaults file merged under each line's options, key by key. Every mistake is
//! reported with its line; ids are unique and safe as folder and object names.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::options::ItemOptions;
use super::BatchError;

/// One model of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    /// A path (relative to the manifest's folder) or a URI (`s3://`, `gs://`, `az://`,
    /// `file://`).
    pub model: String,
    pub options: ItemOptions,
    /// The manifest line (1-based) the item came from.
    #[serde(skip)]
    pub line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    model: String,
    #[serde(default)]
    options: Map<String, Value>,
}

/// The defaults file: a TOML table of options (`max_drop = 1.0`, `[shape]` ...).
pub fn load_defaults(path: &Path) -> Result<Map<String, Value>, BatchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BatchError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| BatchError::Manifest {
        path: path.display().to_string(),
        line: 0,
        message: e.to_string(),
    })?;
    let v = serde_json::to_value(table).map_err(|e| BatchError::Manifest {
        path: path.display().to_string(),
        line: 0,
        message: e.to_string(),
    })?;
    let Value::Object(m) = v else {
        return Ok(Map::new());
    };
    // Checked on their own too, so a typo in the defaults is reported against the defaults.
    merge(&m, &Map::new()).map_err(|message| BatchError::Manifest {
        path: path.display().to_string(),
        line: 0,
        message,
    })?;
    Ok(m)
}

/// `line` over `defaults`, key by key (a line's `shape` replaces the defaults' whole map).
fn merge(defaults: &Map<String, Value>, line: &Map<String, Value>) -> Result<ItemOptions, String> {
    let mut m = defaults.clone();
    for (k, v) in line {
        m.insert(k.clone(), v.clone());
    }
    serde_json::from_value(Value::Object(m)).map_err(|e| format!("options: {e}"))
}

/// Whether an id can name a folder and an object: letters, digits, `.`, `_`, `-`, not
/// starting with a dot, at most 200 bytes.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a manifest's text (`path` names it in errors). Blank lines are skipped.
pub fn parse(
    path: &str,
    text: &str,
    defaults: &Map<String, Value>,
) -> Result<Vec<Item>, BatchError> {
    let err = |line: usize, message: String| BatchError::Manifest {
        path: path.to_string(),
        line,
        message,
    };
    let mut items = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(raw).map_err(|e| err(n, e.to_string()))?;
        if !valid_id(&l.id) {
            return Err(err(
                n,
                format!(
                    "id '{}' must be letters, digits, '.', '_' or '-' (not starting with '.')",
                    l.id
                ),
            ));
        }
        if let Some(first) = seen.insert(l.id.clone(), n) {
            return Err(err(n, format!("id '{}' is also on line {first}", l.id)));
        }
        if l.model.is_empty() {
            return Err(err(n, "model is empty".into()));
        }
        let options = merge(defaults, &l.options).map_err(|m| err(n, m))?;
        // Catch option values compress would refuse now, with the line, not mid-run.
        options
            .to_compress_options(options.calib.as_ref().map(|_| "calib".into()))
            .map_err(|e| err(n, format!("options: {e}")))?;
        items.push(Item {
            id: l.id,
            model: l.model,
            options,
            line: n,
        });
    }
    Ok(items)
}

/// One manifest line for an item (what `batch plan` prints): only options that differ from
/// `compress`'s defaults are spelled out.
pub fn line_of(item: &Item) -> String {
    let all = serde_json::to_value(&item.options).unwrap_or(Value::Null);
    let default = serde_json::to_value(ItemOptions::default()).unwrap_or(Value::Null);
    let mut options = Map::new();
    if let (Value::Object(a), Value::Object(d)) = (all, default) {
        for (k, v) in a {
            if d.get(&k) != Some(&v) {
                options.insert(k, v);
            }
        }
    }
    let mut m = Map::new();
    m.insert("id".into(), Value::String(item.id.clone()));
    m.insert("model".into(), Value::String(item.model.clone()));
    m.insert("options".into(), Value::Object(options));
    Value::Object(m).to_string()
}

/// An id for a model file: its stem with other characters replaced by `-`, made unique with a
/// `-2`, `-3` ... suffix against `taken`.
pub fn id_for(path: &Path, taken: &mut std::collections::HashSet<String>) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut base: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    base = base.trim_start_matches('.').chars().take(180).collect();
    if base.is_empty() {
        base = "model".into();
    }
    let mut id = base.clone();
    let mut k = 2;
    while !taken.insert(id.clone()) {
        id = format!("{base}-{k}");
        k += 1;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_line() {
        let text = "{\"id\": \"a\", \"model\": \"a.onnx\"}\n\n{\"id\": \"b\", \"model\": \"b.onnx\", \"options\": {\"max_dorp\": 1}}\n";
        match parse("m.jsonl", text, &Map::new()) {
            Err(BatchError::Manifest { line, message, .. }) => {
                assert_eq!(line, 3);
                assert!(message.contains("max_dorp"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let dup =
            "{\"id\": \"a\", \"model\": \"a.onnx\"}\n{\"id\": \"a\", \"model\": \"b.onnx\"}\n";
        assert!(matches!(
            parse("m", dup, &Map::new()),
            Err(BatchError::Manifest { line: 2, .. })
        ));
        let top = "{\"id\": \"a\", \"model\": \"a.onnx\", \"opts\": {}}\n";
        assert!(matches!(
            parse("m", top, &Map::new()),
            Err(BatchError::Manifest { line: 1, .. })
        ));
        let bad_id = "{\"id\": \"../x\", \"model\": \"a.onnx\"}\n";
        assert!(parse("m", bad_id, &Map::new()).is_err());
    }

    #[test]
    fn lines_override_defaults_key_by_key() {
        let mut d = Map::new();
        d.insert("qp".into(), Value::from(-30));
        d.insert("runs".into(), Value::from(0));
        let text = "{\"id\": \"a\", \"model\": \"a.onnx\", \"options\": {\"qp\": -40}}\n";
        let items = parse("m", text, &d).unwrap();
        assert_eq!(items[0].options.qp, -40);
        assert_eq!(items[0].options.runs, 0);
        assert_eq!(items[0].line, 1);
        let back = parse("m", &line_of(&items[0]), &Map::new()).unwrap();
        assert_eq!(back[0].options, items[0].options);
    }

    #[test]
    fn plan_ids_are_unique_and_valid() {
        let mut taken = Default::default();
        let a = id_for(Path::new("x/My Model.onnx"), &mut taken);
        let b = id_for(Path::new("y/My Model.onnx"), &mut taken);
        assert_eq!(a, "My-Model");
        assert_eq!(b, "My-Model-2");
        assert!(valid_id(&a) && valid_id(&b));
        assert!(valid_id(&id_for(Path::new(".hidden"), &mut taken)));
    }
}
