//! `${field}` templates over a JSON object: a rule's output (sink topics, keys, headers,
//! bodies), a client and its operation (HTTP authentication). Parsed once; rendering only
//! walks the parts.

use serde_json::Value;

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    /// A dotted path into the output object: `${device}`, `${meta.site}`.
    Field(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Template(Vec<Part>);

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in template {text:?}"))?;
            let path = after[..end].trim();
            if path.is_empty() {
                return Err(format!("empty `${{}}` in template {text:?}"));
            }
            parts.push(Part::Field(path.split('.').map(str::to_string).collect()));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self(parts))
    }

    /// Missing fields render as nothing; strings as themselves; anything else as JSON.
    pub fn render(&self, value: &Value) -> String {
        self.render_escaped(value, |s, out| out.push_str(s))
    }

    /// Like [`Template::render`], with each field's text passed through `escape` (a URL's
    /// percent-encoding, say); the template's own text is kept as written.
    pub fn render_escaped(&self, value: &Value, escape: impl Fn(&str, &mut String)) -> String {
        let mut out = String::new();
        let mut field = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(path) => {
                    if let Some(v) = lookup(value, path) {
                        field.clear();
                        push_value(&mut field, v);
                        escape(&field, &mut out);
                    }
                }
            }
        }
        out
    }

    /// Whether the text has no `${…}` field at all.
    pub fn is_constant(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Part::Text(_)))
    }
}

fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Null => {}
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields_paths_and_text() {
        let t = Template::parse("site/${meta.site}/${device}/t=${temp}${missing}").unwrap();
        let v = json!({"device": "d1", "temp": 21.5, "meta": {"site": "north"}});
        assert_eq!(t.render(&v), "site/north/d1/t=21.5");
        assert!(Template::parse("a/${b").is_err());
        let escaped = Template::parse("/u?n=${name}")
            .unwrap()
            .render_escaped(&json!({"name": "a b"}), |s, out| {
                out.push_str(&s.replace(' ', "%20"))
            });
        assert_eq!(escaped, "/u?n=a%20b");
        assert!(Template::parse("a/${}").is_err());
    }
}
