//! `${field}` templates over a rule's output (topics, keys, headers, bodies). Parsed once when
//! the sink starts; rendering only walks the parts.

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
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(path) => {
                    if let Some(v) = lookup(value, path) {
                        push_value(&mut out, v);
                    }
                }
            }
        }
        out
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

/// The bytes a sink sends for an output: a string as is, anything else as JSON.
pub fn payload_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.as_bytes().to_vec(),
        other => serde_json::to_vec(other).unwrap_or_default(),
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
        assert!(Template::parse("a/${}").is_err());
    }
}
