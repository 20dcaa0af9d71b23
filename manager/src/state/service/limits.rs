//! A service's resource limits (`--limit-memory`, `--limit-cpu`, `--limit-pids`), in
//! Swarm's units: memory as `64M` (binary multiples), CPUs as a decimal (`1.5`). The agent
//! applies them to each task's cgroup; the manager only stores and checks them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The least memory limit accepted: below it a task cannot even exec (Docker's floor is
/// 6 MiB for the same reason).
pub(super) const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// The most CPUs a limit may name (`--limit-cpu`), in thousandths.
pub(super) const MAX_CPU_MILLIS: u32 = 1024 * 1000;
/// The most processes a limit may name (`--limit-pids`): the kernel's own maximum PID.
pub(super) const MAX_PIDS: u32 = 1 << 22;

/// Limits of each task of a service; `None`: unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes of memory (cgroup `memory.max`, no swap beyond it).
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU (cgroup `cpu.max` quota per 100 ms period).
    pub cpu_millis: Option<u32>,
    /// Processes and threads (cgroup `pids.max`).
    pub pids: Option<u32>,
}

/// Why a limit is not acceptable: one sentence naming the bad value and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error(
        "--limit-memory {text:?} is invalid: use a size such as 64M, 512k or 1.5G \
         (binary units b, k, m, g, t)"
    )]
    BadMemory { text: String },
    #[error("--limit-memory {bytes} bytes is too small: give at least 4M")]
    MemoryTooSmall { bytes: u64 },
    #[error("--limit-cpu {text:?} is invalid: use a number of CPUs such as 0.5 or 1.5")]
    BadCpu { text: String },
    #[error("--limit-cpu must be between 0.001 and 1024 CPUs")]
    CpuOutOfRange,
    #[error("--limit-pids {text:?} is invalid: use a whole number of processes, at least 1")]
    BadPids { text: String },
    #[error("--limit-pids must be between 1 and {MAX_PIDS}")]
    PidsOutOfRange,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory_bytes.is_some() || self.cpu_millis.is_some() || self.pids.is_some()
    }

    /// Checks the values (a record from a peer is checked like user input).
    pub fn validate(&self) -> Result<(), LimitsError> {
        if let Some(bytes) = self.memory_bytes {
            if bytes < MIN_MEMORY_BYTES {
                return Err(LimitsError::MemoryTooSmall { bytes });
            }
        }
        if let Some(millis) = self.cpu_millis {
            if millis == 0 || millis > MAX_CPU_MILLIS {
                return Err(LimitsError::CpuOutOfRange);
            }
        }
        if let Some(pids) = self.pids {
            if pids == 0 || pids > MAX_PIDS {
                return Err(LimitsError::PidsOutOfRange);
            }
        }
        Ok(())
    }
}

/// `--limit-memory`: a decimal number and an optional binary unit (`b`, `k`, `m`, `g`,
/// `t`, optionally followed by `i` and/or `b`, any case), as Docker's `RAMInBytes` reads
/// it: `64M`, `64m`, `64MiB`, `1.5g`, `65536`.
pub fn parse_memory(text: &str) -> Result<u64, LimitsError> {
    let bad = || LimitsError::BadMemory {
        text: text.to_owned(),
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    let value = parse_decimal(number, shift).ok_or_else(bad)?;
    // `64ib`, `i` alone and the like.
    if text.trim().to_ascii_lowercase().ends_with("ib") && shift == 0 {
        return Err(bad());
    }
    Ok(value)
}

/// `DIGITS[.DIGITS]` × 2^shift, rounded down to whole bytes; `None` if malformed or
/// overflowing.
fn parse_decimal(number: &str, shift: u32) -> Option<u64> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || fraction.len() > 9 {
        return None;
    }
    if number.ends_with('.') {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let mut value = whole.checked_mul(1u64.checked_shl(shift)?)?;
    if !fraction.is_empty() {
        let digits: u64 = fraction.parse().ok()?;
        let scale = 10u64.pow(fraction.len() as u32);
        let part = (u128::from(digits) << shift) / u128::from(scale);
        value = value.checked_add(u64::try_from(part).ok()?)?;
    }
    Some(value)
}

/// `--limit-cpu`: a number of CPUs with at most three decimals (`0.5`, `1.5`, `2`), in
/// thousandths.
pub fn parse_cpus(text: &str) -> Result<u32, LimitsError> {
    let bad = || LimitsError::BadCpu {
        text: text.to_owned(),
    };
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 3
        || text.trim().ends_with('.')
    {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| LimitsError::CpuOutOfRange)?
    };
    let fraction: u64 = format!("{fraction:0<3}").parse().map_err(|_| bad())?;
    let millis = whole
        .checked_mul(1000)
        .and_then(|w| w.checked_add(fraction))
        .ok_or(LimitsError::CpuOutOfRange)?;
    match u32::try_from(millis) {
        Ok(millis) if (1..=MAX_CPU_MILLIS).contains(&millis) => Ok(millis),
        _ => Err(LimitsError::CpuOutOfRange),
    }
}

/// `--limit-pids`: a whole number of processes, at least 1.
pub fn parse_pids(text: &str) -> Result<u32, LimitsError> {
    let trimmed = text.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LimitsError::BadPids {
            text: text.to_owned(),
        });
    }
    match trimmed.parse::<u32>() {
        Ok(pids) if (1..=MAX_PIDS).contains(&pids) => Ok(pids),
        _ => Err(LimitsError::PidsOutOfRange),
    }
}

/// A byte count as `service ps` and messages show it: `64MiB`, `1.5GiB`, `4097B`.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
        for (unit, shift) in UNITS {
            let size = 1u64 << shift;
            if self.0 >= size {
                if self.0.is_multiple_of(size) {
                    return write!(f, "{}{unit}", self.0 >> shift);
                }
                if self
                    .0
                    .checked_mul(10)
                    .is_some_and(|v| v.is_multiple_of(size))
                {
                    return write!(f, "{:.1}{unit}", self.0 as f64 / size as f64);
                }
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_read_like_swarms() {
        for (text, bytes) in [
            ("64M", 64 << 20),
            ("64m", 64 << 20),
            ("64MiB", 64 << 20),
            ("64mb", 64 << 20),
            ("64 M", 64 << 20),
            ("1.5g", 3 << 29),
            ("512k", 512 << 10),
            ("65536", 65536),
            ("65536b", 65536),
            ("1t", 1 << 40),
        ] {
            assert_eq!(parse_memory(text), Ok(bytes), "{text}");
        }
        for bad in [
            "", "M", "-1M", "64X", "64MM", "1..5G", "1.", ".5G", "64ib", "1e3",
        ] {
            assert!(
                matches!(parse_memory(bad), Err(LimitsError::BadMemory { .. })),
                "{bad:?}: {:?}",
                parse_memory(bad)
            );
        }
        assert!(parse_memory("99999999999999999999t").is_err());
        let e = parse_memory("64X").unwrap_err().to_string();
        assert!(e.starts_with("--limit-memory \"64X\" is invalid"), "{e}");
    }

    #[test]
    fn cpus_read_as_thousandths() {
        for (text, millis) in [("1.5", 1500), ("0.5", 500), ("2", 2000), (".25", 250)] {
            assert_eq!(parse_cpus(text), Ok(millis), "{text}");
        }
        for bad in ["", "x", "1.2345", "-1", "1.", "1,5"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_cpus("0"), Err(LimitsError::CpuOutOfRange));
        assert_eq!(parse_cpus("2000"), Err(LimitsError::CpuOutOfRange));
    }

    #[test]
    fn pids_are_whole_and_positive() {
        assert_eq!(parse_pids("20"), Ok(20));
        assert_eq!(parse_pids("0"), Err(LimitsError::PidsOutOfRange));
        assert!(matches!(parse_pids("-3"), Err(LimitsError::BadPids { .. })));
        assert!(parse_pids("99999999999").is_err());
    }

    #[test]
    fn records_are_checked_like_input() {
        assert!(Limits::default().validate().is_ok());
        let small = Limits {
            memory_bytes: Some(1 << 20),
            ..Limits::default()
        };
        assert_eq!(
            small.validate(),
            Err(LimitsError::MemoryTooSmall { bytes: 1 << 20 })
        );
        let zero = Limits {
            pids: Some(0),
            ..Limits::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(Bytes(64 << 20).to_string(), "64MiB");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5GiB");
        assert_eq!(Bytes(4097).to_string(), "4097B");
        assert_eq!(Bytes(512).to_string(), "512B");
    }
}
