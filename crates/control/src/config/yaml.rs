//! A small span-aware reader over saphyr's marked YAML tree.
//!
//! serde would give us types for free, but not the line and the dotted path of every field in every
//! error (`spec.ports[1].port`), nor the line of a field that is valid on its own and only wrong in
//! relation to others (a duplicate port, a policy naming an unknown workload). So mesh.yaml is read
//! by hand through [`Node`] and [`Map`]: each accessor checks the type, records a [`FieldError`] in
//! the [`Errors`] collector when it is wrong and returns `None`, so one pass reports every problem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use saphyr::{MarkedYamlOwned, ScalarOwned, YamlDataOwned};

use super::{FieldError, Problem};

/// Collects every error of one file, each with its line and field path.
pub(crate) struct Errors {
    file: PathBuf,
    list: Vec<FieldError>,
}

impl Errors {
    pub(crate) fn new(file: &Path) -> Self {
        Errors {
            file: file.to_path_buf(),
            list: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, line: usize, field: &str, problem: Problem) {
        self.list.push(FieldError {
            file: self.file.clone(),
            line,
            field: field.to_string(),
            problem,
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// The errors sorted by line (stable, so errors on one line keep their order).
    pub(crate) fn into_sorted(mut self) -> Vec<FieldError> {
        self.list.sort_by_key(|e| e.line);
        self.list
    }
}

/// One YAML node with the dotted path that led to it.
#[derive(Clone)]
pub(crate) struct Node<'y> {
    pub(crate) y: &'y MarkedYamlOwned,
    pub(crate) path: String,
}

/// The name of a node's type, for "expected X, found Y" messages.
fn type_name(y: &MarkedYamlOwned) -> &'static str {
    match &y.data {
        YamlDataOwned::Value(ScalarOwned::Null) => "null",
        YamlDataOwned::Value(ScalarOwned::Boolean(_)) => "a boolean",
        YamlDataOwned::Value(ScalarOwned::Integer(_)) => "an integer",
        YamlDataOwned::Value(ScalarOwned::FloatingPoint(_)) => "a number",
        YamlDataOwned::Value(ScalarOwned::String(_)) | YamlDataOwned::Representation(..) => {
            "a string"
        }
        YamlDataOwned::Sequence(_) => "a list",
        YamlDataOwned::Mapping(_) => "a mapping",
        YamlDataOwned::Tagged(..) => "a tagged value",
        YamlDataOwned::Alias(_) => "an alias",
        YamlDataOwned::BadValue => "an invalid value",
    }
}

impl<'y> Node<'y> {
    pub(crate) fn root(y: &'y MarkedYamlOwned) -> Self {
        Node {
            y,
            path: String::new(),
        }
    }

    /// 1-based line where the node starts.
    pub(crate) fn line(&self) -> usize {
        self.y.span.start.line()
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self.y.data, YamlDataOwned::Value(ScalarOwned::Null))
    }

    fn child(&self, y: &'y MarkedYamlOwned, segment: &str) -> Node<'y> {
        let path = if self.path.is_empty() {
            segment.to_string()
        } else {
            format!("{}.{segment}", self.path)
        };
        Node { y, path }
    }

    fn wrong_type(&self, errors: &mut Errors, expected: &'static str) {
        let problem = match &self.y.data {
            YamlDataOwned::Tagged(..) | YamlDataOwned::Alias(_) => Problem::Unsupported,
            _ => Problem::WrongType {
                expected,
                found: type_name(self.y),
            },
        };
        errors.push(self.line(), &self.path, problem);
    }

    /// A string (plain or quoted).
    pub(crate) fn str(&self, errors: &mut Errors) -> Option<&'y str> {
        match &self.y.data {
            YamlDataOwned::Value(ScalarOwned::String(s)) | YamlDataOwned::Representation(s, ..) => {
                Some(s.as_str())
            }
            _ => {
                self.wrong_type(errors, "a string");
                None
            }
        }
    }

    /// Any scalar written as text: strings as they are, numbers and booleans as written
    /// (`PORT: 8080` in an env map means the string "8080").
    pub(crate) fn scalar_text(&self, errors: &mut Errors) -> Option<String> {
        match &self.y.data {
            YamlDataOwned::Value(ScalarOwned::String(s)) | YamlDataOwned::Representation(s, ..) => {
                Some(s.clone())
            }
            YamlDataOwned::Value(ScalarOwned::Integer(i)) => Some(i.to_string()),
            YamlDataOwned::Value(ScalarOwned::Boolean(b)) => Some(b.to_string()),
            YamlDataOwned::Value(ScalarOwned::FloatingPoint(f)) => Some(f.to_string()),
            _ => {
                self.wrong_type(errors, "a string");
                None
            }
        }
    }

    pub(crate) fn bool(&self, errors: &mut Errors) -> Option<bool> {
        match &self.y.data {
            YamlDataOwned::Value(ScalarOwned::Boolean(b)) => Some(*b),
            _ => {
                self.wrong_type(errors, "a boolean (true or false)");
                None
            }
        }
    }

    pub(crate) fn int(&self, errors: &mut Errors) -> Option<i64> {
        match &self.y.data {
            YamlDataOwned::Value(ScalarOwned::Integer(i)) => Some(*i),
            _ => {
                self.wrong_type(errors, "an integer");
                None
            }
        }
    }

    /// A TCP port, 1-65535.
    pub(crate) fn port(&self, errors: &mut Errors) -> Option<u16> {
        let value = self.int(errors)?;
        match u16::try_from(value) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                errors.push(self.line(), &self.path, Problem::BadPort { value });
                None
            }
        }
    }

    /// A list; each item's path is `path[i]`.
    pub(crate) fn seq(&self, errors: &mut Errors) -> Option<Vec<Node<'y>>> {
        match &self.y.data {
            YamlDataOwned::Sequence(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, y)| Node {
                        y,
                        path: format!("{}[{i}]", self.path),
                    })
                    .collect(),
            ),
            _ => {
                self.wrong_type(errors, "a list");
                None
            }
        }
    }

    /// A list of strings.
    pub(crate) fn str_list(&self, errors: &mut Errors) -> Option<Vec<(String, Node<'y>)>> {
        let items = self.seq(errors)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match item.str(errors) {
                Some(s) => out.push((s.to_string(), item)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A mapping whose keys must all be in `allowed`; others are reported as unknown fields and
    /// left out (the known ones are still read, so one stray field does not hide other errors).
    pub(crate) fn map(
        &self,
        errors: &mut Errors,
        allowed: &'static [&'static str],
    ) -> Option<Map<'y>> {
        let YamlDataOwned::Mapping(entries) = &self.y.data else {
            self.wrong_type(errors, "a mapping");
            return None;
        };
        let mut fields = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let key_node = Node {
                y: key,
                path: self.path.clone(),
            };
            let Some(name) = key_node.str(errors) else {
                continue;
            };
            let child = self.child(value, name);
            if !allowed.contains(&name) {
                errors.push(
                    key.span.start.line(),
                    &child.path,
                    Problem::UnknownField {
                        expected: allowed.join(", "),
                    },
                );
                continue;
            }
            fields.push((name, child));
        }
        Some(Map {
            node: self.clone(),
            fields,
        })
    }

    /// A mapping of string keys to scalar values (labels, selectors, env).
    pub(crate) fn string_map(&self, errors: &mut Errors) -> Option<BTreeMap<String, String>> {
        let YamlDataOwned::Mapping(entries) = &self.y.data else {
            self.wrong_type(errors, "a mapping of names to values");
            return None;
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (key, value) in entries {
            let key_node = Node {
                y: key,
                path: self.path.clone(),
            };
            let Some(name) = key_node.scalar_text(errors) else {
                ok = false;
                continue;
            };
            let child = self.child(value, &name);
            match child.scalar_text(errors) {
                Some(v) => {
                    out.insert(name, v);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// A mapping whose keys were checked against the allowed field names.
pub(crate) struct Map<'y> {
    node: Node<'y>,
    fields: Vec<(&'y str, Node<'y>)>,
}

impl<'y> Map<'y> {
    pub(crate) fn line(&self) -> usize {
        self.node.line()
    }

    /// The field's value; `None` when absent or null (`key:` with nothing after it).
    pub(crate) fn optional(&self, key: &str) -> Option<Node<'y>> {
        self.fields
            .iter()
            .find(|(name, node)| *name == key && !node.is_null())
            .map(|(_, node)| node.clone())
    }

    /// The field's value; reports a missing field (at the mapping's line) when absent or null.
    pub(crate) fn required(&self, errors: &mut Errors, key: &str) -> Option<Node<'y>> {
        let found = self.optional(key);
        if found.is_none() {
            let path = if self.node.path.is_empty() {
                key.to_string()
            } else {
                format!("{}.{key}", self.node.path)
            };
            errors.push(self.line(), &path, Problem::MissingField);
        }
        found
    }
}
