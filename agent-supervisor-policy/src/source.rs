//! Policy source text and positions in it.
//!
//! toml reports byte spans; users want `file:line:column`. A [`Source`] keeps the text and
//! its line starts, a [`Pos`] is a span in one source, and [`Str`] is a string value from a
//! policy together with where it was written, so that errors found long after parsing (while
//! expanding variables of a merged `extends` chain, say) still point at the right file,
//! line and column.

use std::ops::Range;
use std::sync::Arc;

use crate::{Origin, OriginDisplay, PolicyError};

/// One policy text: a file, a preset or the text given to [`crate::Policy::parse`].
#[derive(Debug)]
pub(crate) struct Source {
    /// As shown in errors: the file name, or `preset:<name>`.
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Arc<Source> {
        let text = text.into();
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Arc::new(Source {
            name: name.into(),
            text,
            line_starts,
        })
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn origin(&self, offset: usize) -> Origin {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let column = self.text[self.line_starts[line]..offset].chars().count() + 1;
        Origin {
            file: self.name.clone(),
            line: line as u32 + 1,
            column: column as u32,
        }
    }

    /// A span of this source.
    pub fn pos(self: &Arc<Self>, span: Range<usize>) -> Pos {
        Pos {
            src: Arc::clone(self),
            span,
        }
    }

    /// An error about the whole file (no position).
    pub fn file_error(&self, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            origin: OriginDisplay(self.name.clone()),
            message: message.into(),
        }
    }
}

/// A span of a [`Source`].
#[derive(Debug, Clone)]
pub(crate) struct Pos {
    pub src: Arc<Source>,
    pub span: Range<usize>,
}

impl Pos {
    pub fn origin(&self) -> Origin {
        self.src.origin(self.span.start)
    }

    /// `file:line:column: message`.
    pub fn error(&self, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            origin: OriginDisplay(self.origin().to_string()),
            message: message.into(),
        }
    }

    /// The position of byte `offset` of the string value written at this span, when the
    /// value is a TOML string whose text maps one to one onto its content (a literal string,
    /// or a basic string without escapes); otherwise the start of the value.
    pub fn inside(&self, offset: usize) -> Pos {
        let written = self.src.text.get(self.span.clone()).unwrap_or("");
        let exact = (written.starts_with('\'') && !written.starts_with("'''"))
            || (written.starts_with('"')
                && !written.starts_with("\"\"\"")
                && !written.contains('\\'));
        if exact && 1 + offset < written.len() {
            let start = self.span.start + 1 + offset;
            self.src.pos(start..start)
        } else {
            self.clone()
        }
    }
}

/// A string value of a policy and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Str {
    pub value: String,
    pub pos: Pos,
}

impl Str {
    pub fn new(src: &Arc<Source>, spanned: toml::Spanned<String>) -> Str {
        let span = spanned.span();
        Str {
            value: spanned.into_inner(),
            pos: src.pos(span),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_character_columns() {
        let src = Source::new("p.toml", "ab\nçd = 1\n\nx");
        assert_eq!(src.origin(0).to_string(), "p.toml:1:1");
        assert_eq!(src.origin(3).to_string(), "p.toml:2:1");
        // `ç` is two bytes but one column.
        assert_eq!(src.origin(5).to_string(), "p.toml:2:2");
        assert_eq!(src.origin(12).to_string(), "p.toml:4:1");
        assert_eq!(src.origin(99).to_string(), "p.toml:4:2");
    }

    #[test]
    fn inside_points_into_plain_strings_only() {
        let src = Source::new("p", "a = \"x{y}\"\nb = \"x\\t{y}\"\n");
        let plain = src.pos(4..10);
        assert_eq!(plain.inside(1).origin().column, 7);
        let escaped = src.pos(15..23);
        assert_eq!(escaped.inside(3).origin().column, 5);
    }
}
