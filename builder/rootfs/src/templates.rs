//! Renders minijinja templates (overlay `*.j2` files, service commands,
//! health checks) with the profile as context. Undefined values are errors,
//! so a typo in a template fails the build instead of rendering empty text.
//! The filter `sh` quotes a value for a POSIX shell: every value that
//! reaches a shell goes through it.

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

/// A template that did not render, with where it came from.
#[derive(Debug, thiserror::Error)]
#[error("template {name}{line}: {message}")]
pub struct TemplateError {
    /// Template name: a file path or a dotted profile key.
    pub name: String,
    /// `:LINE` when minijinja knows the line, else empty.
    pub line: String,
    /// What went wrong.
    pub message: String,
}

/// A renderer bound to one context value.
pub struct Renderer {
    context: minijinja::Value,
}

impl Renderer {
    /// Builds a renderer; `context` is usually the merged profile plus a `build` table.
    pub fn new(context: &impl Serialize) -> Self {
        Self {
            context: minijinja::Value::from_serialize(context),
        }
    }

    /// Renders `source`; `name` says where it came from in errors.
    pub fn render(&self, name: &str, source: &str) -> Result<String, TemplateError> {
        let mut environment = Environment::new();
        environment.set_undefined_behavior(UndefinedBehavior::Strict);
        environment.set_keep_trailing_newline(true);
        environment.add_filter("sh", shell_quote);
        environment
            .add_template(name, source)
            .and_then(|()| environment.get_template(name)?.render(&self.context))
            .map_err(|error| TemplateError {
                name: name.to_string(),
                line: error
                    .line()
                    .map(|line| format!(":{line}"))
                    .unwrap_or_default(),
                message: describe(&error, source),
            })
    }
}

/// `value` as one word of a POSIX shell: unchanged when it has only
/// characters no shell treats specially, else in single quotes (a single
/// quote inside written `'\''`).
pub fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,=+@%".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

/// minijinja's complaint, followed by the template line it is about (a
/// strict "undefined value" does not say which of the line's values it is).
fn describe(error: &minijinja::Error, source: &str) -> String {
    let mut message = error
        .detail()
        .map_or_else(|| error.kind().to_string(), String::from);
    if error.detail().is_some() {
        message = format!("{}: {message}", error.kind());
    }
    let line = error
        .line()
        .and_then(|line| source.lines().nth(line.checked_sub(1)?))
        .map(str::trim)
        .filter(|line| !line.is_empty());
    if let Some(line) = line {
        message.push_str(&format!(" in `{line}`"));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_profile_values() {
        let renderer = Renderer::new(&json!({"target": {"iqn": "iqn.x:y", "portals": ["a", "b"]}}));
        let text = renderer
            .render(
                "t",
                "<target {{ target.iqn }}> {{ target.portals | join(',') }}\n",
            )
            .unwrap();
        assert_eq!(text, "<target iqn.x:y> a,b\n");
    }

    #[test]
    fn undefined_value_names_template_and_line() {
        let renderer = Renderer::new(&json!({"target": {}}));
        let error = renderer
            .render("etc/tgt/targets.conf.j2", "line one\n{{ target.iqn }}\n")
            .unwrap_err();
        assert_eq!(error.name, "etc/tgt/targets.conf.j2");
        assert_eq!(error.line, ":2");
        assert!(error.to_string().contains("undefined"), "{error}");
        assert!(error.message.ends_with(" in `{{ target.iqn }}`"), "{error}");
    }

    #[test]
    fn sh_filter_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(
            shell_quote("iqn.2024-01.example:lun-1"),
            "iqn.2024-01.example:lun-1"
        );
        assert_eq!(shell_quote("192.0.2.1:3260"), "192.0.2.1:3260");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("x; reboot"), "'x; reboot'");
        assert_eq!(shell_quote("$(id)"), "'$(id)'");
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn sh_filter_output_is_one_word_to_a_real_shell() {
        let nasty = "a b;$(touch x)`id`'\"\n*";
        let renderer = Renderer::new(&json!({"value": nasty}));
        let script = renderer.render("t", "printf %s {{ value | sh }}").unwrap();
        let output = std::process::Command::new("sh")
            .args(["-c", &script])
            .current_dir(tempfile::tempdir().unwrap().path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(String::from_utf8(output.stdout).unwrap(), nasty);
    }

    #[test]
    fn syntax_error_is_reported() {
        let renderer = Renderer::new(&json!({}));
        let error = renderer.render("x.j2", "{% for %}").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("template x.j2:1: syntax error"),
            "{error}"
        );
    }
}
