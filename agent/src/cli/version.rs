//! `skein version`: which build this binary is (crate version, git commit, SHA-256 of
//! the embedded eBPF object). Needs no agent: it describes the binary on disk, which
//! after an upgrade may differ from the running agent's (that one is in its
//! `/metrics`, `skein_build_info`).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::output::Format;
use crate::build_info::BuildInfo;

#[derive(Args, Debug)]
pub(crate) struct VersionArgs {
    /// How to print it: lines for reading, or a JSON object for scripts.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}

impl VersionArgs {
    pub(super) fn run(self) -> Result<ExitCode> {
        print!("{}", render(BuildInfo::current(), self.format)?);
        Ok(ExitCode::SUCCESS)
    }
}

/// The text `skein version` prints.
fn render(info: &BuildInfo, format: Format) -> Result<String> {
    Ok(match format {
        Format::Table => format!(
            "Version:       {}\nGit commit:    {}\neBPF SHA-256:  {}\n",
            info.version, info.commit, info.ebpf_sha256
        ),
        Format::Json => {
            serde_json::to_string_pretty(info).context("encoding the version as JSON")? + "\n"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BuildInfo {
        BuildInfo {
            version: "0.1.0".into(),
            commit: "0123456789ab-dirty".into(),
            ebpf_sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn prints_one_line_per_value() {
        assert_eq!(
            render(&info(), Format::Table).unwrap(),
            format!(
                "Version:       0.1.0\nGit commit:    0123456789ab-dirty\neBPF SHA-256:  {}\n",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn json_has_the_three_values_by_name() {
        let json: serde_json::Value =
            serde_json::from_str(&render(&info(), Format::Json).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "version": "0.1.0",
                "commit": "0123456789ab-dirty",
                "ebpf_sha256": "ab".repeat(32),
            })
        );
    }
}
