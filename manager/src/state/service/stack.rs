//! Stacks (`skein stack deploy`): which stack a service belongs to, and the naming rules
//! that make `STACK_short` names unambiguous.
//!
//! Docker labels a stack's services with `com.docker.stack.namespace`; Skein records the
//! same fact in the service itself ([`StackMember`]), so `stack ls|services|ps|rm` never
//! guess membership from a name a user may have chosen by hand, and DNS can answer the
//! short name (`redis` for `shop_redis`) on the stack's own network.

use serde::{Deserialize, Serialize};

/// The longest stack name: leaves room for `_` and a short name in a 63-byte service name.
pub const MAX_STACK_NAME: usize = 30;

/// The stack a service was deployed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackMember {
    /// The stack's name (no `_`, so `STACK_short` splits one way only).
    pub stack: String,
    /// The service's name in the compose file; the service is named `STACK_short`.
    pub short_name: String,
}

/// Why a stack name or a stack service's short name is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StackNameError {
    #[error(
        "stack name {name:?} is invalid: use 1 to {MAX_STACK_NAME} lowercase letters, digits \
         or '-', starting with a letter or digit"
    )]
    BadStack { name: String },
    #[error(
        "service name {name:?} is invalid in a stack: use lowercase letters, digits, '-' or \
         '_', starting with a letter or digit"
    )]
    BadShort { name: String },
    #[error("service {name:?} does not match its stack {stack:?} and short name {short:?}")]
    Mismatch {
        name: String,
        stack: String,
        short: String,
    },
}

/// Checks a stack name: a DNS label without `_`, at most [`MAX_STACK_NAME`] bytes.
pub fn validate_stack_name(name: &str) -> Result<(), StackNameError> {
    let bytes = name.as_bytes();
    let ok = (1..=MAX_STACK_NAME).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(StackNameError::BadStack {
            name: name.to_owned(),
        })
    }
}

impl StackMember {
    /// The service's cluster-wide name, as Docker names it: `STACK_short`.
    pub fn service_name(&self) -> String {
        format!("{}_{}", self.stack, self.short_name)
    }

    /// Checks both names, and that `service` is `STACK_short`.
    pub fn validate(&self, service: &str) -> Result<(), StackNameError> {
        validate_stack_name(&self.stack)?;
        let short = self.short_name.as_bytes();
        let ok = !short.is_empty()
            && short[0].is_ascii_alphanumeric()
            && short
                .iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
        if !ok {
            return Err(StackNameError::BadShort {
                name: self.short_name.clone(),
            });
        }
        if service != self.service_name() {
            return Err(StackNameError::Mismatch {
                name: service.to_owned(),
                stack: self.stack.clone(),
                short: self.short_name.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_names_cannot_hide_an_underscore() {
        for good in ["shop", "redis-counter", "a", "x1"] {
            assert_eq!(validate_stack_name(good), Ok(()), "{good}");
        }
        for bad in ["", "a_b", "Shop", "-a", "a.b", &"a".repeat(31)] {
            assert!(validate_stack_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_member_is_named_stack_underscore_short() {
        let member = StackMember {
            stack: "shop".into(),
            short_name: "redis_cache".into(),
        };
        assert_eq!(member.service_name(), "shop_redis_cache");
        assert_eq!(member.validate("shop_redis_cache"), Ok(()));
        assert!(matches!(
            member.validate("shop_redis"),
            Err(StackNameError::Mismatch { .. })
        ));
        let bad = StackMember {
            short_name: "Redis".into(),
            ..member
        };
        assert!(matches!(
            bad.validate("shop_Redis"),
            Err(StackNameError::BadShort { .. })
        ));
    }
}
