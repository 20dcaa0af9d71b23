//! A YAML document as a tree whose every node and key knows its line, built from
//! saphyr-parser's events (a maintained YAML 1.2 parser; `serde_yaml` is archived), so
//! errors can name the line of the key they are about.
//!
//! The builder refuses, before any of it is used: more than one document, keys that are
//! not scalars, a key given twice in one mapping, tags outside YAML's core schema, nesting
//! deeper than [`MAX_DEPTH`], and a tree of more than [`MAX_NODES`] nodes once aliases are
//! expanded (an "alias bomb" — nine anchors of nine aliases each — would otherwise expand
//! a few hundred bytes into a billion nodes: each alias is counted at its full size
//! before it is copied). The merge key `<<` (compose files use it with `x-` anchors) is
//! applied: keys given in the mapping itself win.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::ComposeError;

/// The most nodes a document may have, aliases expanded. A compose file for the stacks
/// Skein runs has a few hundred.
pub(crate) const MAX_NODES: usize = 100_000;
/// The deepest nesting of sequences and mappings.
pub(crate) const MAX_DEPTH: usize = 64;

/// A node and the line (1-based) where it starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) line: usize,
    pub(crate) value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// Any other scalar, as written (numbers and booleans are read by whoever needs them).
    Scalar(String),
    Seq(Vec<Node>),
    /// In the file's order; keys are unique.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and its line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Key {
    pub(crate) name: String,
    pub(crate) line: usize,
}

impl Node {
    /// How many nodes this tree holds (itself included): what copying it for an alias
    /// costs.
    fn size(&self) -> usize {
        1 + match &self.value {
            Value::Null | Value::Scalar(_) => 0,
            Value::Seq(items) => items.iter().map(Node::size).sum(),
            Value::Map(entries) => entries.iter().map(|(_, v)| 1 + v.size()).sum(),
        }
    }
}

/// A collection being built.
enum Frame {
    Seq {
        line: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        key: Option<Key>,
        /// Values of `<<` keys, applied when the mapping ends.
        merges: Vec<Node>,
    },
}

/// Parses one YAML document into a [`Node`] tree (an empty document is `Null`).
pub(crate) fn parse(text: &str) -> Result<Node, ComposeError> {
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        root: None,
        documents: 0,
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| ComposeError::syntax(e.to_string()))?;
        builder.event(event, span)?;
    }
    Ok(builder.root.unwrap_or(Node {
        line: 1,
        value: Value::Null,
    }))
}

struct Builder {
    stack: Vec<Frame>,
    /// Anchored nodes by the parser's anchor ID, with their sizes.
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), ComposeError> {
        let line = span.start.line();
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(ComposeError::at(
                        line,
                        "a second YAML document (`---`); a compose file is one document",
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                if let Some(tag) = tag.filter(|t| !t.is_yaml_core_schema()) {
                    return Err(ComposeError::at(
                        line,
                        format!("the tag {}{} is not supported", tag.handle, tag.suffix),
                    ));
                }
                let null = style == ScalarStyle::Plain
                    && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL");
                let value = if null {
                    Value::Null
                } else {
                    Value::Scalar(text.into_owned())
                };
                self.count(1, line)?;
                self.finish(Node { line, value }, anchor, 1)?;
            }
            Event::Alias(id) => {
                let (node, size) = self.anchors.get(&id).cloned().ok_or_else(|| {
                    ComposeError::at(line, "an alias to an anchor not defined before it")
                })?;
                self.count(size, line)?;
                self.finish(Node { line, ..node }, 0, size)?;
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                let is_seq = matches!(event, Event::SequenceStart(..));
                if let Some(tag) = tag.as_ref().filter(|t| !t.is_yaml_core_schema()) {
                    return Err(ComposeError::at(
                        line,
                        format!("the tag {}{} is not supported", tag.handle, tag.suffix),
                    ));
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err(ComposeError::at(
                        line,
                        format!("nesting deeper than {MAX_DEPTH} levels"),
                    ));
                }
                self.count(1, line)?;
                self.stack.push(if is_seq {
                    Frame::Seq {
                        line,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        line,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                        merges: Vec::new(),
                    }
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        line,
                        anchor,
                        items,
                    }) => (
                        Node {
                            line,
                            value: Value::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        line,
                        anchor,
                        mut entries,
                        merges,
                        ..
                    }) => {
                        merge(&mut entries, merges)?;
                        (
                            Node {
                                line,
                                value: Value::Map(entries),
                            },
                            anchor,
                        )
                    }
                    None => return Err(ComposeError::syntax("unbalanced collection".into())),
                };
                let size = node.size();
                self.finish(node, anchor, size)?;
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(())
    }

    fn count(&mut self, nodes: usize, line: usize) -> Result<(), ComposeError> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > MAX_NODES {
            return Err(ComposeError::at(
                line,
                format!(
                    "the document grows past {MAX_NODES} nodes with its aliases expanded \
                     (an alias bomb?)"
                ),
            ));
        }
        Ok(())
    }

    /// Places a finished node: as the pending key or value of the enclosing mapping, an
    /// item of the enclosing sequence, or the root.
    fn finish(&mut self, node: Node, anchor: usize, size: usize) -> Result<(), ComposeError> {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                key,
                merges,
                ..
            }) => match key.take() {
                None => {
                    let name = match node.value {
                        Value::Scalar(name) => name,
                        _ => {
                            return Err(ComposeError::at(
                                node.line,
                                "a mapping key that is not a plain string",
                            ))
                        }
                    };
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == name) {
                        return Err(ComposeError::at(
                            node.line,
                            format!("key {name:?} given twice (first on line {})", first.line),
                        ));
                    }
                    *key = Some(Key {
                        name,
                        line: node.line,
                    });
                }
                Some(key) if key.name == "<<" => merges.push(node),
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }
}

/// Applies `<<: *anchor` (or a list of them): their keys, unless the mapping has them.
fn merge(entries: &mut Vec<(Key, Node)>, merges: Vec<Node>) -> Result<(), ComposeError> {
    for source in merges {
        let maps = match source.value {
            Value::Map(_) => vec![source],
            Value::Seq(items) => items,
            _ => {
                return Err(ComposeError::at(
                    source.line,
                    "`<<` merges a mapping or a list of mappings",
                ))
            }
        };
        for map in maps {
            let Value::Map(merged) = map.value else {
                return Err(ComposeError::at(
                    map.line,
                    "`<<` merges a mapping or a list of mappings",
                ));
            };
            for (key, value) in merged {
                if !entries.iter().any(|(k, _)| k.name == key.name) {
                    entries.push((key, value));
                }
            }
        }
    }
    Ok(())
}
