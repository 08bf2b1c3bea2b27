//! Handlebars rendering in strict mode: an undefined variable is an error, never
//! an empty string. Output is not HTML-escaped: templates render config files.

use handlebars::{Handlebars, RenderErrorReason};
use serde::Serialize;

/// A template problem, located inside the template file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

pub struct Templates {
    hb: Handlebars<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        Templates { hb }
    }

    /// Parses and registers a template under `name`.
    pub fn add(&mut self, name: &str, source: &str) -> Result<(), TemplateError> {
        self.hb.register_template_string(name, source).map_err(|e| {
            let (line, column) = e.pos().unwrap_or((1, 1));
            TemplateError {
                line,
                column,
                message: e.reason().to_string(),
            }
        })
    }

    pub fn render(&self, name: &str, data: &impl Serialize) -> Result<String, TemplateError> {
        self.hb.render(name, data).map_err(|e| TemplateError {
            line: e.line_no.unwrap_or(1),
            column: e.column_no.unwrap_or(1),
            message: match e.reason() {
                RenderErrorReason::MissingVariable(Some(path)) => {
                    format!("undefined variable `{path}`")
                }
                RenderErrorReason::MissingVariable(None) => "undefined variable".to_string(),
                other => other.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_and_unescaped() {
        let mut t = Templates::new();
        t.add("a", "listen {{vars.port}}; # <&>\n").unwrap();
        let out = t.render("a", &json!({"vars": {"port": 80}})).unwrap();
        assert_eq!(out, "listen 80; # <&>\n");
        t.add("b", "x\n{{vars.prot}}").unwrap();
        let err = t.render("b", &json!({"vars": {"port": 80}})).unwrap_err();
        assert_eq!(err.line, 2, "{err:?}");
        assert!(err.message.contains("vars.prot"), "{err:?}");
        assert!(t.render("c", &json!({})).is_err());
        let err = t.add("d", "a\n{{#if x}}").unwrap_err();
        assert_eq!(err.line, 2, "{err:?}");
    }
}
