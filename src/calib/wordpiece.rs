//! BERT-style WordPiece tokenization from a HuggingFace `tokenizer.json`, for calibration data of
//! token-input models. It implements the pipeline such files describe for BERT-family models
//! (MiniLM, BERT, DistilBERT...): the `BertNormalizer` (clean text, spaces around CJK
//! characters, accents stripped, lower case), the `BertPreTokenizer` (whitespace, punctuation as
//! its own token), `WordPiece` (greedy longest match, `##` continuations, `[UNK]` for
//! unmatched words) and the `[CLS] … [SEP]` template. The `tokenizers` crate does all of this and
//! more, but pulls a regex engine (Oniguruma, a C library, by default) and the whole
//! HuggingFace stack into nnzip's build for one family of models; other model types in the file
//! are refused by name rather than tokenized wrongly.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

/// A tokenizer file nnzip cannot read or use.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TokenizerError {
    pub path: std::path::PathBuf,
    pub reason: String,
}

/// A WordPiece vocabulary and the normalizer settings of one `tokenizer.json`.
#[derive(Debug, Clone)]
pub struct WordPiece {
    vocab: HashMap<String, i64>,
    unk: i64,
    cls: i64,
    sep: i64,
    pub pad: i64,
    prefix: String,
    max_chars: usize,
    lowercase: bool,
    strip_accents: bool,
    chinese_chars: bool,
}

fn bad(path: &Path, reason: impl Into<String>) -> TokenizerError {
    TokenizerError {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl WordPiece {
    pub fn load(path: &Path) -> Result<WordPiece, TokenizerError> {
        let text = std::fs::read_to_string(path).map_err(|e| bad(path, e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(path, e.to_string()))?;
        WordPiece::from_json(path, &v)
    }

    fn from_json(path: &Path, v: &Value) -> Result<WordPiece, TokenizerError> {
        let model = &v["model"];
        let ty = model["type"].as_str().unwrap_or("");
        if ty != "WordPiece" {
            return Err(bad(
                path,
                format!("model type '{ty}': only WordPiece (BERT-family) tokenizers are supported"),
            ));
        }
        let vocab: HashMap<String, i64> = model["vocab"]
            .as_object()
            .ok_or_else(|| bad(path, "model.vocab is not a map"))?
            .iter()
            .filter_map(|(k, id)| Some((k.clone(), id.as_i64()?)))
            .collect();
        let id = |tok: &str| -> Result<i64, TokenizerError> {
            vocab
                .get(tok)
                .copied()
                .ok_or_else(|| bad(path, format!("the vocabulary has no {tok}")))
        };
        let unk_tok = model["unk_token"].as_str().unwrap_or("[UNK]");
        let norm = &v["normalizer"];
        let lowercase = norm["lowercase"].as_bool().unwrap_or(true);
        Ok(WordPiece {
            unk: id(unk_tok)?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            pad: v["padding"]["pad_id"]
                .as_i64()
                .or_else(|| vocab.get("[PAD]").copied())
                .unwrap_or(0),
            prefix: model["continuing_subword_prefix"]
                .as_str()
                .unwrap_or("##")
                .to_string(),
            max_chars: model["max_input_chars_per_word"].as_u64().unwrap_or(100) as usize,
            lowercase,
            // HuggingFace: unset strip_accents follows lowercase.
            strip_accents: norm["strip_accents"].as_bool().unwrap_or(lowercase),
            chinese_chars: norm["handle_chinese_chars"].as_bool().unwrap_or(true),
            vocab,
        })
    }

    fn normalize(&self, s: &str) -> String {
        use unicode_normalization::UnicodeNormalization;
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if c == '\0' || c == '\u{fffd}' || (c.is_control() && !c.is_whitespace()) {
                continue;
            }
            if c.is_whitespace() {
                out.push(' ');
            } else if self.chinese_chars && is_cjk(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
            } else {
                out.push(c);
            }
        }
        if self.strip_accents {
            out = out
                .nfd()
                .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
                .collect();
        }
        if self.lowercase {
            out = out.to_lowercase();
        }
        out
    }

    /// Words and punctuation marks, in order.
    fn pre_tokenize(s: &str) -> Vec<String> {
        let mut words = Vec::new();
        for w in s.split_whitespace() {
            let mut cur = String::new();
            for c in w.chars() {
                if is_punctuation(c) {
                    if !cur.is_empty() {
                        words.push(std::mem::take(&mut cur));
                    }
                    words.push(c.to_string());
                } else {
                    cur.push(c);
                }
            }
            if !cur.is_empty() {
                words.push(cur);
            }
        }
        words
    }

    fn word_pieces(&self, word: &str, out: &mut Vec<i64>) {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > self.max_chars {
            out.push(self.unk);
            return;
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while end > start {
                let mut sub: String = chars[start..end].iter().collect();
                if start > 0 {
                    sub = format!("{}{sub}", self.prefix);
                }
                if let Some(&id) = self.vocab.get(&sub) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => pieces.push(id),
                None => {
                    out.push(self.unk);
                    return;
                }
            }
            start = end;
        }
        out.extend(pieces);
    }

    /// `[CLS] tokens [SEP]`, truncated to `len` ids, then padded: (ids, attention mask).
    pub fn encode(&self, text: &str, len: usize) -> (Vec<i64>, Vec<i64>) {
        let mut ids = vec![self.cls];
        for w in Self::pre_tokenize(&self.normalize(text)) {
            self.word_pieces(&w, &mut ids);
        }
        ids.truncate(len.saturating_sub(1).max(1));
        ids.push(self.sep);
        ids.truncate(len);
        let mut mask = vec![1i64; ids.len()];
        ids.resize(len, self.pad);
        mask.resize(len, 0);
        (ids, mask)
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// ASCII punctuation and symbols (as BERT counts them) and the common Unicode punctuation
/// blocks (general, CJK, full-width).
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c as u32, 0x2000..=0x206F | 0x3000..=0x303F | 0xFF01..=0xFF0F | 0xFF1A..=0xFF20 | 0xFF3B..=0xFF40 | 0xFF5B..=0xFF65 | 0x00A1..=0x00BF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordPiece {
        let v: Value = serde_json::json!({
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100,
                "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "the": 4, "cat": 5,
                          "un": 6, "##able": 7, ",": 8, "cafe": 9, "中": 10}},
            "normalizer": {"type": "BertNormalizer", "lowercase": true}
        });
        WordPiece::from_json(Path::new("t.json"), &v).unwrap()
    }

    #[test]
    fn bert_pipeline() {
        let t = tiny();
        let (ids, mask) = t.encode("The CAT, unable Café中 dog", 12);
        assert_eq!(ids, vec![2, 4, 5, 8, 6, 7, 9, 10, 1, 3, 0, 0]);
        assert_eq!(mask, vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
        let (ids, _) = t.encode("the cat the cat", 4);
        assert_eq!(ids, vec![2, 4, 5, 3]);
    }
}
