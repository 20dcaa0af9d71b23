//! Reading the tree: mappings, scalars of each kind, and the one "not supported" error.

use std::time::Duration;

use super::{
    yaml::{Key, Node, Value},
    ComposeError,
};

/// What to write instead of a key Skein does not support, where there is something.
fn hint(key: &str) -> &'static str {
    match key {
        "image" | "build" => {
            ": Skein runs a command on the host, not an image; give it with `command:`"
        }
        "entrypoint" => ": give the whole command with `command:`",
        "volumes" | "secrets" | "configs" => ": Skein's tasks run in the host's file system",
        "restart_policy" => ": Skein restarts exited tasks after a fixed delay",
        _ => "",
    }
}

/// The error for a key Skein does not support: its path and line.
pub(super) fn unsupported(key: &Key, path: &str) -> ComposeError {
    ComposeError::at(
        key.line,
        format!(
            "key `{path}` is not supported by Skein{}; nothing was deployed",
            hint(&key.name)
        ),
    )
}

/// The entries of a mapping (`what` names it in the error).
pub(super) fn entries<'a>(node: &'a Node, what: &str) -> Result<&'a [(Key, Node)], ComposeError> {
    match &node.value {
        Value::Map(entries) => Ok(entries),
        _ => Err(ComposeError::at(
            node.line,
            format!("{what} must be a mapping (`key: value` lines)"),
        )),
    }
}

/// A scalar as text (numbers and booleans as written).
pub(super) fn scalar<'a>(node: &'a Node, what: &str) -> Result<&'a str, ComposeError> {
    match &node.value {
        Value::Scalar(text) => Ok(text),
        _ => Err(ComposeError::at(
            node.line,
            format!("`{what}` must be a single value"),
        )),
    }
}

/// A list of scalars, or one scalar standing for a list of one.
pub(super) fn strings<'a>(node: &'a Node, what: &str) -> Result<Vec<&'a str>, ComposeError> {
    match &node.value {
        Value::Seq(items) => items.iter().map(|item| scalar(item, what)).collect(),
        _ => Ok(vec![scalar(node, what)?]),
    }
}

pub(super) fn boolean(node: &Node, what: &str) -> Result<bool, ComposeError> {
    match scalar(node, what)? {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        other => Err(ComposeError::at(
            node.line,
            format!("`{what}: {other}` must be true or false"),
        )),
    }
}

pub(super) fn number(node: &Node, what: &str) -> Result<u32, ComposeError> {
    let text = scalar(node, what)?;
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse() {
            return Ok(n);
        }
    }
    Err(ComposeError::at(
        node.line,
        format!("`{what}: {text}` must be a whole number"),
    ))
}

/// A duration as compose writes them (`10s`, `1m30s`, `500ms`).
pub(super) fn duration(node: &Node, what: &str) -> Result<Duration, ComposeError> {
    let text = scalar(node, what)?;
    crate::config::parse_duration(text)
        .map_err(|e| ComposeError::at(node.line, format!("`{what}: {text}`: {e}")))
}

/// Refuses `${VAR}` and `$VAR`: `docker stack deploy` substitutes the deploying shell's
/// variables, Skein does not — better an error than a literal `$` in a task's setting.
pub(super) fn no_substitution(node: &Node, text: &str, what: &str) -> Result<(), ComposeError> {
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        let next = rest[at + 1..].chars().next();
        match next {
            // `$$` is compose's escaped dollar.
            Some('$') => rest = &rest[at + 2..],
            Some(c) if c == '{' || c == '_' || c.is_ascii_alphabetic() => {
                return Err(ComposeError::at(
                    node.line,
                    format!(
                        "`{what}` uses variable substitution ({:?}), which Skein does not do; \
                         write the value",
                        &rest[at..]
                    ),
                ))
            }
            _ => rest = &rest[at + 1..],
        }
    }
    Ok(())
}

/// Compose's `$$` (a literal `$`).
pub(super) fn unescape(text: &str) -> String {
    text.replace("$$", "$")
}

/// Splits a command string as a POSIX shell would split words (quotes and backslashes;
/// no expansion), as compose does for `command: "a b 'c d'"`.
pub(super) fn shell_words(node: &Node, text: &str) -> Result<Vec<String>, ComposeError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(unclosed(node)),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(unclosed(node)),
                        },
                        Some(c) => word.push(c),
                        None => return Err(unclosed(node)),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn unclosed(node: &Node) -> ComposeError {
    ComposeError::at(node.line, "`command` has an unclosed quote")
}
